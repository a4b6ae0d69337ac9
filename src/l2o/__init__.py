"""l2o: train learned optimizers well (Chen et al., "Training Stronger Baselines for Learning to
Optimize", NeurIPS 2020), on PyTorch."""

from l2o.evaluation import EvalResult, evaluate
from l2o.layout import Layout, TensorSpec
from l2o.optim import LearnedOptimizer
from l2o.registry import load_rule
from l2o.rules import AnalyticRule, Rule, adam, nag, rmsprop, sgd
from l2o.tasks import TASKS, ModuleTask, Task, get_task

__version__ = "0.1.0"

__all__ = [
    "TASKS",
    "AnalyticRule",
    "EvalResult",
    "Layout",
    "LearnedOptimizer",
    "ModuleTask",
    "Rule",
    "Task",
    "TensorSpec",
    "__version__",
    "adam",
    "evaluate",
    "get_task",
    "load_rule",
    "nag",
    "rmsprop",
    "sgd",
]
