"""Optimizee tasks: the paper's MNIST/CIFAR-10 problems, the quadratic, and users' modules."""

from __future__ import annotations

from collections.abc import Callable

from l2o.tasks.base import BatchStream, ParamInit, Task, derive_seed
from l2o.tasks.conv import ConvTask
from l2o.tasks.mlp import MLPTask
from l2o.tasks.module import ModuleTask
from l2o.tasks.quadratic import QuadraticTask

#: name -> factory(**options). Options override the paper's defaults (e.g. ``init_std=1.0``).
TASKS: dict[str, Callable[..., Task]] = {
    "mlp-orig": lambda **kw: MLPTask(
        "mlp-orig",
        (20,),
        "sigmoid",
        description="MNIST MLP 784-20-10, sigmoid (the meta-training task)",
        **kw,
    ),
    "mlp-relu": lambda **kw: MLPTask(
        "mlp-relu", (20,), "relu", description="MNIST MLP 784-20-10, ReLU", **kw
    ),
    "mlp-deeper": lambda **kw: MLPTask(
        "mlp-deeper", (20, 20), "sigmoid", description="MNIST MLP 784-20-20-10, sigmoid", **kw
    ),
    "conv-mnist": lambda **kw: ConvTask(
        "conv-mnist",
        "mnist",
        1,
        description="MNIST conv 3x3x16, 5x5x32 (stride 1), BN, ReLU logits",
        **kw,
    ),
    "conv-cifar": lambda **kw: ConvTask(
        "conv-cifar",
        "cifar10",
        2,
        description="CIFAR-10 conv 3x3x16, 5x5x32 (stride 2), BN, ReLU logits",
        **kw,
    ),
    "quadratic": lambda **kw: QuadraticTask(
        description="128 random 10-d least-squares problems", **kw
    ),
}


def get_task(name: str, **options) -> Task:
    """Build a registered task by name, with options overriding its defaults."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name](**options)


__all__ = [
    "TASKS",
    "BatchStream",
    "ConvTask",
    "MLPTask",
    "ModuleTask",
    "ParamInit",
    "QuadraticTask",
    "Task",
    "derive_seed",
    "get_task",
]
