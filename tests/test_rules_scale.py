"""L2O-Scale (docs/method.md 1.3): weights, an independent reference of the per-step maths,
populations, state structure, the straight-through clip, gradient flow and a short run on
mlp-orig."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import l2o
from l2o.checkpoint import load_rule_checkpoint, save_rule
from l2o.layout import Layout
from l2o.rules import segments
from l2o.rules.scale import ScaleRule, ScaleState, straight_through_clip
from l2o.tasks import get_task

SHAPES = {"a": (2,), "b": (3,)}
LAYOUT = Layout.from_shapes(SHAPES)

_DATA = os.environ.get("L2O_DATA_DIR")
needs_data = pytest.mark.skipif(
    not _DATA or not (Path(_DATA) / "mnist").is_dir(), reason="MNIST data not available"
)


def perturbed_rule(seed: int = 0) -> ScaleRule:
    """The default rule in float64 with every weight moved a little, so that zero-initialised
    weights (``w_lr``, ``b_lr``) and the biases matter in the comparison."""
    torch.manual_seed(seed)
    rule = ScaleRule().double()
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return rule


# ---------------------------------------------------------------------------------------------
# Weights


def test_weight_count_and_breakdown():
    rule = ScaleRule()
    assert rule.num_weights == 8349

    def count(*names):
        params = dict(rule.named_parameters())
        return sum(p.numel() for k, p in params.items() if k.split(".")[0] in names)

    assert count("gru0") == 690
    assert count("param_affine") == 630
    assert count("global_affine") == 630
    assert count("gru1") == 2580
    assert count("layer_affine") == 1260
    assert count("gru2") == 2460
    assert [count(k) for k in ("init_h0", "init_h1", "init_h2")] == [10, 20, 20]
    assert count("update_weights") == 10
    assert count("scl_decay_weights", "scl_decay_bias") == 11
    assert count("inp_decay_weights", "inp_decay_bias") == 11
    assert count("lr_weights", "lr_bias") == 11
    assert count("grad_shortcut") == 4
    assert count("lr_momentum_logit") == 1
    assert count("stepsize_offset") == 1


def test_initialisation_follows_method():
    torch.manual_seed(0)
    rule = ScaleRule()
    assert torch.all(rule.gru0.gates.b == 2.2) and torch.all(rule.gru2.gates.b == 2.2)
    assert torch.all(rule.gru1.candidate.b == 0)
    assert torch.all(rule.lr_weights == 0) and torch.all(rule.lr_bias == 0)
    assert rule.scl_decay_bias.item() == pytest.approx(3.2)
    assert rule.inp_decay_bias.item() == pytest.approx(2.2)
    assert rule.lr_momentum_logit.item() == pytest.approx(3.2)
    assert rule.stepsize_offset.item() == pytest.approx(-1.0)
    for p in (rule.init_h0, rule.init_h1, rule.init_h2):
        assert p.abs().max() <= 1.0
    # GRU weights N(0, (0.5 / sqrt(fan_in))^2): gru1's gate matrix is 42 x 40.
    w = rule.gru1.gates.w
    assert w.shape == (42, 40)
    assert w.std().item() == pytest.approx(0.5 / math.sqrt(42), rel=0.1)
    assert abs(w.mean().item()) < 0.01
    assert rule.layer_affine.w.std().item() == pytest.approx(0.5 / math.sqrt(20), rel=0.1)


def test_initial_log_lr_range_and_offsets():
    rule = ScaleRule()
    layout = Layout.from_shapes({"a": (400,), "b": (300,)})
    x = torch.zeros(3, 700)
    state = rule.init(x, layout, generator=torch.Generator().manual_seed(1))
    lr = state.log_lr
    assert lr.min() >= math.log(1e-6) - 1e-5 and lr.max() <= math.log(1e-2) + 1e-5
    # Per coordinate U(ln 1e-6 / 2, ln 1e-2 / 2) plus one offset per tensor: each tensor's values
    # span about the width of one draw (4.6) around its own offset.
    half = (math.log(1e-2) - math.log(1e-6)) / 2
    for seg in (lr[:, :400], lr[:, 400:]):
        spread = seg.max(dim=1).values - seg.min(dim=1).values
        assert torch.all(spread <= half + 1e-5) and torch.all(spread > 0.9 * half)
    assert not torch.allclose(lr[0], lr[1])  # each instance its own draw


def test_non_default_settings_survive_a_checkpoint(tmp_path):
    """(The generic round trips for default settings: tests/test_rule_contract.py.)"""
    rule = ScaleRule(global_input="last", max_log_lr=20.0)
    hp = rule.hyperparameters()
    assert hp["num_weights"] == 8349
    save_rule(tmp_path / "best.safetensors", rule, {"note": "test"})
    loaded = load_rule_checkpoint(tmp_path / "best.safetensors")
    assert (loaded.global_input, loaded.max_log_lr) == ("last", 20.0)
    assert loaded.hyperparameters() == hp


# ---------------------------------------------------------------------------------------------
# An independent reference: NumPy, float64, one instance, a Python loop over tensors, row-major
# [coordinates, features] like the original TensorFlow code.


def _np(t):
    return t.detach().double().cpu().numpy()


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _gru(x, h, cell, bias):
    """Rows of x [R, I] and h [R, H]; bias [1 or R, 3H] (reset, update, candidate)."""
    hid = h.shape[1]
    proj = np.concatenate([x, h], 1) @ _np(cell.gates.w) + _np(cell.gates.b)
    r = _sigmoid(proj[:, :hid] + bias[:, :hid])
    u = _sigmoid(proj[:, hid:] + bias[:, hid : 2 * hid])
    cand = np.concatenate([x, r * h], 1) @ _np(cell.candidate.w) + _np(cell.candidate.b)
    c = np.tanh(cand + bias[:, 2 * hid :])
    return u * h + (1 - u) * c


def _aff(x, module):
    return x @ _np(module.w) + _np(module.b)


def reference_state(state: ScaleState, i: int) -> dict:
    """Instance ``i`` of ``state`` as per-tensor NumPy arrays."""
    out = {"h2": _np(state.h2[i])[None, :], "tensors": {}}
    for t, spec in enumerate(LAYOUT.specs):
        sl = slice(spec.offset, spec.stop)
        out["tensors"][spec.name] = {
            "h0": _np(state.h0[i, :, sl]).T,  # [Pt, 10]
            "a": [_np(state.accum[i, k, sl]) for k in range(4)],
            "ms": [_np(state.ms[i, k, sl]) for k in range(4)],
            "s": _np(state.scl_decay[i, sl]),
            "d": _np(state.inp_decay[i, sl]),
            "lr": _np(state.log_lr[i, sl]),
            "h1": _np(state.h1[i, :, t])[None, :],  # [1, 20]
        }
    return out


def reference_step(rule: ScaleRule, grad: np.ndarray, st: dict) -> tuple[np.ndarray, dict]:
    """One step of docs/method.md 1.3 for one instance; returns (eta * D, new state)."""
    mean_lr = np.mean(np.concatenate([ts["lr"] for ts in st["tensors"].values()]))
    h2 = st["h2"]
    w_upd, w_s, w_d, w_lr = (
        _np(rule.update_weights),
        _np(rule.scl_decay_weights),
        _np(rule.inp_decay_weights),
        _np(rule.lr_weights),
    )
    steps, new_tensors = [], {}
    for spec in LAYOUT.specs:
        ts = st["tensors"][spec.name]
        g = grad[spec.offset : spec.stop]
        # 1-2
        decays = [ts["d"]]
        for _ in range(3):
            decays.append(np.sqrt(decays[-1]))
        accum = [g * (1 - dk) + ak * dk for dk, ak in zip(decays, ts["a"], strict=True)]
        # 3
        ms = []
        for ak, mk in zip(accum, ts["ms"], strict=True):
            sd = np.zeros_like(ts["s"]) if np.all(mk == 0) else ts["s"]
            ms.append((1 - sd) * (ak**2 + 1e-12) + sd * mk)
        # 4-5
        gs = [np.arcsinh(ak / np.sqrt(mk + 1e-16)) for ak, mk in zip(accum, ms, strict=True)]
        prods = [gs[k] * gs[k + 1] for k in range(3)]
        lms = [np.log(mk + 1e-16) for mk in ms]
        avg = np.mean(lms, axis=0)
        rel = ts["lr"] - mean_lr
        x = np.stack([*gs, *prods, *[m - avg for m in lms], rel], axis=1)  # [Pt, 12]
        # 6
        bias0 = _aff(ts["h1"], rule.param_affine) + _aff(h2, rule.global_affine)
        h0 = _gru(x, ts["h0"], rule.gru0, bias0)
        # 7
        layer_in = np.mean(np.concatenate([h0, x], 1), axis=0, keepdims=True)
        h1 = _gru(layer_in, ts["h1"], rule.gru1, _aff(h2, rule.layer_affine))
        # 8
        delta = h0 @ w_upd + np.stack(gs, 1) @ _np(rule.grad_shortcut)
        delta = delta / np.sqrt(np.mean(delta**2) + 1e-16)
        # 9
        s_new = _sigmoid(h0 @ w_s + _np(rule.scl_decay_bias))
        d_new = _sigmoid(h0 @ w_d + _np(rule.inp_decay_bias))
        # 10
        lam = np.clip(ts["lr"] + h0 @ w_lr + _np(rule.lr_bias), -33, 33)
        m = _sigmoid(_np(rule.lr_momentum_logit))
        lr_new = m * ts["lr"] + (1 - m) * lam
        eta = np.exp(lam + _np(rule.stepsize_offset))
        steps.append(eta * delta)
        new_tensors[spec.name] = {
            "h0": h0,
            "a": accum,
            "ms": ms,
            "s": s_new,
            "d": d_new,
            "lr": lr_new,
            "h1": h1,
        }
    # 12
    mean_h1 = np.mean(
        np.concatenate([ts["h1"] for ts in new_tensors.values()], 0), 0, keepdims=True
    )
    h2_new = _gru(mean_h1, h2, rule.gru2, np.zeros((1, 3 * h2.shape[1])))
    return np.concatenate(steps), {"h2": h2_new, "tensors": new_tensors}


def assert_state_matches(state: ScaleState, i: int, ref: dict) -> None:
    got = reference_state(state, i)
    np.testing.assert_allclose(got["h2"], ref["h2"], rtol=1e-9, atol=1e-12)
    for name, want in ref["tensors"].items():
        have = got["tensors"][name]
        for key in ("h0", "s", "d", "lr", "h1"):
            np.testing.assert_allclose(have[key], want[key], rtol=1e-9, atol=1e-12, err_msg=key)
        for key in ("a", "ms"):
            np.testing.assert_allclose(
                np.stack(have[key]), np.stack(want[key]), rtol=1e-9, atol=1e-14, err_msg=key
            )


@pytest.mark.parametrize("start", ["init", "mixed"])
def test_two_steps_match_independent_reference(start):
    rule = perturbed_rule()
    x = torch.zeros(2, 5, dtype=torch.float64)
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    state = rule.init(x, LAYOUT, generator=gens)
    if start == "mixed":
        # Non-zero decays and accumulators; instance 0 has tensor "a"'s mean squares all zero
        # (so s is ignored there only), instance 1 tensor "b"'s.
        torch.manual_seed(5)
        ms = torch.rand(2, 4, 5, dtype=torch.float64) + 0.1
        ms[0, :, :2] = 0
        ms[1, :, 2:] = 0
        state = state._replace(
            accum=torch.randn(2, 4, 5, dtype=torch.float64),
            ms=ms,
            scl_decay=torch.rand(2, 5, dtype=torch.float64) * 0.6 + 0.2,
            inp_decay=torch.rand(2, 5, dtype=torch.float64) * 0.6 + 0.2,
        )
    refs = [reference_state(state, i) for i in range(2)]
    torch.manual_seed(6)
    for _ in range(2):
        grad = torch.randn(2, 5, dtype=torch.float64)
        update, state = rule.step_with_update(grad, state)
        for i in range(2):
            want, refs[i] = reference_step(rule, _np(grad[i]), refs[i])
            np.testing.assert_allclose(_np(update[i]), want, rtol=1e-9, atol=1e-15)
            assert_state_matches(state, i, refs[i])
        delta, _ = rule.step(grad, state)
        assert torch.all(delta != 0)
    # The step is the negative of the positive update, with the same next state.
    again = rule.step(grad, state)
    up = rule.step_with_update(grad, state)
    torch.testing.assert_close(again[0], -up[0])
    for a, b in zip(again[1], up[1], strict=True):
        torch.testing.assert_close(a, b)


def test_first_step_ignores_scale_decay_when_ms_is_zero():
    rule = perturbed_rule()
    x = torch.zeros(1, 5, dtype=torch.float64)
    state = rule.init(x, LAYOUT)
    grad = torch.randn(1, 5, dtype=torch.float64)
    _, a = rule.step(grad, state._replace(scl_decay=torch.full((1, 5), 0.9, dtype=torch.float64)))
    _, b = rule.step(grad, state)
    torch.testing.assert_close(a.ms, b.ms)
    expected = grad.unsqueeze(1) ** 2 + 1e-12  # d = 0 as well: a_i = g
    torch.testing.assert_close(a.ms, expected.expand(1, 4, 5))


# ---------------------------------------------------------------------------------------------
# Populations, structure, clip


def test_one_generator_equals_a_one_element_list():
    """(A population equals its seeds run one at a time: tests/test_rule_contract.py.)"""
    rule = ScaleRule()
    layout = Layout.from_shapes({"w": (3, 4), "b": (4,), "v": (2,)})
    x = torch.zeros(1, layout.num_params, dtype=torch.float64)
    single = rule.init(x, layout, generator=[torch.Generator().manual_seed(11)])
    other = rule.init(x, layout, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(single.log_lr, other.log_lr, rtol=0, atol=0)


def test_index_path_equals_dense_path(monkeypatch):
    """Large layouts use index_add / index_select instead of the one-hot GEMMs: same results."""
    rule = perturbed_rule()
    x = torch.zeros(2, 5, dtype=torch.float64)
    dense = rule.init(x, LAYOUT, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(segments, "DENSE_SEGMENT_MAX_TENSORS", 1)
    sparse = rule.init(x, LAYOUT, generator=torch.Generator().manual_seed(0))
    assert dense.segment_matrix.shape == (2, 2, 5) and sparse.segment_matrix.shape == (2, 2, 0)
    torch.manual_seed(1)
    for _ in range(3):
        grad = torch.randn(2, 5, dtype=torch.float64)
        d1, dense = rule.step(grad, dense)
        d2, sparse = rule.step(grad, sparse)
        torch.testing.assert_close(d1, d2, rtol=1e-12, atol=1e-18)
    for name in ("h0", "ms", "log_lr", "h1", "h2"):
        torch.testing.assert_close(getattr(dense, name), getattr(sparse, name))


def test_global_rng_is_reproducible():
    rule = ScaleRule()
    x = torch.zeros(2, 5)
    torch.manual_seed(123)
    a = rule.init(x, LAYOUT).log_lr
    torch.manual_seed(123)
    b = rule.init(x, LAYOUT).log_lr
    c = rule.init(x, LAYOUT).log_lr
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_state_fields_and_shapes():
    """The fields of ScaleState (dtype and device kept: tests/test_rule_contract.py)."""
    dtype = torch.float32
    rule = ScaleRule()
    n, p, t = 2, LAYOUT.num_params, LAYOUT.num_tensors
    x = torch.zeros(n, p, dtype=dtype)
    state = rule.init(x, LAYOUT)
    expected = {
        "h0": (n, 10, p),
        "accum": (n, 4, p),
        "ms": (n, 4, p),
        "scl_decay": (n, p),
        "inp_decay": (n, p),
        "log_lr": (n, p),
        "h1": (n, 20, t),
        "h2": (n, 20),
        "segment_ids": (n, p),
        "tensor_sizes": (n, t),
        "segment_matrix": (n, t, p),
    }
    assert ScaleState._fields == tuple(expected)
    with torch.no_grad():
        for _ in range(3):
            delta, state = rule.step(torch.randn(n, p, dtype=dtype), state)
            assert isinstance(state, ScaleState)
            assert delta.shape == (n, p) and delta.dtype == dtype
            assert torch.isfinite(delta).all()
            for name, shape in expected.items():
                value = getattr(state, name)
                assert tuple(value.shape) == shape, name
                assert value.dtype == (torch.int64 if name == "segment_ids" else dtype), name
                assert value.device == x.device


def test_global_input_last_equals_mean_for_one_tensor():
    torch.manual_seed(0)
    mean_rule = ScaleRule()
    last_rule = ScaleRule(global_input="last")
    last_rule.load_state_dict(mean_rule.state_dict())
    layout = Layout.from_shapes({"w": (5,)})
    x = torch.zeros(1, 5)
    gen = torch.Generator().manual_seed(0)
    s1 = mean_rule.init(x, layout, generator=gen)
    s2 = last_rule.init(x, layout, generator=torch.Generator().manual_seed(0))
    g = torch.randn(1, 5)
    _, s1 = mean_rule.step(g, s1)
    _, s2 = last_rule.step(g, s2)
    torch.testing.assert_close(s1.h2, s2.h2)


def test_straight_through_clip():
    v = torch.tensor([-50.0, -1.0, 0.0, 40.0], requires_grad=True)
    out = straight_through_clip(v, -33.0, 33.0)
    torch.testing.assert_close(out, torch.tensor([-33.0, -1.0, 0.0, 33.0]))
    (grad,) = torch.autograd.grad((out * torch.arange(1.0, 5.0)).sum(), v)
    torch.testing.assert_close(grad, torch.arange(1.0, 5.0))


def test_log_lr_clip_in_the_rule():
    rule = ScaleRule().double()
    x = torch.zeros(1, 5, dtype=torch.float64)
    state = rule.init(x, LAYOUT)
    state = state._replace(log_lr=torch.full((1, 5), 50.0, dtype=torch.float64))
    grad = torch.randn(1, 5, dtype=torch.float64)
    update, new = rule.step_with_update(grad, state)
    direction = update / math.exp(33.0 - 1.0)  # eta = exp(clip(50) + o), w_lr = b_lr = 0
    rms = torch.stack([direction[0, :2].pow(2).mean(), direction[0, 2:].pow(2).mean()])
    torch.testing.assert_close(rms, torch.ones(2, dtype=torch.float64))
    m = torch.sigmoid(torch.tensor(3.2, dtype=torch.float64))
    torch.testing.assert_close(new.log_lr, (m * 50 + (1 - m) * 33).expand(1, 5))
    # Gradient still reaches the learning-rate readout through the clip.
    (g_bias,) = torch.autograd.grad(update.abs().sum(), rule.lr_bias)
    assert g_bias.abs().item() > 0


# ---------------------------------------------------------------------------------------------
# On a real task


@needs_data
def test_short_run_on_mlp_orig_stays_finite():
    torch.manual_seed(0)
    result = l2o.evaluate(ScaleRule(), get_task("mlp-orig"), 200, [0])
    assert result.losses.shape == (1, 200)
    assert np.isfinite(result.losses).all()
    assert result.summary()["diverged_seeds"] == []
    # Untrained L2O-Scale takes small normalised steps: the loss must not blow up.
    assert result.losses[0, -1] < 2 * result.initial_losses[0]
