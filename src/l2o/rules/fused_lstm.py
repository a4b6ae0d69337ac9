"""A fused sonnet-1 LSTM step with a hand-written backward that recomputes the gates.

The reference cell (:func:`l2o.rules.lstm.lstm_cell`) is a handful of PyTorch ops; under autograd
each of them keeps its inputs or outputs for the backward pass, so one step of one layer keeps
about ``4H`` gate activations plus several ``[H, N]`` temporaries per coordinate, and a 20-step
unroll of L2O-DM (two layers, ``N = n * P`` coordinates) keeps all of them. This module computes
the same step as one :class:`torch.autograd.Function` that saves only what the unroll keeps anyway
(the layer's input and its old and new states) and, in the backward pass, recomputes the gate
pre-activations with one extra ``addmm`` and the gate activations from them. That is the classic
recompute-instead-of-store trade (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
Cost"): one more small matmul per layer and step for far less memory traffic.

The math is exactly the reference's (same gate order i, j, f, o; forget bias folded into the bias
vector by the caller; on the CPU, ``tanh(a) = 2 sigmoid(2a) - 1`` with the factor 2 of ``j`` folded
into its weight columns, so that one sigmoid covers all four gates), so forward values and
gradients agree with the reference to round-off (tests/test_fused_lstm.py). The elementwise parts
are written as a few PyTorch ops each; under ``torch.compile`` (the default for meta-training and
evaluation) Inductor fuses each of them into one loop, and in eager mode they still run without
autograd bookkeeping.

**On the CPU** the step is a C++ kernel (``fused_lstm_cpu.cpp``, built on first use with the
system's C++ compiler through ``torch.utils.cpp_extension`` and cached in ``TORCH_EXTENSIONS_DIR``,
by default ``~/.cache/torch_extensions``, under a name that carries the instruction set it was
built for, see :data:`ISA_FLAGS`; without ``-ffast-math``, so NaN/inf propagate exactly as in the
reference, see :data:`OPT_FLAGS`): it processes the ``N`` coordinates in column tiles that
stay in the L2 cache, with one BLAS call for a tile's gates and one pass over the tile for their
activations and the state update, forward and backward. It is registered as the custom op
``l2o::lstm_cell_cpu`` so that ``torch.compile`` keeps it as one opaque call. If the build fails
(no compiler), the same op runs the PyTorch formulation below, with one warning. **On other
devices** the :class:`FusedLSTMCell` autograd function of PyTorch ops is used, which Inductor
fuses under ``torch.compile``.

``L2O_LSTM`` (environment, read at import) selects the implementation: ``fused`` (default),
``torch`` (the fused autograd function in PyTorch ops, no C++ build) or ``reference`` (the
reference cell everywhere; benchmarks compare them in one run, see docs/performance.md).
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

#: ``fused`` (default), ``torch`` or ``reference``: see the module docstring.
MODE = os.environ.get("L2O_LSTM", "fused").strip().lower()
if MODE not in ("fused", "torch", "reference"):
    raise ValueError(f"L2O_LSTM must be 'fused', 'torch' or 'reference', not {MODE!r}")
#: Whether rules use a fused cell at all (``L2O_LSTM`` is not ``reference``).
USE_FUSED = MODE != "reference"
#: Columns (coordinates) per tile of the C++ kernel: a tile's ``[4H, tile]`` gates stay in L2.
CPU_TILE = 512


def _gates_pre(wt: Tensor, b: Tensor, x: Tensor, h: Tensor) -> Tensor:
    """``wt @ [x; h] + b`` as ``[4H, N]`` without materialising the concatenation."""
    k = x.shape[0]
    z = torch.addmm(b.unsqueeze(1), wt[:, :k], x)
    return z.addmm_(wt[:, k:], h)


def _forward_cpu(s: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """From ``s = sigmoid(z')`` (``j`` pre-scaled by 2): ``(h', c')``."""
    i, j2, f, o = s.chunk(4, dim=0)
    c_new = torch.addcmul(f * c - i, i, j2, value=2.0)  # f c + i (2 j2 - 1)
    h_new = torch.addcmul(-o, torch.sigmoid(2.0 * c_new), o, value=2.0)  # o (2 sigmoid(2c) - 1)
    return h_new, c_new


def _forward_plain(z: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    i, j, f, o = z.chunk(4, dim=0)
    c_new = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(j))
    return torch.tanh(c_new) * torch.sigmoid(o), c_new


class FusedLSTMCell(torch.autograd.Function):
    """``(h', c') = LSTM(x, h, c)`` on ``[features, N]`` matrices; saves only ``x, h, c, c'``.

    Arguments: ``x [in, N]``, ``h [H, N]``, ``c [H, N]`` (contiguous), ``wt [4H, in + H]`` and
    ``b [4H]`` the *effective* weights (forget bias folded in; on the CPU path also ``j`` scaled
    by 2), and ``sigmoid_tanh`` (the CPU path's formulation).
    """

    @staticmethod
    def forward(ctx, x, h, c, wt, b, sigmoid_tanh: bool):  # type: ignore[override]
        z = _gates_pre(wt, b, x, h)
        if sigmoid_tanh:
            h_new, c_new = _forward_cpu(z.sigmoid_(), c)
        else:
            h_new, c_new = _forward_plain(z, c)
        ctx.sigmoid_tanh = sigmoid_tanh
        ctx.save_for_backward(x, h, c, c_new, wt, b)
        return h_new, c_new

    @staticmethod
    def backward(ctx, dh, dc):  # type: ignore[override]
        x, h, c, c_new, wt, b = ctx.saved_tensors
        z = _gates_pre(wt, b, x, h)
        if ctx.sigmoid_tanh:
            s = z.sigmoid_()
            i, j2, f, o = s.chunk(4, dim=0)
            tc = torch.sigmoid(2.0 * c_new).mul_(2.0).sub_(1.0)
            tj = 2.0 * j2 - 1.0
            slope = s * (1.0 - s)  # d sigmoid(z') / dz'
            slope_i, slope_j, slope_f, slope_o = slope.chunk(4, dim=0)
            slope_j = slope_j * 2.0  # tanh(j) = 2 s_j - 1
        else:
            zi, zj, zf, zo = z.chunk(4, dim=0)
            i, f, o = torch.sigmoid(zi), torch.sigmoid(zf), torch.sigmoid(zo)
            tj = torch.tanh(zj)
            tc = torch.tanh(c_new)
            slope_i, slope_f, slope_o = i * (1.0 - i), f * (1.0 - f), o * (1.0 - o)
            slope_j = 1.0 - tj * tj
        dct = torch.addcmul(dc, dh * o, 1.0 - tc * tc)
        dz = torch.empty_like(z)
        dzi, dzj, dzf, dzo = dz.chunk(4, dim=0)
        torch.mul(dct * tj, slope_i, out=dzi)
        torch.mul(dct * i, slope_j, out=dzj)
        torch.mul(dct * c, slope_f, out=dzf)
        torch.mul(dh * tc, slope_o, out=dzo)
        dx = dh_prev = dc_prev = dwt = db = None
        k = x.shape[0]
        if ctx.needs_input_grad[0]:
            dx = wt[:, :k].t().mm(dz)
        if ctx.needs_input_grad[1]:
            dh_prev = wt[:, k:].t().mm(dz)
        if ctx.needs_input_grad[2]:
            dc_prev = dct * f
        if ctx.needs_input_grad[3]:
            dwt = torch.cat([dz.mm(x.t()), dz.mm(h.t())], dim=1)
        if ctx.needs_input_grad[4]:
            db = dz.sum(dim=1)
        return dx, dh_prev, dc_prev, dwt, db, None


# ---------------------------------------------------------------------------------------------
# The C++ kernel for the CPU, behind a custom op (with the PyTorch formulation as its fallback).

_SOURCE = Path(__file__).with_name("fused_lstm_cpu.cpp")
_build_lock = threading.Lock()
_built: bool | None = None  # None: not tried yet


#: Instruction-set flags per ``torch.backends.cpu.get_cpu_capability()``: only what the CPU
#: running PyTorch is known to have (never ``-march=native``), and the extension's name carries
#: the ISA, so a cache directory shared by machines with different CPUs never loads a library
#: built for another instruction set (an illegal-instruction crash).
ISA_FLAGS = {
    "AVX512": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
}
#: Optimisation flags. Not ``-ffast-math``: its finite-math-only would let the compiler assume no
#: NaN/inf, and meta-training relies on them propagating (a non-finite meta-gradient skips the
#: meta-step; evaluation flags diverged seeds). The kernel source declares glibc's vector ``exp``
#: itself so that the pointwise loops still vectorise (``-fno-math-errno`` allows the call);
#: ``-ffp-contract=fast`` lets ``a += w * x`` be one FMA (gcc's ISO C++ mode turns it off).
#: ``-fopenmp`` makes ``at::parallel_for`` share the tiles among PyTorch's intra-op threads (without
#: it the pragma is ignored and one thread runs them all); the library links the ``libgomp.so.1``
#: PyTorch has already loaded, so both use one thread pool.
OPT_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-fopenmp"]


def isa() -> str:
    """The instruction set the kernel is built for: ``avx512``, ``avx2`` or ``generic``."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "generic"
    cap = torch.backends.cpu.get_cpu_capability()
    return cap.lower() if cap in ISA_FLAGS else "generic"


def build_kernel(
    name: str | None = None,
    cflags: list[str] | None = None,
    namespace: str | None = None,
    openmp: bool = True,
) -> str:
    """Build (or load from the cache) the C++ kernel and register its ops; returns the ops'
    namespace. The defaults are the package's build (``l2o_fused_lstm_cpu_<isa>``); other
    ``name``/``cflags``/``namespace`` build variants for benchmarks. ``openmp=False`` builds
    without ``-fopenmp`` (``..._serial``: one thread runs every tile), for compilers without it."""
    from torch.utils import cpp_extension

    target = isa()
    flags = list(cflags) if cflags is not None else [*OPT_FLAGS, *ISA_FLAGS.get(target.upper(), [])]
    if not openmp:
        flags = [f for f in flags if f != "-fopenmp"]
        name = name or f"l2o_fused_lstm_cpu_{target}_serial"
    if namespace is not None:
        flags.append(f"-DL2O_LSTM_NS={namespace}")
    cpp_extension.load(
        name=name or f"l2o_fused_lstm_cpu_{target}",
        sources=[str(_SOURCE)],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"] if "-fopenmp" in flags else [],
        is_python_module=False,
        verbose=False,
    )
    return namespace or "l2o_fused_lstm"


def cpu_kernel_available() -> bool:
    """Build (once per process; the compiled library is cached on disk) and load the C++ kernel.
    ``False``, with one warning, if that fails or ``L2O_LSTM=torch``."""
    global _built
    if _built is not None:
        return _built
    with _build_lock:
        if _built is None:
            _built = False
            if MODE == "fused":
                try:
                    try:
                        build_kernel()
                    except Exception as err:  # e.g. a compiler without OpenMP (Apple clang)
                        warnings.warn(
                            f"building the fused LSTM kernel with OpenMP failed "
                            f"({type(err).__name__}); building it for one thread",
                            stacklevel=3,
                        )
                        build_kernel(openmp=False)
                    _built = hasattr(torch.ops.l2o_fused_lstm, "fwd")
                except Exception as err:  # no compiler, headers, ...
                    warnings.warn(
                        f"building the fused LSTM kernel failed ({type(err).__name__}: "
                        f"{str(err)[:300]}); using its PyTorch formulation (slower). Set "
                        "L2O_LSTM=torch to skip the build.",
                        stacklevel=3,
                    )
    return bool(_built)


@torch.library.custom_op("l2o::lstm_cell_cpu", mutates_args=())
def lstm_cell_cpu(x: Tensor, h: Tensor, c: Tensor, wt: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The CPU formulation's forward: ``(h', c')`` (see :class:`FusedLSTMCell`)."""
    if cpu_kernel_available():
        return torch.ops.l2o_fused_lstm.fwd(x, h, c, wt, b, CPU_TILE)
    with torch.no_grad():
        h_new, c_new = _forward_cpu(_gates_pre(wt, b, x, h).sigmoid_(), c)
    return h_new, c_new


@lstm_cell_cpu.register_fake
def _(x, h, c, wt, b):
    return torch.empty_like(h), torch.empty_like(h)


@torch.library.custom_op("l2o::lstm_cell_cpu_backward", mutates_args=())
def lstm_cell_cpu_backward(
    x: Tensor, h: Tensor, c: Tensor, c_new: Tensor, wt: Tensor, b: Tensor, dh: Tensor, dc: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients ``(dx, dh, dc, dwt, db)`` of :func:`lstm_cell_cpu`, recomputing the gates."""
    if cpu_kernel_available():
        return torch.ops.l2o_fused_lstm.bwd(x, h, c, c_new, wt, b, dh, dc, CPU_TILE)
    ctx = _Ctx((x, h, c, c_new, wt, b), sigmoid_tanh=True)
    with torch.no_grad():
        dx, dh_prev, dc_prev, dwt, db, _ = FusedLSTMCell.backward(ctx, dh, dc)
    return dx, dh_prev, dc_prev, dwt, db


@lstm_cell_cpu_backward.register_fake
def _(x, h, c, c_new, wt, b, dh, dc):
    return (
        torch.empty_like(x),
        torch.empty_like(h),
        torch.empty_like(h),
        torch.empty_like(wt),
        torch.empty_like(b),
    )


class _Ctx:
    """Stands in for an autograd context to reuse :meth:`FusedLSTMCell.backward`."""

    def __init__(self, saved: tuple[Tensor, ...], sigmoid_tanh: bool) -> None:
        self.saved_tensors = saved
        self.sigmoid_tanh = sigmoid_tanh
        self.needs_input_grad = (True, True, True, True, True, False)


def _setup_context(ctx, inputs, output) -> None:
    x, h, c, wt, b = inputs
    ctx.save_for_backward(x, h, c, output[1], wt, b)


def _backward(ctx, dh, dc):
    x, h, c, c_new, wt, b = ctx.saved_tensors
    dh = torch.zeros_like(h) if dh is None else dh.contiguous()
    dc = torch.zeros_like(h) if dc is None else dc.contiguous()
    return lstm_cell_cpu_backward(x, h, c, c_new, wt, b, dh, dc)


lstm_cell_cpu.register_autograd(_backward, setup_context=_setup_context)


def fused_lstm_cell(
    inputs: Tensor,
    h: Tensor,
    c: Tensor,
    w_gates: Tensor,
    b_gates: Tensor,
    gate_offset: Tensor,
    gate_scale: Tensor,
) -> tuple[Tensor, Tensor]:
    """Drop-in for :func:`l2o.rules.lstm.lstm_cell` (same arguments and results, feature-first
    ``[features, n, P]``), computed by :class:`FusedLSTMCell`."""
    hidden = h.shape[0]
    c_in, n, p = inputs.shape
    w = w_gates.to(h)
    b = b_gates.to(h) + gate_offset.to(h)
    sigmoid_tanh = h.device.type == "cpu"
    if sigmoid_tanh:
        scale = gate_scale.to(h)
        w, b = w * scale, b * scale
    args = (
        inputs.reshape(c_in, n * p).contiguous(),
        h.reshape(hidden, n * p).contiguous(),
        c.reshape(hidden, n * p).contiguous(),
        w.t().contiguous(),
        b.contiguous(),
    )
    if sigmoid_tanh and MODE == "fused":
        h_new, c_new = lstm_cell_cpu(*args)
    else:
        h_new, c_new = FusedLSTMCell.apply(*args, sigmoid_tanh)
    return h_new.view(hidden, n, p), c_new.view(hidden, n, p)


# ---------------------------------------------------------------------------------------------
# L2O-DM's whole step in one kernel, without gradients (evaluation).
