"""l2o: train learned optimizers well (Chen et al., "Training Stronger Baselines for Learning to
Optimize", NeurIPS 2020), on PyTorch.

The public API, in the order a user meets it: tasks (``get_task``, ``ModuleTask``), rules
(``adam`` ... ``nag``, ``load_rule`` for learned ones by name or path), ``evaluate``,
meta-training (``get_recipe``, ``TrainConfig``, ``Trainer``) and ``LearnedOptimizer``.
"""

from l2o._version import __version__
from l2o.bundled import bundled_names
from l2o.evaluation import EvalResult, evaluate
from l2o.layout import Layout, TensorSpec
from l2o.optim import LearnedOptimizer
from l2o.registry import load_rule
from l2o.rules import AnalyticRule, LearnedRule, Rule, adam, nag, register_rule, rmsprop, sgd
from l2o.tasks import TASKS, ModuleTask, Task, get_task
from l2o.training import RECIPES, TrainConfig, Trainer, get_recipe

__all__ = [
    "RECIPES",
    "TASKS",
    "AnalyticRule",
    "EvalResult",
    "Layout",
    "LearnedOptimizer",
    "LearnedRule",
    "ModuleTask",
    "Rule",
    "Task",
    "TensorSpec",
    "TrainConfig",
    "Trainer",
    "__version__",
    "adam",
    "bundled_names",
    "evaluate",
    "get_recipe",
    "get_task",
    "load_rule",
    "nag",
    "register_rule",
    "rmsprop",
    "sgd",
]
