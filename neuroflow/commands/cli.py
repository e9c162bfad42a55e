"""`python -m neuroflow fit|validate|test|merge` (and the `neuroflow` console script).

Errors come out as one line naming the key at fault (`neuroflow.commands.errors`): a parse error
is a `UsageError` (a `SystemExit` with status 2, as jsonargparse's was), a constructor refusing its
arguments a `ConfigError`; the full parser text is logged at DEBUG (`--verbose`). The resolved
config is written next to the run's outputs (`neuroflow.commands.config_file`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI

from neuroflow.commands.config_file import RunConfigSaver, output_folder, write_run_config
from neuroflow.commands.errors import ConfigError, UsageError, explain
from neuroflow.commands.logs import configure_logging, ensure_configured, pop_global_flags
from neuroflow.commands.trainer import NeuroTrainer

log = logging.getLogger(__name__)
PROG = "python -m neuroflow"


def _parser_keys(parser: Any, subcommand: str) -> list[str]:
    """Every key (`""`: every option string) a subcommand accepts, for "did you mean"."""
    action = getattr(parser, "_subcommands_action", None)
    sub = action._name_parser_map.get(subcommand) if action is not None and subcommand else None
    if sub is None and action is not None:
        subs = list(action._name_parser_map.values())
        return sorted({o for p in subs for a in p._actions for o in a.option_strings})
    target = sub or parser
    return sorted({a.dest for a in target._actions if a.dest and a.dest != argparse.SUPPRESS})


def usage_error(err: BaseException, parser: Any, command: str = "") -> UsageError:
    """The `UsageError` for a parser error: its one-line cause, logged now, the details at DEBUG."""
    message = explain(err, lambda sub: _parser_keys(parser, sub))
    log.error("%s: error: %s", f"{PROG} {command}".strip(), message)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("the parser's full message:\n%s", err)
    else:
        log.error("(run with --verbose for the parser's full message)")
    return UsageError(message, str(err))


class NeuroflowCLI(LightningCLI):
    """LightningCLI with neuroflow's `merge` subcommand, shared task wiring, one-line errors and
    run configs that never overwrite another file."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "merge": {"model", "datamodule"}}

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "merge":
            # `merge --model.base B --model.experts [...]` needs no class_path: the model of a
            # merge is a MergeModule unless a config says otherwise.
            parser.set_defaults({"model": {"class_path": "neuroflow.evaluation.MergeModule"}})
        return parser

    def add_arguments_to_parser(self, parser: Any) -> None:
        # Tasks are written once, under `data`; the model receives the DataModule's resolved task
        # specs so that its heads (or the experts it merges) match the dataloaders.
        parser.link_arguments("data.task_specs", "model.init_args.tasks", apply_on="instantiate")

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # Lightning warns when `args` is given while sys.argv holds arguments too; neuroflow always
        # passes them explicitly (the entry point, and every stage of a recipe), so the warning is
        # noise repeated once per stage.
        try:
            self.config = parser.parse_object(args) if isinstance(args, dict) else parser.parse_args(args)
        except argparse.ArgumentError as err:
            command = args[0] if isinstance(args, list) and args and not args[0].startswith("-") else ""
            raise usage_error(err, parser, command) from err

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            # A constructor refused its arguments: say which, not jsonargparse's Union dump.
            message = explain(err)
            log.debug("while building the config's classes:", exc_info=True)
            raise ConfigError(message, str(err)) from err
        # Experts record the exact configuration that produced them (in `expert.json`).
        from neuroflow.callbacks.expert_collector import ExpertCollector

        collectors = [c for c in self.trainer.callbacks if isinstance(c, ExpertCollector)]
        if collectors:
            config = self.resolved_config()
            for collector in collectors:
                collector.run_config = config

    def resolved_config(self) -> dict[str, Any]:
        """The parsed configuration of the running subcommand as plain data."""
        import yaml

        parser = self._parser(self.subcommand)
        config = self.config.get(str(self.subcommand), self.config)
        return yaml.safe_load(parser.dump(config, skip_none=False))

    # -- the run's config, written once its outputs exist --------------------------------------
    def _save_config(self, folder: str | Path | None) -> None:
        if folder is None or not self.trainer.is_global_zero:
            return
        parser = self._parser(self.subcommand)
        write_run_config(parser, self.config[str(self.subcommand)], folder, str(self.subcommand), replace_ours=True)

    def merge(self, **kwargs: Any) -> dict[str, Any]:
        """`merge`, then its config into the merge's own output folder (where `--output_dir` put it)."""
        from neuroflow.commands.merge import MergeEvaluationError, default_output_dir

        try:
            result = self.trainer.merge(**kwargs)
        except MergeEvaluationError:
            # The merged model is kept when only its evaluation failed; so is the config that made it.
            self._save_config(kwargs.get("output_dir") or default_output_dir(kwargs["model"]))
            raise
        self._save_config(result.get("output_dir") if isinstance(result, dict) else None)
        return result

    def after_test(self) -> None:
        self._save_config(output_folder(self.trainer, self.model))

    def after_validate(self) -> None:
        self._save_config(output_folder(self.trainer, self.model))


