"""The quadratic problem of L2O-DM (docs/method.md 2.1): f(x) = mean_i ||W_i x_i - y_i||^2.

128 independent 10-dimensional least-squares problems per instance (1,280 parameters); W_i and
y_i ~ U[0, 1] are drawn once per instance from its seed and stay fixed along the trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from l2o.layout import Layout
from l2o.tasks.base import BatchStream, ParamInit, Task, generators


class _FixedProblem(BatchStream):
    def __init__(self, w: Tensor, y: Tensor) -> None:
        self.w, self.y = w, y

    def next(self) -> tuple[Tensor, Tensor]:
        return self.w, self.y


class QuadraticTask(Task):
    """A population of random quadratics; ``batch`` is the fixed ``(W, y)`` of each instance."""

    eval_split = "train"

    def __init__(self, name="quadratic", num_problems=128, dim=10, init_std=0.01, description=""):
        self.name, self.num_problems, self.dim = name, num_problems, dim
        self.init_std, self.description = init_std, description
        self.layout = Layout.from_shapes([("x", (num_problems, dim))])

    def param_inits(self) -> dict[str, ParamInit]:
        return {"x": ParamInit("normal", self.init_std)}

    def options(self) -> dict:
        return {"num_problems": self.num_problems, "dim": self.dim, "init_std": self.init_std}

    def stream(self, seeds: Sequence[int], split=None, device="cpu") -> _FixedProblem:
        k, d = self.num_problems, self.dim
        gens = generators(seeds, "problem")
        w = torch.stack([torch.rand(k, d, d, generator=g) for g in gens])
        y = torch.stack([torch.rand(k, d, generator=g) for g in gens])
        return _FixedProblem(w.to(device), y.to(device))

    def loss(self, x: Tensor, batch) -> Tensor:
        w, y = batch
        xs = x.view(x.shape[0], self.num_problems, self.dim, 1)
        residual = (w.to(x.dtype) @ xs).squeeze(-1) - y.to(x.dtype)
        return residual.square().sum(-1).mean(-1)
