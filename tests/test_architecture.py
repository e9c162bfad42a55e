"""The layout's rules, checked on the source: no import cycles, one home per concept."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import neuroflow

PACKAGE = Path(neuroflow.__file__).parent
# Old import paths kept for one release; they only re-export (with a DeprecationWarning).
SHIMS = {"neuroflow.cli", "neuroflow.trainer", "neuroflow.evaluation.search", "neuroflow.evaluation.basis_merge",
         "neuroflow.evaluation.expert_set", "neuroflow.evaluation.manifest_experts",
         "neuroflow.evaluation.merge_command", "neuroflow.pipeline.command", "neuroflow.pipeline.test_report"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every neuroflow module `name` imports, at top level or inside functions (type-only imports
    under `if TYPE_CHECKING:` excluded: they never run)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    # Tarjan's strongly connected components: any component of size > 1 is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles inside neuroflow: {cycles}"


def test_no_concrete_merge_method_named_outside_merging():
    """Behaviour that depends on a method lives in the method (`linear_hparams`, `basis`, ...)."""
    import neuroflow.merging as merging
    from neuroflow.merging import MergeMethod

    concrete = [n for n in merging.__all__ if isinstance(getattr(merging, n), type)
                and issubclass(getattr(merging, n), MergeMethod) and getattr(merging, n) is not MergeMethod]
    pattern = re.compile(r"isinstance\([^)]*\b(" + "|".join(concrete) + r")\b")
    offenders = []
    for name, path in _modules().items():
        if name.startswith("neuroflow.merging") or name in SHIMS:
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) or re.search(r"\b(" + "|".join(concrete) + r")\s*:", line):
                offenders.append(f"{path}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_expert_format_parsed_in_one_module():
    """Only neuroflow/experts/expert.py reads the raw keys of an expert entry."""
    raw_key = re.compile(r"""\[["'](backbone|task_spec|task_specs|heads|head|base_fingerprint)["']\]""")
    offenders = []
    for name, path in _modules().items():
        if name in ("neuroflow.experts.expert",) or name in SHIMS:
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if raw_key.search(line) and "entry" in line:
                offenders.append(f"{path}:{lineno}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_module_sizes():
    sizes = sorted(len(p.read_text().splitlines()) for p in _modules().values())
    too_big = {str(p): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > 400}
    assert not too_big, f"modules over 400 lines: {too_big}"
    assert sizes[len(sizes) // 2] <= 200, f"median module size {sizes[len(sizes) // 2]} lines"


def test_old_import_paths_warn_and_work():
    import importlib
    import sys
    import warnings

    for name in sorted(SHIMS):
        sys.modules.pop(name, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importlib.import_module(name)
        assert any(issubclass(w.category, DeprecationWarning) for w in caught), name
    from neuroflow.evaluation.search import grid_search
    from neuroflow.merging.search import grid_search as new

    assert grid_search is new
