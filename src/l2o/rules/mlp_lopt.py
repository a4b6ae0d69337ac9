"""MLP-LOpt: the small per-parameter MLP learned optimizer of learned_optimization.

Metz, Freeman, Harrison, Maheswaranathan, Sohl-Dickstein (2022), "Practical tradeoffs between
memory, compute, and performance in learned optimizers" (arXiv:2203.11860), whose baseline
per-parameter MLP ("LOLv2") is ``MLPLOpt`` in ``google/learned_optimization``,
``learned_optimization/learned_optimizers/mlp_lopt.py`` (Apache-2.0); the same model as Metz et
al. (2019), "Understanding and correcting pathologies in the training of learned optimizers"
(arXiv:1810.10180). Written here from that description, in this project's conventions; it is the
fourth learned family and the one that proves the rule contract (:mod:`l2o.rules.base`): one file
plus one line in :mod:`l2o.rules.registry`.

Unlike L2O-DM and RNNprop it has no recurrent cell: all memory is in fixed accumulators, and one
small MLP, shared by every coordinate, maps each coordinate's features to its step. Per step, for
every instance of a population ``[n, P]`` and every coordinate of every tensor (the layout's
segments):

1. momenta at ``K = 6`` decays ``beta = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)``:
   ``m_k <- beta_k m_k + (1 - beta_k) g`` (zero at the start, no bias correction);
2. ``2 + K = 8`` raw features ``[g, p, m_1..m_K]``, ``p`` the parameter value;
3. each feature divided by its root mean square **over the coordinates of its tensor** (per
   instance): ``f / sqrt(mean_tensor(f^2) + 1e-5)`` (upstream's ``_second_moment_normalizer``
   over all axes of a parameter array);
4. 11 features constant over the tensor, the step embedding ``tanh(t / tau - 1)`` for
   ``tau = 1, 3, 10, ..., 1e5`` with ``t`` the number of steps taken before this one;
5. an MLP ``19 -> 32 -> 32 -> 2`` with ReLU between layers (haiku ``hk.nets.MLP``: weights
   truncated normal with std ``1 / sqrt(fan_in)``, biases zero), outputs ``(d, a)``;
6. the step ``d * exp(a * exp_mult) * step_mult`` with ``exp_mult = step_mult = 0.001``; the
   original moves ``p <- p - step``, so this rule returns ``delta = -step``.

1,762 weights: ``layers/0/w`` 19x32 and ``/b`` 32, ``layers/1/w`` 32x32 and ``/b`` 32,
``layers/2/w`` 32x2 and ``/b`` 2 (matrices ``[in, out]``, like haiku's and sonnet's).

**The parameter feature.** :meth:`MLPLOptRule.step` receives only the gradient, so the state keeps
the rule's own copy of ``p``: ``x`` at :meth:`~MLPLOptRule.init`, plus every ``delta`` returned
since. That is exactly the optimizee's ``x`` whenever the caller applies the deltas it is given
(evaluation, meta-training, :class:`l2o.LearnedOptimizer`). Under off-policy imitation the rule is
fed a teacher's gradients and never moves the optimizee, so it sees the point its own steps would
have reached (``mlp-lopt-cl-il`` imitates this way); with ``rule_state="carry"`` a new epoch's
``x`` is not the carried copy (no ``mlp-lopt`` recipe carries the state).

**Training.** Upstream meta-trains it with truncated evolution strategies (PES); here it is
meta-trained like the other families, by backpropagation through truncated unrolls
(:mod:`l2o.training.unroll`). Meta-gradients reach every weight through ``delta`` and, over the
steps of an unroll, through the parameter feature.

**Layout and speed.** Features are feature-first, ``[F, n, P]``, and each layer is one ``mm`` over
the ``n * P`` columns (:mod:`l2o.rules.lstm`'s convention). The step embedding is the same for
every coordinate of an instance, so the first layer applies its 11 columns once per instance, as a
bias, instead of to ``n * P`` copies. Per-tensor means are GEMMs with the layout's one-hot
``[T, P]`` matrix held in the state, or ``index_add`` / ``index_select`` for layouts with many
tensors (the same choice as :mod:`l2o.rules.scale`). No Python loop over tensors or instances, no
data-dependent branching: ``torch.compile`` traces the whole step.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from l2o.layout import Layout
from l2o.rules.base import Generators, LearnedRule
from l2o.rules.lstm import Linear
from l2o.rules.segments import segment_state, tensor_sum, to_coordinates

#: Upstream's momentum decays.
MOMENTUM_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
#: Upstream's step-embedding timescales.
TIME_SCALES = (1, 3, 10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)
#: Added to the per-tensor mean square before the reciprocal square root.
NORMALIZER_EPS = 1e-5


class MLPLOptState(NamedTuple):
    """MLP-LOpt's state for a population ``[n, P]`` laid out in ``T`` tensors.

    * ``param`` ``[n, P]``: the rule's copy of the parameters (the ``p`` feature);
    * ``momenta`` ``[n, K, P]``: the momentum accumulators (a transposed view of feature-first
      ``[K, n, P]`` storage);
    * ``iteration`` ``[n]`` int64: steps taken so far;
    * ``segment_ids`` ``[n, P]`` int64, ``tensor_sizes`` ``[n, T]`` and ``segment_matrix``
      ``[n, T, P]`` (one-hot, or ``[n, T, 0]`` for large layouts): constants of the layout, the
      same in every row (broadcast views), with the leading ``n`` so that every field can be
      indexed per instance.

    Floating fields take ``x``'s dtype and device.
    """

    param: Tensor
    momenta: Tensor
    iteration: Tensor
    segment_ids: Tensor
    tensor_sizes: Tensor
    segment_matrix: Tensor


class MLPLOptRule(LearnedRule):
    """MLP-LOpt as a :class:`~l2o.rules.base.Rule` and an ``nn.Module`` (meta-trainable).

    Args:
        hidden_size: width of the hidden layers (32).
        hidden_layers: number of hidden layers (2).
        exp_mult: scale of the magnitude output inside the exponential (0.001).
        step_mult: scale of the step (0.001).
        decays: the momentum decays (:data:`MOMENTUM_DECAYS`).
        time_scales: the step embedding's timescales (:data:`TIME_SCALES`).

    ``step`` is differentiable with respect to the weights and also runs under
    ``torch.no_grad()``. Nothing in the state is random, so ``init`` ignores ``generator``.
    """

    name = "mlp-lopt"

    def __init__(
        self,
        hidden_size: int = 32,
        hidden_layers: int = 2,
        exp_mult: float = 0.001,
        step_mult: float = 0.001,
        decays: Sequence[float] = MOMENTUM_DECAYS,
        time_scales: Sequence[float] = TIME_SCALES,
    ) -> None:
        super().__init__()
        if int(hidden_size) < 1 or int(hidden_layers) < 1:
            raise ValueError(
                f"hidden_size and hidden_layers must be at least 1, got {hidden_size} and "
                f"{hidden_layers}"
            )
        if not decays or any(not 0.0 <= d < 1.0 for d in decays):
            raise ValueError(f"decays must be a non-empty list of values in [0, 1): {decays}")
        if not time_scales or any(not s > 0 for s in time_scales):
            raise ValueError(f"time_scales must be non-empty and positive: {time_scales}")
        self.hidden_size = int(hidden_size)
        self.hidden_layers = int(hidden_layers)
        self.exp_mult = float(exp_mult)
        self.step_mult = float(step_mult)
        self.decays = tuple(float(d) for d in decays)
        self.time_scales = tuple(float(s) for s in time_scales)
        sizes = [self.num_inputs] + [self.hidden_size] * self.hidden_layers + [2]
        self.layers = nn.ModuleList(Linear(a, b) for a, b in pairwise(sizes))

    @property
    def num_normalized(self) -> int:
        """Features normalised per tensor: gradient, parameter and the ``K`` momenta."""
        return 2 + len(self.decays)

    @property
    def num_inputs(self) -> int:
        """MLP inputs: the normalised features and the step embedding (19 by default)."""
        return self.num_normalized + len(self.time_scales)

    def settings(self) -> dict[str, Any]:
        return {
            "hidden_size": self.hidden_size,
            "hidden_layers": self.hidden_layers,
            "exp_mult": self.exp_mult,
            "step_mult": self.step_mult,
            "decays": list(self.decays),
            "time_scales": list(self.time_scales),
        }

    def init(
        self, x: Tensor, layout: Layout | None = None, generator: Generators = None
    ) -> MLPLOptState:
        """Zero momenta, step 0, and the parameter copy ``x`` for population ``x`` ``[n, P]``
        laid out by ``layout`` (default: one tensor)."""
        n, p = x.shape
        if layout is None:
            layout = Layout.from_shapes({"x": (p,)})
        if layout.num_params != p:
            raise ValueError(f"layout has {layout.num_params} parameters but x has {p}")
        segment_ids, tensor_sizes, segment_matrix = segment_state(layout, x)
        return MLPLOptState(
            param=x.detach().clone(),
            momenta=x.new_zeros(len(self.decays), n, p).transpose(0, 1),
            iteration=torch.zeros(n, dtype=torch.int64, device=x.device),
            segment_ids=segment_ids,
            tensor_sizes=tensor_sizes,
            segment_matrix=segment_matrix,
        )

    def step(self, grad: Tensor, state: MLPLOptState) -> tuple[Tensor, MLPLOptState]:
        """``delta = -d * exp(a * exp_mult) * step_mult`` ``[n, P]`` and the new state."""
        n, p = grad.shape
        k = len(self.decays)
        decays = torch.tensor(self.decays, dtype=grad.dtype, device=grad.device).view(k, 1, 1)
        momenta = decays * state.momenta.transpose(0, 1) + (1.0 - decays) * grad  # [K, n, P]

        # Per-tensor second-moment normalisation of [g, p, m_1..m_K].
        raw = torch.cat([grad.unsqueeze(0), state.param.unsqueeze(0), momenta], dim=0)
        inv_rms = torch.rsqrt(
            tensor_sum(raw * raw, state) / state.tensor_sizes[0] + NORMALIZER_EPS
        )  # [F, n, T]
        features = raw * to_coordinates(inv_rms, state)  # [F, n, P]

        # First layer: the step embedding is one bias per instance.
        t = state.iteration.to(grad.dtype)
        scales = torch.tensor(self.time_scales, dtype=grad.dtype, device=grad.device)
        embedding = torch.tanh(t.unsqueeze(0) / scales.unsqueeze(1) - 1.0)  # [S, n]
        first = self.layers[0]
        w = first.w.to(grad)  # [F + S, H]
        f = self.num_normalized
        bias = torch.addmm(first.b.to(grad).unsqueeze(1), w[f:].t(), embedding)  # [H, n]
        hidden = torch.mm(w[:f].t(), features.reshape(f, n * p)).view(-1, n, p)
        hidden = torch.relu(hidden + bias.unsqueeze(-1))
        for layer in self.layers[1:-1]:
            hidden = torch.relu(layer(hidden))
        direction, magnitude = self.layers[-1](hidden)  # [n, P] each
        delta = -(direction * torch.exp(magnitude * self.exp_mult) * self.step_mult)

        new_state = MLPLOptState(
            param=state.param + delta,
            momenta=momenta.transpose(0, 1),
            iteration=state.iteration + 1,
            segment_ids=state.segment_ids,
            tensor_sizes=state.tensor_sizes,
            segment_matrix=state.segment_matrix,
        )
        return delta, new_state

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, hidden_layers={self.hidden_layers}, "
            f"exp_mult={self.exp_mult}, step_mult={self.step_mult}, "
            f"decays={list(self.decays)}, time_scales={list(self.time_scales)}"
        )
