"""RNNprop (Lv, Jiang, Li 2017, "Learning Gradient Descent: Better Generalization and Longer
Horizons") as re-implemented by Chen et al. (2020), "Training Stronger Baselines for Learning to
Optimize", inside the L2O-DM code base (docs/method.md 1.2).

Per coordinate, with one set of weights shared by all coordinates of all instances:

1. Adam-like moments with ``beta1 = beta2 = 0.95``: ``m = b1 m + (1 - b1) g``,
   ``v = b2 v + (1 - b2) g^2``, bias-corrected with ``n`` = global step index + 1 (the state
   carries a step counter that starts at 0, so the first step uses ``n = 1``);
2. features ``[m_hat / (sqrt(v_hat) + eps), g / (sqrt(v_hat) + eps)]`` in that order (upstream
   RNNprop orders them the other way round), ``eps = 1e-8``; they are invariant to rescaling the
   gradient, which is what makes RNNprop generalise across problems;
3. a linear projection 2 -> 20 with ELU, two stacked sonnet-1 LSTMs of 20 units
   (:mod:`l2o.rules.lstm`), a linear readout 20 -> 1;
4. ``delta = output_scale * tanh(readout)``: each step is bounded by ``output_scale`` per
   coordinate (0.01 in the authors' code; upstream RNNprop used 0.1).

6,641 weights: ``input_projection/w`` 2x20 and ``/b`` 20, ``lstm_1/w_gates`` 40x80 and
``/b_gates`` 80, ``lstm_2/...`` 40x80 and 80, ``linear/w`` 20x1 and ``/b`` 1 -- the keys of the
authors' checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from l2o.layout import Layout
from l2o.rules.base import Generators, LearnedRule
from l2o.rules.lstm import Linear, LSTMLayer


class RNNpropState(NamedTuple):
    """RNNprop's state for a population ``[n, P]``.

    ``m``, ``v``: the moments ``[n, P]``; ``h1, c1, h2, c2``: LSTM state ``[n, hidden, P]``
    (transposed views of the cell's feature-first tensors, see :mod:`l2o.rules.lstm`);
    ``step``: ``[n]`` int64, the number of steps taken by each instance so far. Floating tensors
    take ``x``'s dtype and device.
    """

    m: Tensor
    v: Tensor
    h1: Tensor
    c1: Tensor
    h2: Tensor
    c2: Tensor
    step: Tensor


def rnnprop_features(
    grad: Tensor,
    m: Tensor,
    v: Tensor,
    step: Tensor,
    beta1: float = 0.95,
    beta2: float = 0.95,
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(features [2, n, P], m, v)`` for gradient ``grad [n, P]`` after ``step [n]`` steps.

    The features are ``[m_tilde, g_tilde]`` with ``m_tilde = m_hat / (sqrt(v_hat) + eps)`` and
    ``g_tilde = g / (sqrt(v_hat) + eps)``, where ``m_hat = m / (1 - beta1^n)``,
    ``v_hat = v / (1 - beta2^n)`` and ``n = step + 1``.
    """
    m = torch.lerp(m, grad, 1.0 - beta1)
    v = torch.lerp(v, grad * grad, 1.0 - beta2)
    n = (step + 1).to(grad.dtype).unsqueeze(-1)
    m_hat = m / (1.0 - beta1**n)
    denom = torch.sqrt(v / (1.0 - beta2**n)) + eps
    return torch.stack([m_hat / denom, grad / denom], dim=0), m, v


class RNNpropRule(LearnedRule):
    """RNNprop as a :class:`~l2o.rules.base.Rule` and an ``nn.Module`` (meta-trainable).

    Args:
        hidden_sizes: the two LSTM widths (20, 20).
        projection_size: width of the ELU input projection (20).
        beta1, beta2: the moments' decay rates (0.95, 0.95).
        eps: added to ``sqrt(v_hat)`` (1e-8).
        output_scale: bound of each step (0.01 in the authors' code; 0.1 in upstream RNNprop).

    ``step`` is differentiable with respect to the weights and also runs under
    ``torch.no_grad()``. All ``n * P`` coordinates are one batch.
    """

    name = "rnnprop"

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (20, 20),
        projection_size: int = 20,
        beta1: float = 0.95,
        beta2: float = 0.95,
        eps: float = 1e-8,
        output_scale: float = 0.01,
    ) -> None:
        super().__init__()
        if len(hidden_sizes) != 2:
            raise ValueError(f"RNNprop has two LSTM layers; got hidden_sizes={list(hidden_sizes)}")
        self.hidden_sizes = (int(hidden_sizes[0]), int(hidden_sizes[1]))
        self.projection_size = int(projection_size)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.eps = float(eps)
        self.output_scale = float(output_scale)
        self.input_projection = Linear(2, self.projection_size)
        self.lstm_1 = LSTMLayer(self.projection_size, self.hidden_sizes[0])
        self.lstm_2 = LSTMLayer(self.hidden_sizes[0], self.hidden_sizes[1])
        self.linear = Linear(self.hidden_sizes[1], 1)

    def settings(self) -> dict[str, Any]:
        return {
            "hidden_sizes": list(self.hidden_sizes),
            "projection_size": self.projection_size,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
            "output_scale": self.output_scale,
        }

    def init(
        self, x: Tensor, layout: Layout | None = None, generator: Generators = None
    ) -> RNNpropState:
        """Zero moments, zero LSTM state and step 0 for population ``x`` ``[n, P]`` (nothing is
        random: ``generator`` is ignored)."""
        n, p = x.shape
        h1s, h2s = self.hidden_sizes
        h1, c1, h2, c2 = (x.new_zeros(size, n, p).transpose(0, 1) for size in (h1s, h1s, h2s, h2s))
        step = torch.zeros(n, dtype=torch.int64, device=x.device)
        return RNNpropState(torch.zeros_like(x), torch.zeros_like(x), h1, c1, h2, c2, step)

    def step(self, grad: Tensor, state: RNNpropState) -> tuple[Tensor, RNNpropState]:
        """``delta [n, P]`` and the new state for gradient ``grad [n, P]``."""
        features, m, v = rnnprop_features(
            grad, state.m, state.v, state.step, self.beta1, self.beta2, self.eps
        )
        h1, c1, h2, c2 = (t.transpose(0, 1) for t in state[2:6])  # feature-first views
        h1, c1 = self.lstm_1(F.elu(self.input_projection(features)), h1, c1)
        h2, c2 = self.lstm_2(h1, h2, c2)
        delta = self.output_scale * torch.tanh(self.linear(h2)[0])
        h1, c1, h2, c2 = (t.transpose(0, 1) for t in (h1, c1, h2, c2))
        return delta, RNNpropState(m, v, h1, c1, h2, c2, state.step + 1)

    def extra_repr(self) -> str:
        return (
            f"hidden_sizes={list(self.hidden_sizes)}, beta1={self.beta1}, beta2={self.beta2}, "
            f"output_scale={self.output_scale}"
        )
