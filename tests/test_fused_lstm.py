"""The fused LSTM step (l2o.rules.fused_lstm) against the reference cell (l2o.rules.lstm.lstm_cell).

Forward values and meta-gradients must agree to round-off over a whole 20-step meta-training unroll
(through ``l2o.training.unroll.unroll``), for populations, in float32 and float64, with and
without gradients; the hand-written backward passes ``gradcheck``.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from l2o.rules import fused_lstm
from l2o.rules.dm import DMRule
from l2o.rules.lstm import gate_constants, lstm_cell
from l2o.rules.rnnprop import RNNpropRule
from l2o.tasks import get_task
from l2o.training.unroll import start_trajectory, unroll

RULES = {"dm": DMRule, "rnnprop": RNNpropRule}


def _use(monkeypatch, mode: str) -> None:
    monkeypatch.setattr(fused_lstm, "MODE", "fused" if mode == "reference" else mode)
    monkeypatch.setattr(fused_lstm, "USE_FUSED", mode != "reference")


def _meta_unroll(monkeypatch, mode, model, n, dtype, task_name="quadratic", length=20):
    """Losses, surrogate and meta-gradient of one ``length``-step unroll with cell ``mode``."""
    _use(monkeypatch, mode)
    torch.manual_seed(0)
    rule = RULES[model]().to(dtype)
    with torch.no_grad():  # larger weights than the init: saturated gates, larger states
        for p in rule.parameters():
            p.mul_(3.0)
    task = get_task(task_name)
    seeds = list(range(n))
    x0 = task.init(seeds, dtype=dtype)
    stream = task.stream(seeds, "train")
    traj = start_trajectory(rule, task, x0, stream)
    surrogate, losses, new = unroll(rule, task, traj, stream, length)
    grads = torch.autograd.grad(surrogate, list(rule.parameters()))
    return surrogate.detach(), losses, new.x.detach(), grads


@pytest.mark.parametrize("model", ["dm", "rnnprop"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["fused", "torch"])
def test_unroll_meta_gradient_matches_reference(monkeypatch, model, n, dtype, mode):
    ref = _meta_unroll(monkeypatch, "reference", model, n, dtype)
    got = _meta_unroll(monkeypatch, mode, model, n, dtype)
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got[1], ref[1], rtol=rtol, atol=0)  # every step's loss
    torch.testing.assert_close(got[2], ref[2], rtol=rtol, atol=rtol * 1e-2)  # final x
    for g, r in zip(got[3], ref[3], strict=True):
        scale = r.abs().max()
        assert scale > 0
        assert (g - r).abs().max() <= rtol * scale, (g - r).abs().max() / scale


@pytest.mark.usefixtures("sample_data")
def test_unroll_on_mnist_mlp_matches_reference(monkeypatch):
    """L2O-DM on the meta-training task itself (15,910 coordinates, several C++ tiles)."""
    ref = _meta_unroll(monkeypatch, "reference", "dm", 1, torch.float32, "mlp-orig", 5)
    got = _meta_unroll(monkeypatch, "fused", "dm", 1, torch.float32, "mlp-orig", 5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=0)
    for g, r in zip(got[3], ref[3], strict=True):
        assert (g - r).abs().max() <= 1e-4 * r.abs().max()


@pytest.mark.parametrize("model", ["dm", "rnnprop"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_grad_steps_match_reference(monkeypatch, model, dtype):
    """Evaluation's use: 20 steps under ``torch.no_grad()`` give the same deltas and states."""
    torch.manual_seed(1)
    rule = RULES[model]().to(dtype)
    grads = [
        torch.randn(3, 1000, dtype=dtype) * 10.0 ** torch.randint(-6, 1, (1,)) for _ in range(20)
    ]
    results = {}
    for mode in ("reference", "fused"):
        _use(monkeypatch, mode)
        state = rule.init(torch.zeros(3, 1000, dtype=dtype))
        deltas = []
        with torch.no_grad():
            for g in grads:
                delta, state = rule.step(g, state)
                deltas.append(delta)
        results[mode] = (torch.stack(deltas), state)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(
        results["fused"][0], results["reference"][0], rtol=tol, atol=tol * 1e-2
    )
    for a, b in zip(results["fused"][1], results["reference"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _cell_args(k=3, hidden=4, n=2, p=5, scale=2.0):
    torch.manual_seed(2)
    x = torch.randn(k, n, p, dtype=torch.float64)
    h = torch.randn(hidden, n, p, dtype=torch.float64)
    c = torch.randn(hidden, n, p, dtype=torch.float64) * 3
    w = torch.randn(k + hidden, 4 * hidden, dtype=torch.float64) * scale
    b = torch.randn(4 * hidden, dtype=torch.float64) * scale
    return [t.requires_grad_(True) for t in (x, h, c, w, b)]


@pytest.mark.parametrize("mode", ["fused", "torch"])
def test_cell_values_and_gradcheck(monkeypatch, mode):
    _use(monkeypatch, mode)
    x, h, c, w, b = _cell_args()
    offset, scale = gate_constants(4)
    offset, scale = offset.double(), scale.double()
    ref = lstm_cell(x, h, c, w, b, offset, scale)
    got = fused_lstm.fused_lstm_cell(x, h, c, w, b, offset, scale)
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-13)

    def cell(*args):
        return fused_lstm.fused_lstm_cell(*args, offset, scale)

    assert torch.autograd.gradcheck(cell, (x, h, c, w, b))


@pytest.mark.parametrize("sigmoid_tanh", [True, False])
def test_torch_formulation_gradcheck_both_formulas(sigmoid_tanh):
    """The autograd function of PyTorch ops, also with the accelerators' plain tanh formulas."""
    x, h, c, w, b = (t.detach().flatten(1) if t.dim() == 3 else t.detach() for t in _cell_args())
    args = [x, h, c, w.t().contiguous(), b]
    args = [t.requires_grad_(True) for t in args]

    def cell(*a):
        return fused_lstm.FusedLSTMCell.apply(*a, sigmoid_tanh)

    assert torch.autograd.gradcheck(cell, tuple(args))


def test_only_one_state_output_used(monkeypatch):
    """A loss through ``h`` alone (``dc`` is None in the backward) still gets exact gradients."""
    _use(monkeypatch, "fused")
    x, h, c, w, b = _cell_args()
    offset, scale = (t.double() for t in gate_constants(4))
    ref = torch.autograd.grad(lstm_cell(x, h, c, w, b, offset, scale)[0].sum(), (x, h, c, w, b))
    got = torch.autograd.grad(
        fused_lstm.fused_lstm_cell(x, h, c, w, b, offset, scale)[0].sum(), (x, h, c, w, b)
    )
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-13)


