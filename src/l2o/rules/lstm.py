"""The coordinatewise core shared by L2O-DM and RNNprop: sonnet-1 LSTM layers and a linear readout.

L2O-DM (Andrychowicz et al. 2016, "Learning to learn by gradient descent by gradient descent") and
the authors' RNNprop (Lv, Jiang, Li 2017, as re-implemented by Chen et al. 2020, "Training Stronger
Baselines for Learning to Optimize") apply one small network to every scalar coordinate of the
optimizee: all coordinates of all instances form one batch of ``N = n * P`` rows
(docs/method.md 1.1).

The layers reproduce dm-sonnet 1's ``snt.LSTM`` exactly, because the authors' trained weights
(``../shared/data/paper-checkpoints``) assume it:

* ``z = concat([input, h_prev]) @ w_gates + b_gates`` (input first), split into four blocks of
  ``hidden`` columns in the order **i, j, f, o**;
* ``c = sigmoid(f + 1.0) * c_prev + sigmoid(i) * tanh(j)`` (the forget bias +1 is added at run
  time, never stored);
* ``h = tanh(c) * sigmoid(o)``.

Parameters are named after the sonnet variables so that a module's ``state_dict`` key with ``.``
replaced by ``/`` is the checkpoint key (``lstm_1.w_gates`` <-> ``lstm_1/w_gates``); see
:func:`npz_state_shapes`, :func:`load_npz_state` and :func:`export_npz_state`.

Layout and speed: this is the hot loop of meta-training (``P = 15,910`` coordinates, 20 steps per
unroll, forward and backward). The cell works **feature-first**, on ``[features, n, P]`` tensors
that it views as ``[features, n * P]``: one ``mm`` per layer for the whole population, and each
gate block is a contiguous ``[H, n * P]`` slab, so the elementwise work vectorises. Rules expose
their states as ``[n, H, P]`` (instance first, like ``x``), which are transposed *views* of those
feature-first tensors: no copy either way. The forget bias is folded into the 4H-vector bias. On
the CPU, where ``torch.tanh`` costs about ten sigmoids, ``tanh(a) = 2 sigmoid(2a) - 1`` lets one
sigmoid cover all four gates; on accelerators the plain formulas launch fewer kernels.

Measured for one L2O-DM step, forward + backward, P = 15,910, eager, against a row-major
``[n * P, 4H]`` layout with strided gate chunks and ``torch.tanh``: CPU (one thread, busy shared
machine) 12.7 against 19.0 ms, forward alone 4.0 against 10.2 ms; H200 1.9 against 1.8 ms for one
instance (kernel-launch bound either way), 1.8 against 2.1 ms for 16 instances, and 1.1 against
1.4 ms under ``torch.compile``. There is no data-dependent Python control flow (the device test is
static), so ``torch.compile`` traces the whole step.

:func:`lstm_cell` is the reference formulation. :class:`LSTMLayer` runs the fused step of
:mod:`l2o.rules.fused_lstm` instead (the same values to round-off; a hand-written backward that
recomputes the gates, so an unroll keeps only the states; on the CPU a column-tiled C++ kernel).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from l2o.rules import fused_lstm

# The checkpoint helpers moved to l2o.rules.base (L2O-Scale and the MLP rule use them too); these
# names stay importable from here.
from l2o.rules.base import (  # noqa: F401
    INFO_KEYS,
    NpzStateMixin,
    constructor_kwargs,
    export_npz_state,
    load_npz_state,
    npz_key,
    npz_state_shapes,
)

#: sonnet-1 ``snt.LSTM``'s default forget-gate bias, added to ``f`` at run time.
FORGET_BIAS = 1.0


def truncated_normal_(tensor: Tensor, std: float) -> Tensor:
    """TF's ``truncated_normal_initializer``: N(0, std^2) redrawn outside +-2 std (in place)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def feature_affine(weight_t: Tensor, bias: Tensor, rows: Tensor) -> Tensor:
    """``weight_t @ rows + bias`` for every coordinate of a population, feature-first.

    ``weight_t [out, in]``, ``bias [out]``, ``rows [in, n, P]`` (contiguous) -> ``[out, n, P]``,
    as one ``addmm`` over the ``n * P`` columns.
    """
    c, n, p = rows.shape
    out = torch.addmm(bias.unsqueeze(1), weight_t, rows.reshape(c, n * p))
    return out.view(-1, n, p)


