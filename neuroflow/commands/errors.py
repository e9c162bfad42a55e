"""One-line causes for command-line errors, instead of jsonargparse's nested Union dumps.

jsonargparse reports a bad value deep in a config as an 80-line message (every Union member it
tried, the whole given value), and a constructor's own error as the cause of such a message. The
user needs the one line that says what is wrong, where, and what would be right: `explain`
finds it (the first exception of the chain that is not a parser wrapper, or the innermost line
of the parser's message), names the config key, lists the valid classes for a wrong
`class_path` and suggests the nearest name for a misspelled key. The full text is kept as
`details`, shown under `--verbose`.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from neuroflow.class_paths import import_path

# Packages whose classes a neuroflow config names (searched for the valid choices of a class_path).
_NEUROFLOW_PACKAGES = ("neuroflow.merging", "neuroflow.evaluation", "neuroflow.models", "neuroflow.data",
                       "neuroflow.callbacks")
# Lines that only give the message its structure (a leading "- " bullet is ignored).
_STRUCTURE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Errors:|Expected a <class 'NoneType'>"
    r"|Expected a path but .* either not accessible or invalid|Given value type: .*"
    r"|Subclass types expect one of:|a class path \(str\)|a dict .*)$"
)
_KEY = re.compile(r'^Parser key "(?P<key>[^"]+)":$')
_CLASS = re.compile(r"^- Problem with given class_path '(?P<cls>[^']+)':$")
_SUBTYPES = re.compile(r"^Subtypes: \[(?P<types>.*)\]$")
_GIVEN = re.compile(r"^Given value: (?P<value>.*)$")
_UNKNOWN_OPTION = re.compile(r"^Option '(?P<key>[^']+)' is not accepted$")
_NOT_ACCEPTED = re.compile(r"^Subcommand '(?P<sub>[^']+)' does not accept option '(?P<key>[^']+)'$")
_UNRECOGNIZED = re.compile(r"^Unrecognized arguments: (?P<args>.*)$", re.IGNORECASE)
_NO_CLASS = re.compile(r"^(module '[^']+' has no attribute '[^']+'|No module named '[^']+'|.*not a class.*"
                       r"|Import path .* (not found|could not be found).*)$")
_BASE_CLASS = re.compile(r"<class '(?P<path>[^']+)'>")


class UsageError(SystemExit):
    """The parser rejected the command line or a config (exit status 2, like argparse).

    A `SystemExit`, as jsonargparse's own exit was, so callers that only look at exit codes keep
    working; `message` holds the one-line cause and `details` the parser's full text.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(2)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class ConfigError(ValueError):
    """A config that parsed but whose classes refused their arguments when built (exit status 2)."""

    exit_code = 2

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details


@dataclass
class _Frame:
    indent: int
    kind: str                # "key" | "class"
    value: str
    base: str | None = None  # for a key: the first class of its Subtypes line
    given: str | None = None
    children: list[str] = field(default_factory=list)


def _is_wrapper(err: BaseException) -> bool:
    """An exception raised by the parser machinery around the real one."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename if tb is not None else ""
    return "jsonargparse" in where or "Does not validate against any of the Union subtypes" in str(err)


def underlying(err: BaseException) -> BaseException:
    """The first exception along `err`'s explicit cause chain that the parser did not raise."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if not _is_wrapper(current):
            return current
        current = current.__cause__
    return err