def test_compiled_step_matches_eager(monkeypatch):
    """``torch.compile`` keeps the custom op as one call (the trainer compiles the step)."""
    _use(monkeypatch, "fused")
    torch.manual_seed(3)
    rule = DMRule()
    grad = torch.randn(2, 700)
    state = rule.init(torch.zeros(2, 700))
    eager = rule.step(grad, state)
    compiled = torch.compile(rule.step, dynamic=False, fullgraph=True)(grad, state)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-7)
    loss_e = eager[0].square().sum()
    loss_c = compiled[0].square().sum()
    ge = torch.autograd.grad(loss_e, list(rule.parameters()))
    gc = torch.autograd.grad(loss_c, list(rule.parameters()))
    for a, r in zip(gc, ge, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("model", ["dm", "rnnprop"])
def test_evaluation_chunks_of_fused_rules_equal_one_piece(monkeypatch, model):
    """``evaluate`` steps fused-cell rules in larger chunks; chunking still changes nothing."""
    import numpy as np

    import l2o.evaluation as ev
    from l2o import evaluate

    _use(monkeypatch, "fused")
    torch.manual_seed(0)
    rule = RULES[model]()
    task = get_task("quadratic")
    assert ev.chunk_coordinates(rule) == ev.FUSED_CHUNK_COORDINATES
    whole = evaluate(rule, task, 15, [0, 1, 2])
    monkeypatch.setattr(ev, "FUSED_CHUNK_COORDINATES", task.num_params)  # one instance each
    pieces = evaluate(rule, task, 15, [0, 1, 2])
    np.testing.assert_allclose(pieces.losses, whole.losses, rtol=1e-5)
    _use(monkeypatch, "reference")
    assert ev.chunk_coordinates(rule) == ev.CHUNK_COORDINATES


def test_failed_build_warns_and_falls_back_to_pytorch(monkeypatch, tmp_path):
    """No compiler (here: no source file): one warning, then the op's PyTorch formulation, which
    gives the reference values and passes gradcheck."""
    _use(monkeypatch, "fused")
    monkeypatch.setattr(fused_lstm, "_SOURCE", tmp_path / "missing.cpp")
    monkeypatch.setattr(fused_lstm, "_built", None)
    with pytest.warns(UserWarning, match="building the fused LSTM kernel failed"):
        assert not fused_lstm.cpu_kernel_available()
    x, h, c, w, b = _cell_args()
    offset, scale = (t.double() for t in gate_constants(4))
    ref = lstm_cell(x, h, c, w, b, offset, scale)
    got = fused_lstm.fused_lstm_cell(x, h, c, w, b, offset, scale)
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-13)

    def cell(*args):
        return fused_lstm.fused_lstm_cell(*args, offset, scale)

    assert torch.autograd.gradcheck(cell, (x, h, c, w, b))