def lstm_cell(
    inputs: Tensor,
    h: Tensor,
    c: Tensor,
    w_gates: Tensor,
    b_gates: Tensor,
    gate_offset: Tensor | None = None,
    gate_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One sonnet-1 LSTM step for every coordinate of a population, feature-first.

    Args:
        inputs: ``[in, n, P]``; ``h``, ``c``: ``[H, n, P]`` (any strides).
        w_gates: ``[in + H, 4H]`` and ``b_gates``: ``[4H]``, gate order i, j, f, o, exactly as
            stored in a checkpoint.
        gate_offset, gate_scale: the constants of :func:`gate_constants` (computed when not
            given; :class:`LSTMLayer` keeps them as buffers on the right device).

    Returns:
        ``(h, c)``, each ``[H, n, P]`` and contiguous:
        ``c = sigmoid(f + 1) * c + sigmoid(i) * tanh(j)``, ``h = tanh(c) * sigmoid(o)``.
    """
    if gate_offset is None or gate_scale is None:
        gate_offset, gate_scale = gate_constants(h.shape[0])
    w = w_gates.to(h)
    b = b_gates.to(h) + gate_offset.to(h)  # the forget bias, folded into the bias vector
    rows = torch.cat([inputs, h], dim=0)
    if h.device.type == "cpu":
        # tanh(a) = 2 sigmoid(2a) - 1, with the 2 of j folded into its weight columns.
        scale = gate_scale.to(h)
        gates = torch.sigmoid(feature_affine((w * scale).t(), b * scale, rows))
        i, j2, f, o = gates.chunk(4, dim=0)
        c = torch.addcmul(f * c - i, i, j2, value=2.0)  # f c + i (2 j2 - 1)
        h = torch.addcmul(-o, torch.sigmoid(2.0 * c), o, value=2.0)  # o (2 sigmoid(2c) - 1)
        return h, c
    i, j, f, o = feature_affine(w.t(), b, rows).chunk(4, dim=0)
    c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(j))
    return torch.tanh(c) * torch.sigmoid(o), c


def gate_constants(hidden: int) -> tuple[Tensor, Tensor]:
    """``[4H]`` vectors in gate order i, j, f, o: the run-time bias (:data:`FORGET_BIAS` on
    ``f``, else 0) and the CPU path's column factor (2 on ``j``, else 1)."""
    offset = torch.zeros(4, hidden)
    offset[2] = FORGET_BIAS
    scale = torch.ones(4, hidden)
    scale[1] = 2.0
    return offset.view(-1), scale.view(-1)


class LSTMLayer(nn.Module):
    """A sonnet-1 LSTM layer with parameters ``w_gates [in + H, 4H]`` and ``b_gates [4H]``.

    Both are initialised from a truncated normal with std ``1 / sqrt(in + H)`` (sonnet-1's
    default for both, so the bias starts non-zero; docs/method.md 1.1). Inputs and state are
    feature-first: ``[in, n, P]`` and ``[H, n, P]`` (see :func:`lstm_cell`).
    """

    def __init__(self, input_size: int, hidden_size: int = 20) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        rows = self.input_size + self.hidden_size
        self.w_gates = nn.Parameter(torch.empty(rows, 4 * self.hidden_size))
        self.b_gates = nn.Parameter(torch.empty(4 * self.hidden_size))
        offset, scale = gate_constants(self.hidden_size)
        # Run-time constants, not checkpoint entries; they follow .to(device, dtype).
        self.register_buffer("gate_offset", offset, persistent=False)
        self.register_buffer("gate_scale", scale, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 1.0 / math.sqrt(self.input_size + self.hidden_size)
        with torch.no_grad():
            truncated_normal_(self.w_gates, std)
            truncated_normal_(self.b_gates, std)

    def forward(self, inputs: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """``(h, c)`` after one step (``[H, n, P]`` each, like ``h``), by the fused cell of
        :mod:`l2o.rules.fused_lstm` (the same values; ``L2O_LSTM=reference`` selects
        :func:`lstm_cell`)."""
        cell = fused_lstm.fused_lstm_cell if fused_lstm.USE_FUSED else lstm_cell
        return cell(inputs, h, c, self.w_gates, self.b_gates, self.gate_offset, self.gate_scale)


class Linear(nn.Module):
    """sonnet-1 ``snt.Linear``: ``y = x @ w + b`` with ``w [in, out]`` (not ``nn.Linear``'s
    ``[out, in]``), ``w`` truncated normal with std ``1 / sqrt(in)`` and ``b = 0``."""

    def __init__(self, input_size: int, output_size: int) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.output_size = int(output_size)
        self.w = nn.Parameter(torch.empty(self.input_size, self.output_size))
        self.b = nn.Parameter(torch.empty(self.output_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            truncated_normal_(self.w, 1.0 / math.sqrt(self.input_size))
            self.b.zero_()

    def forward(self, inputs: Tensor) -> Tensor:
        """``inputs @ w + b`` applied to every coordinate, feature-first: ``[in, n, P]`` ->
        ``[out, n, P]``."""
        return feature_affine(self.w.to(inputs).t(), self.b.to(inputs), inputs)
