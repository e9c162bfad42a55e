"""Recipes: one YAML file and one command for fit -> merge -> test -> combined report, locally or on SLURM."""

from neuroflow.pipeline.plan import Planner, Stage, plan_recipe, resolve_task_specs
from neuroflow.pipeline.recipe import Recipe, RecipeError, load_recipe
from neuroflow.pipeline.runner import PipelineRunner, run_recipe
from neuroflow.pipeline.slurm import render_slurm

__all__ = [
    "PipelineRunner",
    "Planner",
    "Recipe",
    "RecipeError",
    "Stage",
    "load_recipe",
    "plan_recipe",
    "render_slurm",
    "resolve_task_specs",
    "run_recipe",
]