def _cli_kwargs() -> dict[str, Any]:
    return dict(
        model_class=None,
        datamodule_class=None,
        trainer_class=NeuroTrainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        # exit_on_error=False: parse errors arrive as exceptions, explained in one line here.
        # allow_abbrev=False: `--trainer.max_epoch` is a typo to report, not `max_epochs`.
        parser_kwargs={"parser_mode": "omegaconf", "prog": PROG, "exit_on_error": False, "allow_abbrev": False},
        save_config_callback=RunConfigSaver,
        auto_configure_optimizers=False,
    )


def main(args: list[str] | None = None) -> None:
    """`python -m neuroflow fit|validate|test|merge ...` (LightningCLI; `run` is `neuroflow.commands.entry`).

    Args:
        args: the arguments after `python -m neuroflow`; None: `sys.argv[1:]`. `--quiet` and
            `--verbose` are taken out (the entry point configures logging with them).

    Raises:
        UsageError: the command line or config does not parse (status 2; the cause is logged).
        ConfigError: a class refused its arguments (status 2 from the entry point).
    """
    import sys

    argv, level = pop_global_flags(list(sys.argv[1:] if args is None else args))
    # The entry point took --quiet/--verbose out already; a direct caller's are applied here.
    if level is not None:
        configure_logging(level)
    else:
        ensure_configured()
    NeuroflowCLI(args=argv, **_cli_kwargs())


# -- checking a config without running it ------------------------------------------------------
class _ParserReady(Exception):
    def __init__(self, parser: Any) -> None:
        self.parser = parser


class _ParserOnly(NeuroflowCLI):
    def parse_arguments(self, parser: Any, args: Any) -> None:
        raise _ParserReady(parser)


_PARSER: Any = None


def cli_parser() -> Any:
    """The CLI's parser (every subcommand), built once per process."""
    global _PARSER
    if _PARSER is None:
        try:
            _ParserOnly(args=[], **_cli_kwargs())
        except _ParserReady as ready:
            _PARSER = ready.parser
    return _PARSER


def _args_to_dict(extra_args: list[str]) -> dict[str, Any]:
    """`["--ckpt_path", "x"]` -> `{"ckpt_path": "x"}` (stage arguments after `--config`)."""
    out: dict[str, Any] = {}
    pairs = iter(extra_args)
    for flag in pairs:
        key = flag.lstrip("-")
        value = next(pairs, None)
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def check_config(command: str, config: dict[str, Any], extra_args: list[str] | None = None) -> None:
    """Check a `python -m neuroflow <command>` config as the command would parse it, building
    nothing heavy: class paths import, init args are accepted with the right types, and a merge's
    method (and each candidate of its search grid) accepts its hyperparameters.

    Raises:
        UsageError: the config does not parse (one-line message).
        ConfigError: the merge method refuses its hyperparameters.
    """
    from neuroflow.commands.config_check import check_merge_method

    parser = cli_parser()
    try:
        parsed = parser.parse_object({"subcommand": command, command: {**config, **_args_to_dict(extra_args or [])}})
    except argparse.ArgumentError as err:
        message = explain(err, lambda sub: _parser_keys(parser, sub))
        raise UsageError(message, str(err)) from err
    check_merge_method(parsed[command])