def accepted_keys(class_path: str) -> list[str]:
    """The init arguments a config may give the class at `class_path` (as jsonargparse sees them)."""
    cls = import_path(class_path)
    if not inspect.isclass(cls):
        return []
    try:
        from jsonargparse._parameter_resolvers import get_signature_parameters

        return [p.name for p in get_signature_parameters(cls)]
    except Exception:  # a private helper: fall back to the plain signature
        return [n for n, p in inspect.signature(cls).parameters.items()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def valid_classes(base_path: str, given: str) -> list[str]:
    """Import paths of the concrete subclasses of `base_path` that a config could name instead of
    `given`: those of `given`'s module when it imports, plus those of neuroflow's packages."""
    base = import_path(base_path)
    if not inspect.isclass(base):
        return []
    module = given.rpartition(".")[0]
    packages = [module, base.__module__.rpartition(".")[0], *_NEUROFLOW_PACKAGES]
    found: dict[int, str] = {}
    for package in dict.fromkeys(p for p in packages if p):
        try:
            mod = importlib.import_module(package)
        except ImportError:
            continue
        names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
        for name in names:
            obj = getattr(mod, name, None)
            if (inspect.isclass(obj) and issubclass(obj, base) and obj is not base
                    and not inspect.isabstract(obj) and id(obj) not in found):
                found[id(obj)] = f"{package}.{name}"
    return sorted(found.values())


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The nearest of `choices` to `word` (case-insensitive), or None when none is close."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    near = suggest(word, choices)
    return f"; did you mean {near!r}?" if near else ""


def _path(frames: list[_Frame]) -> str:
    parts: list[str] = []
    after_class = False
    for frame in frames:
        if frame.kind == "key":
            parts.append(("init_args." if after_class else "") + frame.value)
            after_class = False
        else:
            after_class = True
    path = ".".join(parts)
    return path + (".init_args" if after_class and path else "")


def _explain_leaf(leaf: str, frames: list[_Frame], keys: Callable[[str], list[str]] | None) -> str:
    where = _path(frames)
    prefix = f"{where}: " if where else ""
    classes = [f for f in frames if f.kind == "class"]
    if match := _UNKNOWN_OPTION.match(leaf):
        owner = classes[-1].value if classes else ""
        return (f"{prefix}unknown key {match['key']!r}" + (f" for {owner}" if owner else "")
                + _did_you_mean(match["key"], accepted_keys(owner) if owner else []))
    if _NO_CLASS.match(leaf) and classes:
        given = classes[-1].value
        key_frames = [f for f in frames if f.kind == "key" and f.base]
        base = key_frames[-1].base if key_frames else None
        choices = valid_classes(base, given) if base else []
        kind = base.rpartition(".")[2] if base else "class"
        text = f"{_path(frames[:-1]) or 'class_path'}: no {kind} named {given!r} ({leaf})"
        text += _did_you_mean(given, choices)
        if choices:
            text += f" Valid {kind} classes: {', '.join(choices)}"
        return text
    if match := _NOT_ACCEPTED.match(leaf):
        return (f"unknown key {match['key']!r} for `{match['sub']}`"
                + _did_you_mean(match["key"], keys(match["sub"]) if keys else []))
    if match := _UNRECOGNIZED.match(leaf):
        options = [a for a in match["args"].split() if a.startswith("--")]
        hints = [_did_you_mean(o.split("=")[0], keys("") if keys else []) for o in options]
        return f"unrecognized arguments: {match['args']}" + "".join(hints)
    given = frames[-1].given if frames else None
    if given is not None and len(given) <= 80 and "Got value" not in leaf:
        leaf += f" (given: {given})"
    return prefix + leaf


def explain_parser_message(message: str, keys: Callable[[str], list[str]] | None = None) -> str:
    """The one-line cause in a jsonargparse error message.

    Args:
        message: the parser's message (`ArgumentError` text).
        keys: subcommand -> the keys it accepts (`""`: its option strings), for suggestions.
    """
    stack: list[_Frame] = []
    leaves: list[tuple[int, str, list[_Frame]]] = []
    for raw in message.splitlines():
        text = raw.strip()
        if not text:
            continue
        indent = len(raw) - len(raw.lstrip())
        while stack and stack[-1].indent >= indent:
            stack.pop()
        if match := _KEY.match(text):
            stack.append(_Frame(indent, "key", match["key"]))
        elif match := _CLASS.match(text):
            stack.append(_Frame(indent, "class", match["cls"]))
        elif match := _SUBTYPES.match(text):
            bases = [m["path"] for m in _BASE_CLASS.finditer(match["types"]) if m["path"] != "NoneType"]
            if stack and bases:
                stack[-1].base = stack[-1].base or bases[0]
        elif match := _GIVEN.match(text):
            if stack:
                stack[-1].given = match["value"]
        elif not _STRUCTURE.match(text.removeprefix("- ")):
            leaves.append((indent, text.removeprefix("- "), list(stack)))
    if not leaves:
        return message.strip().splitlines()[0] if message.strip() else "invalid arguments"
    # The first leaf's siblings are alternatives of the same value (e.g. "not a str; not a class").
    indent, leaf, frames = leaves[0]
    siblings = [t for i, t, f in leaves[1:] if i == indent and f == frames]
    first = _explain_leaf(leaf, frames, keys)
    return "; ".join([first, *siblings]) if siblings and first.endswith(leaf) else first


def explain(err: BaseException, keys: Callable[[str], list[str]] | None = None) -> str:
    """The one-line cause of `err`: the real error under the parser's wrappers, or the innermost
    line of a parser message.

    Args:
        err: what the command raised.
        keys: subcommand -> accepted keys, for "did you mean" suggestions.
    """
    cause = underlying(err)
    if cause is err and _is_wrapper(err):
        return explain_parser_message(str(err), keys)
    if isinstance(cause, (UsageError, ConfigError)):
        return cause.message
    text = str(cause).strip()
    if not text:
        return type(cause).__name__
    if len(text) > 2000:
        text = text.splitlines()[0][:2000]
    # Our own errors and the usual value/OS errors speak for themselves; a bare KeyError does not.
    plain = isinstance(cause, (ValueError, OSError, RuntimeError)) or type(cause).__module__.startswith("neuroflow")
    return text if plain else f"{type(cause).__name__}: {text}"