def test_a_compiler_without_openmp_gets_the_one_thread_build(monkeypatch):
    """If the OpenMP build fails (Apple clang has no -fopenmp), the kernel is built again without
    it, with a warning, and used."""
    if not fused_lstm.cpu_kernel_available():
        pytest.skip("the C++ kernel could not be built here")
    _use(monkeypatch, "fused")
    real, calls = fused_lstm.build_kernel, []

    def build(*args, openmp=True, **kwargs):
        calls.append(openmp)
        if openmp:
            raise RuntimeError("g++: error: unrecognized command-line option '-fopenmp'")
        return real()  # the package's build, already cached: nothing compiles in the test

    monkeypatch.setattr(fused_lstm, "build_kernel", build)
    monkeypatch.setattr(fused_lstm, "_built", None)
    with pytest.warns(UserWarning, match="with OpenMP failed .*building it for one thread"):
        assert fused_lstm.cpu_kernel_available()
    assert calls == [True, False]


def _poison(t: Tensor) -> Tensor:
    """``t`` with NaN, +inf and -inf written into a few columns (several tiles, vector lanes and
    the scalar remainder of the C++ loops)."""
    t = t.clone()
    cols = {"nan": [3, 700, 1299], "+inf": [17, 515], "-inf": [40, 1030]}
    values = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}
    for kind, cs in cols.items():
        for col in cs:
            t.view(t.shape[0], -1)[(col * 7) % t.shape[0], col] = values[kind]
    return t


