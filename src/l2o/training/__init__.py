"""Meta-training: truncated-BPTT unrolls, the trainer, and named recipes."""

from l2o.training.config import TrainConfig
from l2o.training.recipes import BUDGETS, RECIPES, Recipe, get_recipe
from l2o.training.trainer import Trainer, TrainingError, TrainSummary

__all__ = [
    "BUDGETS",
    "RECIPES",
    "Recipe",
    "TrainConfig",
    "TrainSummary",
    "Trainer",
    "TrainingError",
    "get_recipe",
]
