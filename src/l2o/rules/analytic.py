"""Analytic optimizers (Adam, RMSprop, SGD, NAG) behind the rule interface, on ``torch.optim``.

They serve as baselines in evaluation and as teachers for imitation learning (Chen et al. 2020,
section on off-policy imitation). The maths is ``torch.optim``'s own: the rule keeps a leaf tensor
that mirrors the population, hands it the gradient and reports the displacement ``torch.optim``
applied. All four are elementwise, so one ``[n, P]`` leaf serves a whole population, with every
instance following exactly the trajectory it would follow alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from l2o.layout import Layout
from l2o.rules.base import Generators


@dataclass
class AnalyticState:
    """The mirrored parameters and the ``torch.optim`` optimizer that owns their slots."""

    param: Tensor
    optimizer: torch.optim.Optimizer


class AnalyticRule:
    """A ``torch.optim`` optimizer class with fixed hyperparameters, as a :class:`Rule`."""

    def __init__(self, name: str, optimizer_cls: type[torch.optim.Optimizer], **hparams: Any):
        self.name = name
        self.optimizer_cls = optimizer_cls
        self.hparams = hparams

    def hyperparameters(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams.items()}

    def init(
        self, x: Tensor, layout: Layout | None = None, generator: Generators = None
    ) -> AnalyticState:
        """``torch.optim``'s fresh state for ``x`` (nothing random: ``generator`` is ignored)."""
        param = x.detach().clone().requires_grad_(True)
        return AnalyticState(param, self.optimizer_cls([param], **self.hparams))

    @torch.no_grad()
    def step(self, grad: Tensor, state: AnalyticState) -> tuple[Tensor, AnalyticState]:
        before = state.param.detach().clone()
        state.param.grad = grad.detach().to(state.param.dtype)
        state.optimizer.step()
        return state.param.detach() - before, state

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"{self.name}({hp})"


def adam(lr: float = 0.01, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
    """Adam (Kingma & Ba 2015); lr 0.01 is the paper's imitation teacher."""
    return AnalyticRule(
        "adam", torch.optim.Adam, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay
    )


def rmsprop(
    lr: float = 0.01,
    alpha: float = 0.9,
    eps: float = 1e-10,
    momentum: float = 0.0,
    centered: bool = False,
):
    """RMSprop (Tieleman & Hinton 2012) with TF's decay 0.9 and epsilon 1e-10 as in the original."""
    return AnalyticRule(
        "rmsprop",
        torch.optim.RMSprop,
        lr=lr,
        alpha=alpha,
        eps=eps,
        momentum=momentum,
        centered=centered,
    )


def sgd(lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0):
    """Plain stochastic gradient descent (optionally with heavy-ball momentum)."""
    return AnalyticRule("sgd", torch.optim.SGD, lr=lr, momentum=momentum, weight_decay=weight_decay)


def nag(lr: float = 0.01, momentum: float = 0.9):
    """SGD with Nesterov momentum (Nesterov 1983; Sutskever et al. 2013)."""
    return AnalyticRule("nag", torch.optim.SGD, lr=lr, momentum=momentum, nesterov=True)


ANALYTIC_RULES = {"adam": adam, "rmsprop": rmsprop, "sgd": sgd, "nag": nag}


def get_analytic_rule(name: str, **hparams: Any) -> AnalyticRule:
    """Build an analytic rule by name; ``hparams`` override its defaults (``lr`` etc.)."""
    if name not in ANALYTIC_RULES:
        raise ValueError(
            f"unknown analytic rule {name!r}; choose one of {', '.join(ANALYTIC_RULES)}"
        )
    return ANALYTIC_RULES[name](**{k: v for k, v in hparams.items() if v is not None})
