"""L2O-DM: the coordinatewise two-layer LSTM optimizer of Andrychowicz et al. (2016), "Learning to
learn by gradient descent by gradient descent", in the configuration Chen et al. (2020), "Training
Stronger Baselines for Learning to Optimize", use for every problem (docs/method.md 1.1).

Per coordinate, with one set of weights shared by all coordinates of all instances:

1. LogAndSign preprocessing with ``k = 5``: ``[max(log(|g| + eps) / k, -1), clip(g * e^k, -1, 1)]``,
   ``eps`` = float32 machine epsilon (the magnitude clamped from below only; the "sign" feature
   saturates for ``|g| > e^-k``);
2. two stacked sonnet-1 LSTMs of 20 units (:mod:`l2o.rules.lstm`), state zero at the start;
3. a linear readout 20 -> 1, and the update ``delta = 0.01 * readout`` (unbounded, no tanh).

5,141 weights: ``lstm_1/w_gates`` 22x80, ``lstm_1/b_gates`` 80, ``lstm_2/w_gates`` 40x80,
``lstm_2/b_gates`` 80, ``linear/w`` 20x1, ``linear/b`` 1 -- the keys of the authors' checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from l2o.layout import Layout
from l2o.rules.base import Generators, LearnedRule
from l2o.rules.lstm import Linear, LSTMLayer

#: LogAndSign's epsilon: float32 machine epsilon (1.1920929e-07), whatever the compute dtype.
LOG_AND_SIGN_EPS = float(np.finfo(np.float32).eps)


class DMState(NamedTuple):
    """Per-coordinate LSTM state of a population: each tensor is ``[n, hidden, P]`` (instance
    first and coordinates last, like ``x``), in ``x``'s dtype and device. They are transposed
    views of the feature-first ``[hidden, n, P]`` tensors the cell computes on
    (:mod:`l2o.rules.lstm` explains why); index them like any tensor."""

    h1: Tensor
    c1: Tensor
    h2: Tensor
    c2: Tensor


def log_and_sign(grad: Tensor, k: float = 5.0, eps: float = LOG_AND_SIGN_EPS) -> Tensor:
    """The two LogAndSign features of every gradient coordinate: ``[2, ...]`` from ``[...]``
    (feature-first, as the LSTM cell takes them).

    ``[max(log(|g| + eps) / k, -1), clip(g * e^k, -1, 1)]`` (Andrychowicz et al. 2016, appendix A;
    the authors' ``preprocess.LogAndSign``). It maps gradients spanning many orders of magnitude
    into ``[-1, ...]`` and ``[-1, 1]``.
    """
    log = torch.clamp_min(torch.log(grad.abs() + eps) / k, -1.0)
    sign = torch.clamp(grad * math.exp(k), -1.0, 1.0)
    return torch.stack([log, sign], dim=0)


class DMRule(LearnedRule):
    """L2O-DM as a :class:`~l2o.rules.base.Rule` and an ``nn.Module`` (meta-trainable).

    Args:
        hidden_sizes: the two LSTM widths (20, 20 in the paper).
        k: LogAndSign's scale (5 in the paper).
        output_scale: multiplies the readout (0.01 in the paper).

    ``step`` is differentiable with respect to the weights (meta-training backpropagates through
    it) and also runs under ``torch.no_grad()``. All ``n * P`` coordinates are one batch.
    """

    name = "dm"

    def __init__(
        self, hidden_sizes: Sequence[int] = (20, 20), k: float = 5.0, output_scale: float = 0.01
    ) -> None:
        super().__init__()
        if len(hidden_sizes) != 2:
            raise ValueError(f"L2O-DM has two LSTM layers; got hidden_sizes={list(hidden_sizes)}")
        self.hidden_sizes = (int(hidden_sizes[0]), int(hidden_sizes[1]))
        self.k = float(k)
        self.output_scale = float(output_scale)
        self.lstm_1 = LSTMLayer(2, self.hidden_sizes[0])
        self.lstm_2 = LSTMLayer(self.hidden_sizes[0], self.hidden_sizes[1])
        self.linear = Linear(self.hidden_sizes[1], 1)

    def settings(self) -> dict[str, Any]:
        return {
            "hidden_sizes": list(self.hidden_sizes),
            "preprocessing": "log_and_sign",
            "k": self.k,
            "output_scale": self.output_scale,
        }

    @classmethod
    def _kwargs_from_settings(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        if kwargs.pop("preprocessing", "log_and_sign") != "log_and_sign":
            raise ValueError(f"L2O-DM supports only log_and_sign preprocessing, not {kwargs}")
        return kwargs

    def init(
        self, x: Tensor, layout: Layout | None = None, generator: Generators = None
    ) -> DMState:
        """Zero LSTM state for population ``x`` ``[n, P]`` (on ``x``'s device, in its dtype);
        nothing is random, so ``generator`` is ignored."""
        n, p = x.shape
        h1s, h2s = self.hidden_sizes
        h1, c1, h2, c2 = (x.new_zeros(size, n, p).transpose(0, 1) for size in (h1s, h1s, h2s, h2s))
        return DMState(h1, c1, h2, c2)

    def step(self, grad: Tensor, state: DMState) -> tuple[Tensor, DMState]:
        """``delta [n, P]`` and the new state for gradient ``grad [n, P]``."""
        h1, c1, h2, c2 = (t.transpose(0, 1) for t in state)  # feature-first views
        h1, c1 = self.lstm_1(log_and_sign(grad, self.k), h1, c1)
        h2, c2 = self.lstm_2(h1, h2, c2)
        delta = self.output_scale * self.linear(h2)[0]
        return delta, DMState(*(t.transpose(0, 1) for t in (h1, c1, h2, c2)))

    def extra_repr(self) -> str:
        hidden = list(self.hidden_sizes)
        return f"hidden_sizes={hidden}, k={self.k}, output_scale={self.output_scale}"
