"""Task specs and data for the causal-LM tests (real shared data, plus generated arithmetic)."""

from __future__ import annotations

import json
from pathlib import Path

CAUSAL_ARCHS = ("llama", "mistral", "qwen2", "gpt2")
SST2_FILES = {"train": "sst2/stsa.binary.train", "validation": "sst2/stsa.binary.dev", "test": "sst2/stsa.binary.test"}


def sst2_choice(name: str = "sst2_choice", **changes) -> dict:
    """SST-2 as multiple choice over the label names."""
    spec = {"name": name, "kind": "multiple_choice",
            "source": {"path": "label_text_lines", "pattern": r"^(?P<label>[01]) (?P<text>.*)$", "data_files": SST2_FILES},
            "label_names": ["negative", "positive"], "label_format": "index",
            "splits": {"train": "train", "validation": "validation", "test": "test"},
            "prompt_template": "Review: {text}\nSentiment:"}
    return {**spec, **changes}


def trec_instruction(name: str = "trec_instr", **changes) -> dict:
    """TREC question types as instruction with verbalized labels."""
    spec = {"name": name, "kind": "instruction",
            "source": {"path": "label_text_lines", "encoding": "latin-1",
                       "data_files": {"train": "trec/TREC.train.all", "test": "trec/TREC.test.all"}},
            "label_names": ["DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"], "label_format": "index",
            "verbalizer": ["description", "entity", "abbreviation", "human", "location", "number"],
            "splits": {"train": "train", "test": "test"}, "split_fractions": {"validation": 0.1},
            "prompt_template": "Question: {text}\nType:", "max_new_tokens": 4, "stop": ["\n"]}
    return {**spec, **changes}


def write_arithmetic(folder: Path, n: int = 60, totals: tuple[int, ...] | None = None) -> Path:
    """A JSON-lines file of GSM8K-style sums (generated here; answers end with `#### <n>`).

    With `totals`, every sum is one of them (a tiny model learns to answer some right)."""
    if totals:
        pairs = [(a, totals[i % len(totals)] - a) for i, a in enumerate(range(1, n + 1))]
    else:
        pairs = [(a, b) for a in range(1, 40) for b in (3, 7, 12)]
    rows = [{"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
            for a, b in pairs][:n]
    path = folder / "arithmetic.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def arithmetic(path: Path, name: str = "arith", **changes) -> dict:
    """Sums as a generation task scored by numeric and exact match."""
    spec = {"name": name, "kind": "generation", "source": {"path": "json", "data_files": str(path)},
            "prompt_template": "Question: {question}\nAnswer:", "target_column": "answer",
            "metrics": ["numeric_match", "exact_match"], "max_new_tokens": 12, "stop": ["\n\n", "Question:"],
            "split_fractions": {"validation": 0.2, "test": 0.2}}
    return {**spec, **changes}