@pytest.mark.parametrize("where", ["x", "h", "c"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_and_inf_propagate_as_in_reference(monkeypatch, where, dtype):
    """The kernel is built without finite-math assumptions: NaN/inf in the input or the state
    give exactly the reference's NaN/inf (forward and every gradient; meta-training skips a
    non-finite meta-gradient and evaluation flags diverged seeds, so they must not vanish)."""
    _use(monkeypatch, "fused")
    assert fused_lstm.cpu_kernel_available()
    torch.manual_seed(5)
    k, hidden, n, p = 2, 20, 1, 1300  # 1300 columns: three tiles of the C++ kernel
    args = {
        "x": torch.randn(k, n, p, dtype=dtype),
        "h": torch.randn(hidden, n, p, dtype=dtype),
        "c": torch.randn(hidden, n, p, dtype=dtype) * 3,
    }
    args[where] = _poison(args[where])
    w = torch.randn(k + hidden, 4 * hidden, dtype=dtype) * 0.5
    b = torch.randn(4 * hidden, dtype=dtype) * 0.5
    offset, scale = (t.to(dtype) for t in gate_constants(hidden))
    dh = torch.randn(hidden, n, p, dtype=dtype)
    dc = torch.randn(hidden, n, p, dtype=dtype)

    def run(cell):
        leaves = [t.clone().requires_grad_(True) for t in (args["x"], args["h"], args["c"], w, b)]
        h_new, c_new = cell(*leaves, offset, scale)
        grads = torch.autograd.grad((h_new * dh).sum() + (c_new * dc).sum(), leaves)
        return (h_new.detach(), c_new.detach(), *grads)

    ref, got = run(lstm_cell), run(fused_lstm.fused_lstm_cell)
    assert not torch.isfinite(ref[0]).all()  # the poison reached the output
    names = ["h'", "c'", "dx", "dh", "dc", "dw", "db"]
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for name, a, r in zip(names, got, ref, strict=True):
        assert torch.equal(torch.isnan(a), torch.isnan(r)), f"{name}: NaN pattern differs"
        assert torch.equal(torch.isposinf(a), torch.isposinf(r)), f"{name}: +inf differs"
        assert torch.equal(torch.isneginf(a), torch.isneginf(r)), f"{name}: -inf differs"
        fin = torch.isfinite(r)
        torch.testing.assert_close(a[fin], r[fin], rtol=tol, atol=tol)
    assert torch.isnan(got[5]).any()  # a NaN column poisons the weight gradient, as it must


@pytest.mark.parametrize("model", ["dm", "rnnprop"])
def test_nonfinite_gradient_gives_nonfinite_step_as_reference(monkeypatch, model):
    """A rule fed a NaN/inf gradient returns the reference's NaN/inf deltas and a non-finite
    meta-gradient (what makes the meta-step skip)."""
    grad = torch.randn(2, 900) * 1e-3
    grad[0, 5], grad[1, 600], grad[1, 601] = float("nan"), float("inf"), float("-inf")
    out = {}
    for mode in ("reference", "fused"):
        _use(monkeypatch, mode)
        torch.manual_seed(0)
        rule = RULES[model]()
        delta, state = rule.step(grad, rule.init(torch.zeros(2, 900)))
        delta2, _ = rule.step(grad.nan_to_num(0.0, 0.0, 0.0), state)
        meta = torch.autograd.grad(delta2.sum(), list(rule.parameters()), allow_unused=True)
        out[mode] = (delta.detach(), delta2.detach(), *(m for m in meta if m is not None))
    for a, r in zip(out["fused"], out["reference"], strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6, equal_nan=True)
    assert not torch.isfinite(out["fused"][2]).all()


def test_float32_exp_of_the_kernel_is_accurate_to_round_off():
    """The kernel's inline float32 exp (inside its sigmoid) against torch over the whole range:
    a cell with one input, weights 1 and bias 0, so h' = o * tanh(i * tanh(j)) for gates = x."""
    assert fused_lstm.cpu_kernel_available()
    x = torch.linspace(-100.0, 100.0, 200_001).unsqueeze(0)
    x = torch.cat([x, torch.tensor([[float("nan"), float("inf"), -float("inf"), 88.7, -87.4]])], 1)
    n = x.shape[1]
    wt = torch.ones(4, 2)  # H = 1: gates i, j, f, o all equal x (j pre-scaled below)
    wt[1] *= 2.0
    h, c = torch.zeros(1, n), torch.zeros(1, n)
    got_h, got_c = torch.ops.l2o_fused_lstm.fwd(x, h, c, wt, torch.zeros(4), fused_lstm.CPU_TILE)
    s = torch.sigmoid(x.double())
    ref_c = s * torch.tanh(x.double())
    ref_h = s * torch.tanh(ref_c)
    assert torch.equal(torch.isnan(got_h), torch.isnan(ref_h))
    fin = torch.isfinite(ref_h)
    assert (got_c[fin].double() - ref_c[fin]).abs().max() < 4e-7
    assert (got_h[fin].double() - ref_h[fin]).abs().max() < 4e-7


@pytest.mark.usefixtures("sample_data")
@pytest.mark.parametrize("model", ["dm", "rnnprop"])
def test_evaluate_on_mlp_matches_reference_cell(monkeypatch, model):
    """``l2o.evaluate`` (compiled, 2 seeds of mlp-orig, 40 steps) with the fused kernels gives the
    losses it gives with the reference cell, to float32 round-off."""
    from l2o import evaluate

    torch.manual_seed(0)
    rule, task = RULES[model](), get_task("mlp-orig")
    res = {}
    for mode in ("reference", "fused"):
        _use(monkeypatch, mode)
        res[mode] = evaluate(rule, task, 40, [0, 1], compile=True)
    rel = abs(res["fused"].losses - res["reference"].losses) / abs(res["reference"].losses)
    assert rel.max() < 1e-5, rel.max()
    print(model, "max relative difference", rel.max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_threads_share_the_tiles_and_change_no_bit(dtype):
    """The CPU kernel shares its column tiles among PyTorch's intra-op threads. Over 2,560 columns
    (5 tiles of 512), with 1, 2 and 3 threads: every per-column output (h, c and the gradients to
    x, h and c) is bitwise the same; the weight and bias gradients, each tile's summed in tile
    order afterwards, agree to round-off (the BLAS may round a tile's product differently when
    it is called from several threads: seen with 3)."""
    if not fused_lstm.cpu_kernel_available():
        pytest.skip("the C++ kernel could not be built here")
    g = torch.Generator().manual_seed(0)
    k, hidden, n = 2, 20, 2560  # L2O-DM's first layer: 2 inputs, 20 units
    x, h, c, cn, dh, dc = (
        torch.randn(rows, n, generator=g, dtype=dtype)
        for rows in (k, hidden, hidden, hidden, hidden, hidden)
    )
    wt = torch.randn(4 * hidden, k + hidden, generator=g, dtype=dtype)
    b = torch.randn(4 * hidden, generator=g, dtype=dtype)
    ops, tile = torch.ops.l2o_fused_lstm, fused_lstm.CPU_TILE
    before, outs = torch.get_num_threads(), []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            fwd = ops.fwd(x, h, c, wt, b, tile)
            bwd = ops.bwd(x, h, c, cn, wt, b, dh, dc, tile)
            outs.append([*fwd, *bwd])
    finally:
        torch.set_num_threads(before)
    assert n > 4 * tile
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    for other in outs[1:]:
        for a, b_ in zip(outs[0][:5], other[:5], strict=True):  # hn, cn, dx, dh_prev, dc_prev
            assert torch.equal(a, b_)
        for a, b_ in zip(outs[0][5:], other[5:], strict=True):  # dwt, db
            assert (a - b_).abs().max() <= tol * a.abs().max()


def test_meta_gradient_with_two_threads_matches_reference(monkeypatch):
    """With two threads (tiles shared out, and PyTorch's own ops threaded) the fused unroll still
    equals the reference cell's to float32 round-off."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ref = _meta_unroll(monkeypatch, "reference", "dm", 2, torch.float32)
        got = _meta_unroll(monkeypatch, "fused", "dm", 2, torch.float32)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=0)  # every step's loss
    for g, r in zip(got[3], ref[3], strict=True):
        assert (g - r).abs().max() <= 1e-4 * r.abs().max()
