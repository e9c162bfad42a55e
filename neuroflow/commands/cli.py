"""`python -m neuroflow fit|validate|test|merge` (and the `neuroflow` console script)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningCLI

from neuroflow.commands.trainer import NeuroTrainer


class NeuroflowCLI(LightningCLI):
    """LightningCLI with neuroflow's `merge` subcommand and shared task wiring."""

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

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
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


def main(args: list[str] | None = None) -> None:
    """`python -m neuroflow fit|validate|test|merge ...` (LightningCLI; `run` is `neuroflow.commands.entry`)."""
    NeuroflowCLI(
        model_class=None,
        datamodule_class=None,
        trainer_class=NeuroTrainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        # None lets LightningCLI read sys.argv itself (it warns when given both).
        args=args,
        auto_configure_optimizers=False,
    )
