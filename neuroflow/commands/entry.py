"""`python -m neuroflow <command>`: `run` goes to the recipe runner, the rest to LightningCLI."""

from __future__ import annotations

import sys

from neuroflow.commands import cli, run


def main(args: list[str] | None = None) -> None:
    """Dispatch `python -m neuroflow` (also the `neuroflow` console script).

    Args:
        args: the command line after `python -m neuroflow`; None = `sys.argv[1:]`.
    """
    argv = list(args if args is not None else sys.argv[1:])
    if argv and argv[0] == "run":
        # Recipes are a layer above LightningCLI: one command that runs fit/merge/test configs.
        run.main(argv[1:])
        return
    if argv[:1] in (["analyze"], ["stats"]):
        # Commands outside LightningCLI's Trainer methods: the neuron-subspace analysis of a set
        # of experts, and the statistics pass of the data-aware merge methods.
        import importlib

        module = {"analyze": "neuroflow.analysis.command", "stats": "neuroflow.statistics.command"}[argv[0]]
        importlib.import_module(module).main(argv[1:])
        return
    if argv[:1] == ["merge"] and any(a == "--from_mergekit" or a.startswith("--from_mergekit=") for a in argv):
        from neuroflow.commands.merge_checkpoints import from_mergekit_main

        from_mergekit_main(argv[1:])
        return
    cli.main(args)
