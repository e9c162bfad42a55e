"""`python -m neuroflow <command>`: the dispatcher behind `python -m neuroflow` and the `neuroflow` script.

It configures logging once (`--quiet`, `--verbose`, accepted on every command), then hands the
arguments to the command, and turns what a command raises into one line on stderr and an exit
status (2: the command line or a config is wrong; 1: the run failed), with the details under
`--verbose`. A command is one entry of `COMMANDS`, imported only when it runs.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass

from neuroflow.commands.logs import configure_logging, pop_global_flags

log = logging.getLogger("neuroflow.commands")
PROG = "python -m neuroflow"


@dataclass(frozen=True)
class Command:
    """One subcommand.

    Args:
        target: `module:function` called with the command's arguments.
        help: one line for `python -m neuroflow --help`.
        with_name: pass the command's name as the first argument (LightningCLI expects it).
        own_flags: global flags the command also has itself (e.g. `--quiet`): it receives them too.
    """

    target: str
    help: str
    with_name: bool = False
    own_flags: tuple[str, ...] = ()


_LIGHTNING = "neuroflow.commands.cli:main"
COMMANDS: dict[str, Command] = {
    "fit": Command(_LIGHTNING, "fine-tune a model (an expert per task, collected by ExpertCollector)", True),
    "validate": Command(_LIGHTNING, "score a model on the validation splits", True),
    "test": Command(_LIGHTNING, "score a merged model, the experts or the pre-trained backbone (report)", True),
    "predict": Command(_LIGHTNING, "run a model's predict step", True),
    "merge": Command(_LIGHTNING, "merge experts (optionally with a validation search), save and score", True),
    "run": Command("neuroflow.commands.run:main", "run a recipe end to end: fit -> merge -> test -> report"),
    # Outside LightningCLI's Trainer methods: the neuron-subspace analysis of a set of experts, and
    # the statistics pass of the data-aware merge methods.
    "analyze": Command("neuroflow.analysis.command:main", "analyse experts' updates against the pre-trained neurons",
                       own_flags=("--quiet",)),
    "stats": Command("neuroflow.statistics.command:main", "collect the data statistics of RegMean/Fisher merging"),
}
# `merge --from_mergekit CONFIG`: a MergeKit YAML, not a LightningCLI config.
_FROM_MERGEKIT = Command("neuroflow.commands.merge_checkpoints:from_mergekit_main", "")


def help_text() -> str:
    """The top-level `--help`: every command, and the options they all accept."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} <command> [options]", "",
             "Fine-tune per-task experts, merge them and score the merged models.", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    lines += ["", "options of every command:",
              "  --quiet     warnings and errors only, no progress",
              "  --verbose   debug lines, and the full details of errors", "",
              f"`{PROG} <command> --help` lists a command's options."]
    return "\n".join(lines) + "\n"


def _load(target: str):  # noqa: ANN202
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def _fail(name: str, message: str, code: int, details: bool = True) -> None:
    log.error("%s %s: error: %s", PROG, name, message)
    if details and not log.isEnabledFor(logging.DEBUG):
        log.error("(run with --verbose for the details)")
    raise SystemExit(code)


def main(args: list[str] | None = None) -> None:
    """Dispatch `python -m neuroflow` (also the `neuroflow` console script).

    Args:
        args: the command line after `python -m neuroflow`; None = `sys.argv[1:]`.
    """
    raw = list(args if args is not None else sys.argv[1:])
    argv, level = pop_global_flags(raw)
    configure_logging(level)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(help_text())
        if not argv:
            raise SystemExit(2)
        return
    name = argv[0]
    command = COMMANDS.get(name)
    if command is None:
        from neuroflow.commands.errors import suggest

        near = suggest(name, COMMANDS)
        _fail(name, f"unknown command {name!r}" + (f"; did you mean {near!r}?" if near else "")
              + f" Commands: {', '.join(COMMANDS)}", 2, details=False)
    if name == "merge" and any(a == "--from_mergekit" or a.startswith("--from_mergekit=") for a in argv):
        command = _FROM_MERGEKIT
    from neuroflow.commands.errors import ConfigError, UsageError, explain

    argv += [flag for flag in command.own_flags if flag in raw]
    try:
        _load(command.target)(argv if command.with_name else argv[1:])
    except UsageError:
        raise  # already said, in one line, where it was found
    except ConfigError as err:
        log.debug("details:\n%s", err.details)
        _fail(name, err.message, err.exit_code)
    except KeyboardInterrupt:
        log.error("%s %s: interrupted", PROG, name)
        raise SystemExit(130) from None
    except Exception as err:
        log.debug("traceback:", exc_info=err)
        _fail(name, explain(err), 1)
