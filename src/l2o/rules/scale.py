"""L2O-Scale: the hierarchical RNN optimizer of Wichrowska et al. (2017), "Learned Optimizers that
Scale and Generalize", with the architecture Chen et al. (2020), "Training Stronger Baselines for
Learning to Optimize", keep unchanged (docs/method.md 1.3).

Why a hierarchy: a coordinatewise RNN (L2O-DM) sees one scalar gradient at a time. L2O-Scale adds
a per-tensor RNN and a global RNN that summarise all coordinates of a tensor and all tensors of the
problem, and feed that context back as extra biases of the coordinatewise RNN, at a small cost.
It also normalises its inputs (RMS-scaled gradients at four timescales) and its output (the update
direction has unit RMS per tensor), and learns a per-coordinate log learning rate, which together
make it less sensitive to the problem's scale.

Per step, for every instance of a population ``[n, P]`` and every coordinate (``K = 4`` gradient
timescales, cell sizes ``(10, 20, 20)``):

1. timescales: input decays ``[d, d^(1/2), d^(1/4), d^(1/8)]`` from the previous step's ``d``;
2. accumulators ``a_i <- (1 - d_i) g + d_i a_i``;
3. mean-squares ``ms_i <- (1 - s) (a_i^2 + 1e-12) + s ms_i`` (``s`` treated as 0 for every
   (instance, tensor, scale) whose ``ms_i`` is all zeros, i.e. on the first step);
4. scaled gradients ``g_i = asinh(a_i / sqrt(ms_i + 1e-16))``;
5. 12 input features ``x``: the 4 ``g_i``, the 3 products ``g_i g_{i+1}``, the 4
   ``log(ms_i + 1e-16)`` minus their mean over ``i``, and ``l - mean(l)`` (mean of the log-lr over
   all coordinates of the instance);
6. the per-parameter GRU (10 units) on ``x`` with the extra bias
   ``Aff_P(h1 of the tensor) + Aff_G(h2)`` split into the reset/update/candidate biases;
7. the per-tensor GRU (20 units) on the mean over the tensor's coordinates of ``[h0', x]`` with
   the extra bias ``Aff(h2)``;
8. direction ``D = h0' . w_upd + g . w_short`` divided by its RMS over the tensor;
9. decays for the next step ``s' = sigmoid(h0' . w_s + b_s)``, ``d' = sigmoid(h0' . w_d + b_d)``;
10. ``lam = l + h0' . w_lr + b_lr`` clipped to ``[-33, max_log_lr]`` with a straight-through
    gradient, ``l' = m l + (1 - m) lam`` with ``m = sigmoid(logit_m)``, ``eta = exp(lam + o)``;
11. the update: the original does ``x <- x - eta D``; this rule returns ``delta = -eta D``
    (the :class:`~l2o.rules.base.Rule` convention ``x <- x + delta``);
12. the global GRU (20 units, no extra bias) on the mean over tensors of the new ``h1``.

8,349 weights (docs/method.md 1.3's table): ``gru0`` 690, ``param_affine`` and ``global_affine`` 630
each, ``gru1`` 2,580, ``layer_affine`` 1,260, ``gru2`` 2,460, ``init_h0/h1/h2`` 10 + 20 + 20,
readouts ``update_weights`` 10, ``scl_decay_*`` 11, ``inp_decay_*`` 11, ``lr_*`` 11,
``grad_shortcut`` 4, ``lr_momentum_logit`` 1, ``stepsize_offset`` 1. Matrices are stored
``[in, out]`` like the original's ``Matrix`` variables.

**Imitation learning** (docs/method.md 5.2). :meth:`ScaleRule.step_with_update` returns the positive
step ``update_step = eta * D`` (the original's sign: ``x <- x - update_step``), which the IL loss
compares with the label ``x_prev - x_teacher``; :meth:`ScaleRule.step` is
``-update_step``. The rule never holds ``x``, so moving the optimizee by the teacher's step
instead (the original's ``mode_mt``) is the caller's choice: apply the teacher's displacement to
``x`` and keep the rule's new state, which was computed from the gradient at the teacher's point.

**Layout of the state** (:class:`ScaleState`): per-coordinate quantities are feature-major,
``[n, features, P]`` (like :mod:`l2o.rules.lstm`, so each feature is a contiguous slab), and the
per-tensor state is ``[n, 20, T]``. Per-tensor sums and the broadcast of per-tensor values back
to the coordinates are GEMMs with the layout's one-hot ``[T, P]`` segment matrix (held in the
state; 15x faster than ``index_add`` on the CPU for mlp-orig), or ``index_add`` /
``index_select`` for layouts with many tensors or parameters (:data:`DENSE_SEGMENT_LIMIT`).
There is no Python loop over tensors or instances in :meth:`step`, no ``.item()`` and no
data-dependent branching: ``torch.compile(rule.step, fullgraph=True)`` traces it whole. (On the
GEMM path a non-finite value in one tensor also turns the other tensors' values NaN, since
``inf * 0`` is NaN; that only happens once a run has diverged.)

**Interpretations of the method (docs/method.md)** (where it leaves room):

* "If a tensor's ms is all zeros, s is treated as 0" is applied per instance, per tensor and per
  timescale ``i`` (the original tests each ``ms_i`` of a variable separately); all timescales
  start at zero together, so this is the same on any trajectory started by :meth:`init`.
* The log-mean-square feature is centred by the mean over the ``K`` timescales of each coordinate.
* The lower clip of the log learning rate is the original's fixed ``-33``; ``max_log_lr`` (33)
  is the upper one.
* The gradient shortcut ``w_short`` is initialised ``N(1/K, (0.1/sqrt(K))^2)``, i.e.
  ``N(0.25, 0.05^2)``.
* The global GRU's input is the mean over tensors of the new ``h1`` (docs/method.md 1.3, step
  12). The
  original TensorFlow code passes only the *last* tensor's ``h1`` (a loop variable used after
  its loop); ``global_input="last"`` reproduces that, the default ``"mean"`` follows
  docs/method.md 1.3.
* Randomness: the initial log learning rates are the only random draw of :meth:`init`. They are
  drawn on the CPU in float64 (so a seed gives the same values on every device and dtype) from the
  global torch RNG, from one ``torch.Generator``, or from one generator per instance. Callers
  that need reproducible runs seed the global RNG or, better, pass per-instance generators (e.g.
  ``l2o.tasks.base.generators(seeds, "optimizer")``): then an instance's state depends only on its
  own generator, and a population behaves exactly like its instances run one by one.
* Without a layout, :meth:`init` treats the whole vector as one tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from l2o.layout import Layout
from l2o.rules.base import LearnedRule
from l2o.rules.segments import segment_state, tensor_sum, to_coordinates

#: The original's lower clip of the log learning rate ("log(min int32) - 1").
MIN_LOG_LR = -33.0
#: Added to ``a_i^2`` in the mean-square update.
MS_EPS = 1e-12
#: Added under every square root and logarithm of a mean square.
RMS_EPS = 1e-16


class ScaleState(NamedTuple):
    """L2O-Scale's state for a population ``[n, P]`` laid out in ``T`` tensors.

    Floating tensors take ``x``'s dtype and device. Per-coordinate fields are feature-major.

    * ``h0`` ``[n, 10, P]``: per-parameter GRU state;
    * ``accum`` ``[n, K, P]``: gradient accumulators ``a_1..a_K``;
    * ``ms`` ``[n, K, P]``: mean squares ``ms_1..ms_K``;
    * ``scl_decay`` ``[n, P]``: the scale decay ``s`` (for the next step's mean squares);
    * ``inp_decay`` ``[n, P]``: the input decay ``d`` (for the next step's accumulators);
    * ``log_lr`` ``[n, P]``: the log learning rate ``l``;
    * ``h1`` ``[n, 20, T]``: per-tensor GRU state;
    * ``h2`` ``[n, 20]``: global GRU state;
    * ``segment_ids`` ``[n, P]`` int64, ``tensor_sizes`` ``[n, T]`` and ``segment_matrix``
      ``[n, T, P]`` (the one-hot matrix of ``segment_ids``, or ``[n, T, 0]`` for layouts above
      :data:`DENSE_SEGMENT_LIMIT`): constants of the layout, built by :meth:`ScaleRule.init`.
      Every row is the same (they are broadcast views); they carry the leading ``n`` only so that
      every field can be indexed per instance.
    """

    h0: Tensor
    accum: Tensor
    ms: Tensor
    scl_decay: Tensor
    inp_decay: Tensor
    log_lr: Tensor
    h1: Tensor
    h2: Tensor
    segment_ids: Tensor
    tensor_sizes: Tensor
    segment_matrix: Tensor


def straight_through_clip(x: Tensor, low: float, high: float) -> Tensor:
    """``clamp(x, low, high)`` in the forward pass, the identity in the backward pass."""
    return x + (x.clamp(low, high) - x).detach()


class Affine(nn.Module):
    """``x @ w + b`` with ``w [in, out]`` initialised ``N(mean, (scale / sqrt(in))^2)`` and
    ``b`` constant (the original's ``utils.affine``)."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        scale: float,
        mean: float = 0.0,
        bias: bool = True,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.output_size = int(output_size)
        self.scale = float(scale)
        self.mean = float(mean)
        self.bias_init = float(bias_init)
        self.w = nn.Parameter(torch.empty(self.input_size, self.output_size))
        self.b = nn.Parameter(torch.empty(self.output_size)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.w, self.mean, self.scale / math.sqrt(self.input_size))
            if self.b is not None:
                self.b.fill_(self.bias_init)

    def forward(self, inputs: Tensor) -> Tensor:
        """Feature-major: ``[n, in, M]`` -> ``[n, out, M]``."""
        w_t = self.w.to(inputs).t()
        if self.b is None:
            return torch.matmul(w_t, inputs)
        n = inputs.shape[0]
        return torch.baddbmm(self.b.to(inputs).view(1, -1, 1), w_t.expand(n, -1, -1), inputs)


class BiasGRUCell(nn.Module):
    """The original's ``BiasGRUCell``: a GRU whose gates take an extra, externally computed bias.

    ``r, u = sigmoid(W_g [x, h] + c_g + b_ru)``, ``c = tanh(W_c [x, r h] + c_c + b_c)``,
    ``h' = u h + (1 - u) c``. ``W_g`` and ``W_c`` are ``N(0, (scale / sqrt(in + H))^2)``, the gate
    bias ``c_g`` starts at ``gate_bias_init`` and the candidate bias ``c_c`` at 0.
    """

    def __init__(
        self, input_size: int, hidden_size: int, scale: float = 0.5, gate_bias_init: float = 2.2
    ) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        rows = self.input_size + self.hidden_size
        self.gates = Affine(rows, 2 * self.hidden_size, scale, bias_init=gate_bias_init)
        self.candidate = Affine(rows, self.hidden_size, scale)

    def forward(self, inputs: Tensor, h: Tensor, bias: Tensor | None = None) -> Tensor:
        """Feature-major: ``inputs [n, in, M]``, ``h [n, H, M]``, ``bias [n, 3H, M or 1]`` (order
        reset, update, candidate) -> the new ``h [n, H, M]``."""
        hidden = self.hidden_size
        gates = self.gates(torch.cat([inputs, h], dim=1))
        if bias is not None:
            gates = gates + bias[:, : 2 * hidden]
        r, u = torch.sigmoid(gates).chunk(2, dim=1)
        cand = self.candidate(torch.cat([inputs, r * h], dim=1))
        if bias is not None:
            cand = cand + bias[:, 2 * hidden :]
        c = torch.tanh(cand)
        return c + u * (h - c)


class ScaleRule(LearnedRule):
    """L2O-Scale as a :class:`~l2o.rules.base.Rule` and an ``nn.Module`` (meta-trainable).

    Args:
        cell_sizes: units of the per-parameter, per-tensor and global GRUs ((10, 20, 20)).
        num_gradient_scales: gradient timescales ``K`` (4); the RNN input has ``3 K`` features.
        init_lr_range: the initial learning rates' range ((1e-6, 1e-2)); see :meth:`init`.
        max_log_lr: upper clip of the log learning rate (33).
        gru_init_scale: GRU weights ``N(0, (scale / sqrt(fan_in))^2)`` (0.5).
        gru_gate_bias_init: the GRUs' reset/update gate bias (2.2).
        affine_init_scale: the same for the three bias affines (0.5).
        readout_init_scale: the same for ``w_upd``, ``w_s``, ``w_d`` (0.5).
        scale_decay_bias_init: ``b_s`` (3.2), input_decay_bias_init: ``b_d`` (2.2).
        lr_momentum_logit_init: ``logit_m`` (3.2), stepsize_offset_init: ``o`` (-1).
        global_input: ``"mean"`` (docs/method.md 1.3: the mean over tensors of the new ``h1``) or
            ``"last"`` (the original code's leaked loop variable: the last tensor's ``h1``).

    ``step`` is differentiable with respect to the weights (and the learned initial states, when
    :meth:`init` ran with gradients enabled) and also runs under ``torch.no_grad()``.
    """

    name = "scale"

    def __init__(
        self,
        cell_sizes: Sequence[int] = (10, 20, 20),
        num_gradient_scales: int = 4,
        init_lr_range: Sequence[float] = (1e-6, 1e-2),
        max_log_lr: float = 33.0,
        gru_init_scale: float = 0.5,
        gru_gate_bias_init: float = 2.2,
        affine_init_scale: float = 0.5,
        readout_init_scale: float = 0.5,
        scale_decay_bias_init: float = 3.2,
        input_decay_bias_init: float = 2.2,
        lr_momentum_logit_init: float = 3.2,
        stepsize_offset_init: float = -1.0,
        global_input: str = "mean",
    ) -> None:
        super().__init__()
        if len(cell_sizes) != 3:
            raise ValueError(f"L2O-Scale has three levels; got cell_sizes={list(cell_sizes)}")
        if int(num_gradient_scales) < 2:
            raise ValueError(f"num_gradient_scales must be at least 2, got {num_gradient_scales}")
        if len(init_lr_range) != 2 or not 0 < init_lr_range[0] <= init_lr_range[1]:
            raise ValueError(
                f"init_lr_range must be (min, max) with 0 < min <= max: {init_lr_range}"
            )
        if global_input not in ("mean", "last"):
            raise ValueError(f"global_input must be 'mean' or 'last', not {global_input!r}")
        self.cell_sizes = tuple(int(c) for c in cell_sizes)
        self.num_gradient_scales = int(num_gradient_scales)
        self.init_lr_range = (float(init_lr_range[0]), float(init_lr_range[1]))
        self.max_log_lr = float(max_log_lr)
        self.gru_init_scale = float(gru_init_scale)
        self.gru_gate_bias_init = float(gru_gate_bias_init)
        self.affine_init_scale = float(affine_init_scale)
        self.readout_init_scale = float(readout_init_scale)
        self.scale_decay_bias_init = float(scale_decay_bias_init)
        self.input_decay_bias_init = float(input_decay_bias_init)
        self.lr_momentum_logit_init = float(lr_momentum_logit_init)
        self.stepsize_offset_init = float(stepsize_offset_init)
        self.global_input = global_input

        c0, c1, c2 = self.cell_sizes
        k = self.num_gradient_scales
        features = self.num_features
        gs, gb, af = self.gru_init_scale, self.gru_gate_bias_init, self.affine_init_scale
        self.gru0 = BiasGRUCell(features, c0, gs, gb)
        self.param_affine = Affine(c1, 3 * c0, af)
        self.global_affine = Affine(c2, 3 * c0, af)
        self.gru1 = BiasGRUCell(c0 + features, c1, gs, gb)
        self.layer_affine = Affine(c2, 3 * c1, af)
        self.gru2 = BiasGRUCell(c1, c2, gs, gb)
        self.init_h0 = nn.Parameter(torch.empty(c0))
        self.init_h1 = nn.Parameter(torch.empty(c1))
        self.init_h2 = nn.Parameter(torch.empty(c2))
        self.update_weights = nn.Parameter(torch.empty(c0))
        self.scl_decay_weights = nn.Parameter(torch.empty(c0))
        self.scl_decay_bias = nn.Parameter(torch.empty(1))
        self.inp_decay_weights = nn.Parameter(torch.empty(c0))
        self.inp_decay_bias = nn.Parameter(torch.empty(1))
        self.lr_weights = nn.Parameter(torch.empty(c0))
        self.lr_bias = nn.Parameter(torch.empty(1))
        self.grad_shortcut = nn.Parameter(torch.empty(k))
        self.lr_momentum_logit = nn.Parameter(torch.empty(()))
        self.stepsize_offset = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    @property
    def num_features(self) -> int:
        """Per-coordinate RNN inputs: ``K`` scaled gradients, ``K - 1`` products, ``K`` log mean
        squares and the relative log learning rate."""
        return 3 * self.num_gradient_scales

    def reset_parameters(self) -> None:
        """docs/method.md 1.3's initialisation (the GRUs and affines initialise themselves)."""
        for module in (self.gru0, self.gru1, self.gru2):
            module.gates.reset_parameters()
            module.candidate.reset_parameters()
        for module in (self.param_affine, self.global_affine, self.layer_affine):
            module.reset_parameters()
        c0 = self.cell_sizes[0]
        k = self.num_gradient_scales
        readout_std = self.readout_init_scale / math.sqrt(c0)
        with torch.no_grad():
            for p in (self.init_h0, self.init_h1, self.init_h2):
                nn.init.uniform_(p, -1.0, 1.0)
            for p in (self.update_weights, self.scl_decay_weights, self.inp_decay_weights):
                nn.init.normal_(p, 0.0, readout_std)
            self.scl_decay_bias.fill_(self.scale_decay_bias_init)
            self.inp_decay_bias.fill_(self.input_decay_bias_init)
            self.lr_weights.zero_()
            self.lr_bias.zero_()
            nn.init.normal_(self.grad_shortcut, 1.0 / k, 0.1 / math.sqrt(k))
            self.lr_momentum_logit.fill_(self.lr_momentum_logit_init)
            self.stepsize_offset.fill_(self.stepsize_offset_init)

    # ------------------------------------------------------------------------------------------
    # Rule interface

    def settings(self) -> dict[str, Any]:
        return {
            "cell_sizes": list(self.cell_sizes),
            "num_gradient_scales": self.num_gradient_scales,
            "init_lr_range": list(self.init_lr_range),
            "max_log_lr": self.max_log_lr,
            "gru_init_scale": self.gru_init_scale,
            "gru_gate_bias_init": self.gru_gate_bias_init,
            "affine_init_scale": self.affine_init_scale,
            "readout_init_scale": self.readout_init_scale,
            "scale_decay_bias_init": self.scale_decay_bias_init,
            "input_decay_bias_init": self.input_decay_bias_init,
            "lr_momentum_logit_init": self.lr_momentum_logit_init,
            "stepsize_offset_init": self.stepsize_offset_init,
            "global_input": self.global_input,
        }

    def init(
        self,
        x: Tensor,
        layout: Layout | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> ScaleState:
        """The initial state for population ``x`` ``[n, P]`` laid out by ``layout``.

        The RNN states are the learned initial vectors (gradients reach them through ``step``
        when this runs with gradients enabled), accumulators, mean squares and decays are 0, and
        each instance's log learning rate is, per coordinate,
        ``U(ln(lr_min) / 2, ln(lr_max) / 2)`` plus one per-tensor offset from the same range
        (``[-13.8, -4.6]`` for the defaults), clipped to ``[-33, max_log_lr]``.

        Args:
            x: the population (only its shape, dtype and device are used).
            layout: the tensors of ``P`` (default: one tensor).
            generator: where the log learning rates are drawn from: ``None`` (the global torch
                RNG, CPU), one generator for the whole population, or one generator per instance
                (instance ``i`` then draws its ``P`` coordinate values and then its ``T`` offsets
                from ``generator[i]`` alone).
        """
        n, p = x.shape
        if layout is None:
            layout = Layout.from_shapes({"x": (p,)})
        if layout.num_params != p:
            raise ValueError(f"layout has {layout.num_params} parameters but x has {p}")
        t = layout.num_tensors
        c0, c1, c2 = self.cell_sizes
        k = self.num_gradient_scales
        segment_ids, tensor_sizes, segment_matrix = segment_state(layout, x)
        log_lr = self._initial_log_lr(n, p, t, layout.segment_ids(), generator).to(x)
        zeros = x.new_zeros(n, p)
        return ScaleState(
            h0=self.init_h0.to(x).view(1, c0, 1).expand(n, c0, p),
            accum=x.new_zeros(n, k, p),
            ms=x.new_zeros(n, k, p),
            scl_decay=zeros,
            inp_decay=zeros.clone(),
            log_lr=log_lr,
            h1=self.init_h1.to(x).view(1, c1, 1).expand(n, c1, t),
            h2=self.init_h2.to(x).view(1, c2).expand(n, c2),
            segment_ids=segment_ids,
            tensor_sizes=tensor_sizes,
            segment_matrix=segment_matrix,
        )

    def _initial_log_lr(
        self,
        n: int,
        p: int,
        t: int,
        segment_ids: Tensor,
        generator: torch.Generator | Sequence[torch.Generator] | None,
    ) -> Tensor:
        """``[n, P]`` float64 on the CPU (or the generators' device): docs/method.md 1.3's initial
        log learning rates."""
        low = math.log(self.init_lr_range[0]) / 2.0
        high = math.log(self.init_lr_range[1]) / 2.0

        def draw(shape: tuple[int, ...], gen: torch.Generator | None) -> Tensor:
            device = gen.device if gen is not None else torch.device("cpu")
            u = torch.rand(shape, generator=gen, dtype=torch.float64, device=device)
            return (low + (high - low) * u).cpu()

        if generator is None or isinstance(generator, torch.Generator):
            coords, offsets = draw((n, p), generator), draw((n, t), generator)
        else:
            gens = list(generator)
            if len(gens) != n:
                raise ValueError(f"give one generator per instance: {len(gens)} for {n}")
            pairs = [(draw((p,), g), draw((t,), g)) for g in gens]
            coords = torch.stack([c for c, _ in pairs])
            offsets = torch.stack([o for _, o in pairs])
        log_lr = coords + offsets[:, segment_ids.cpu()]
        return log_lr.clamp(MIN_LOG_LR, self.max_log_lr)

    def step(self, grad: Tensor, state: ScaleState) -> tuple[Tensor, ScaleState]:
        """``delta = -eta * D`` ``[n, P]`` (apply as ``x <- x + delta``) and the new state."""
        update_step, state = self.step_with_update(grad, state)
        return -update_step, state

    def step_with_update(self, grad: Tensor, state: ScaleState) -> tuple[Tensor, ScaleState]:
        """The positive step ``update_step = eta * D`` ``[n, P]`` (the original's sign: the
        optimizee moves by ``x <- x - update_step``; the imitation loss compares it with
        ``x_prev - x_next`` of the teacher) and the new state."""
        sizes = state.tensor_sizes[0]  # [T]
        k = self.num_gradient_scales
        c0 = self.cell_sizes[0]
        g = grad.unsqueeze(1)  # [n, 1, P]

        # 1-2. Accumulators at K timescales: decays d, d^(1/2), d^(1/4), ...
        decays = [state.inp_decay]
        for _ in range(k - 1):
            decays.append(torch.sqrt(decays[-1]))
        d = torch.stack(decays, dim=1)  # [n, K, P]
        accum = g + d * (state.accum - g)  # (1 - d) g + d a

        # 6 (per-tensor part, gathered to the coordinates together with step 3's mask): the
        # extra GRU bias Aff_P(h1) + Aff_G(h2), and whether each tensor's ms_i is non-zero.
        h2 = state.h2.unsqueeze(-1)  # [n, C2, 1]
        bias0 = self.param_affine(state.h1) + self.global_affine(h2)  # [n, 3 C0, T]
        ms_nonzero = (tensor_sum(state.ms, state) != 0).to(bias0.dtype)  # [n, K, T]
        per_coord = to_coordinates(torch.cat([bias0, ms_nonzero], dim=1), state)
        bias0, ms_nonzero = per_coord[:, : 3 * c0], per_coord[:, 3 * c0 :]

        # 3. Mean squares; s is treated as 0 where a tensor's ms_i is all zeros (first step).
        s = state.scl_decay.unsqueeze(1) * ms_nonzero  # [n, K, P]
        sq = accum * accum + MS_EPS
        ms = sq + s * (state.ms - sq)  # (1 - s) sq + s ms

        # 4-5. Features.
        scaled = torch.asinh(accum * torch.rsqrt(ms + RMS_EPS))  # [n, K, P]
        products = scaled[:, :-1] * scaled[:, 1:]
        log_ms = torch.log(ms + RMS_EPS)
        log_ms = log_ms - log_ms.mean(dim=1, keepdim=True)
        log_lr = state.log_lr
        relative_lr = (log_lr - log_lr.mean(dim=1, keepdim=True)).unsqueeze(1)
        features = torch.cat([scaled, products, log_ms, relative_lr], dim=1)  # [n, 3K, P]

        # 6. Per-parameter GRU.
        h0 = self.gru0(features, state.h0, bias0)  # [n, C0, P]

        # 8-10 (per coordinate). Readouts: direction, next decays, learning rate.
        readout = torch.stack(
            [self.update_weights, self.scl_decay_weights, self.inp_decay_weights, self.lr_weights]
        ).to(h0)  # [4, C0]
        out = torch.matmul(readout, h0)  # [n, 4, P]
        shortcut = torch.matmul(self.grad_shortcut.to(h0).view(1, k), scaled)  # [n, 1, P]
        direction = out[:, :1] + shortcut  # [n, 1, P]

        # 7 and 8's tensor RMS: the per-tensor means of [h0', x] and of the squared direction.
        sums = tensor_sum(torch.cat([h0, features, direction * direction], dim=1), state)
        means = sums / sizes  # [n, C0 + 3K + 1, T]
        h1 = self.gru1(means[:, :-1], state.h1, self.layer_affine(h2))  # [n, C1, T]
        inv_rms = torch.rsqrt(means[:, -1:] + RMS_EPS)  # [n, 1, T]
        direction = (direction * to_coordinates(inv_rms, state))[:, 0]  # [n, P]

        scl_decay = torch.sigmoid(out[:, 1] + self.scl_decay_bias.to(h0))
        inp_decay = torch.sigmoid(out[:, 2] + self.inp_decay_bias.to(h0))
        step_log_lr = log_lr + out[:, 3] + self.lr_bias.to(h0)
        step_log_lr = straight_through_clip(step_log_lr, MIN_LOG_LR, self.max_log_lr)
        momentum = torch.sigmoid(self.lr_momentum_logit.to(h0))
        new_log_lr = step_log_lr + momentum * (log_lr - step_log_lr)  # m l + (1 - m) lam
        update_step = torch.exp(step_log_lr + self.stepsize_offset.to(h0)) * direction

        # 12. Global GRU on the mean over tensors of the new per-tensor states.
        if self.global_input == "mean":
            global_input = h1.mean(dim=-1, keepdim=True)
        else:
            global_input = h1[..., -1:]
        new_h2 = self.gru2(global_input, h2).squeeze(-1)

        new_state = ScaleState(
            h0=h0,
            accum=accum,
            ms=ms,
            scl_decay=scl_decay,
            inp_decay=inp_decay,
            log_lr=new_log_lr,
            h1=h1,
            h2=new_h2,
            segment_ids=state.segment_ids,
            tensor_sizes=state.tensor_sizes,
            segment_matrix=state.segment_matrix,
        )
        return update_step, new_state

    def extra_repr(self) -> str:
        return (
            f"cell_sizes={list(self.cell_sizes)}, num_gradient_scales={self.num_gradient_scales}, "
            f"init_lr_range={list(self.init_lr_range)}, max_log_lr={self.max_log_lr}, "
            f"global_input={self.global_input!r}"
        )
