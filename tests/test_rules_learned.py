"""L2O-DM and RNNprop: semantics against NumPy references, the Rule contract, checkpoint I/O, and
parity with the authors' trained weights on MLP-orig (docs/method.md 1.1, 1.2, 6.1, 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from l2o.rules import (
    PAPER_ATTRIBUTION,
    PAPER_CHECKPOINTS,
    DMRule,
    DMState,
    RNNpropRule,
    RNNpropState,
    Rule,
    load_paper_rule,
)
from l2o.rules.dm import LOG_AND_SIGN_EPS, log_and_sign
from l2o.rules.lstm import LSTMLayer
from l2o.rules.paper import CHECKPOINTS_ENV, paper_checkpoint_dir
from l2o.rules.rnnprop import rnnprop_features

DM_SHAPES = {
    "lstm_1/w_gates": (22, 80),
    "lstm_1/b_gates": (80,),
    "lstm_2/w_gates": (40, 80),
    "lstm_2/b_gates": (80,),
    "linear/w": (20, 1),
    "linear/b": (1,),
}
RNNPROP_SHAPES = {
    "input_projection/w": (2, 20),
    "input_projection/b": (20,),
    "lstm_1/w_gates": (40, 80),
    "lstm_1/b_gates": (80,),
    "lstm_2/w_gates": (40, 80),
    "lstm_2/b_gates": (80,),
    "linear/w": (20, 1),
    "linear/b": (1,),
}
RULES = {"dm": DMRule, "rnnprop": RNNpropRule}


def _have_paper_checkpoints() -> bool:
    folder = paper_checkpoint_dir()
    return all((folder / f).is_file() for _, f in PAPER_CHECKPOINTS.values())


needs_paper = pytest.mark.skipif(
    not _have_paper_checkpoints(), reason="the paper's .npz checkpoints are not available"
)


# --------------------------------------------------------------------------------------------
# NumPy references, written from docs/method.md 1.1/1.2 in the row-major [coordinates, features]
# form.


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_lstm(x, h, c, w, b):
    """sonnet-1 snt.LSTM: [i, j, f, o] = split([x, h] @ w + b); forget bias +1."""
    z = np.concatenate([x, h], axis=1) @ w + b
    i, j, f, o = np.split(z, 4, axis=1)
    c = np_sigmoid(f + 1.0) * c + np_sigmoid(i) * np.tanh(j)
    return np.tanh(c) * np_sigmoid(o), c


def np_log_and_sign(g, k=5.0):
    eps = np.finfo(np.float32).eps
    return np.stack(
        [np.maximum(np.log(np.abs(g) + eps) / k, -1.0), np.clip(g * np.exp(k), -1.0, 1.0)], axis=1
    )


def np_weights(rule):
    return {k: v.astype(np.float64) for k, v in rule.export_npz_state().items()}


def np_dm_run(rule, grads):
    """Deltas of L2O-DM for a sequence of gradients [P] (one instance)."""
    w = np_weights(rule)
    p = grads[0].shape[0]
    h1 = c1 = h2 = c2 = np.zeros((p, 20))
    out = []
    for g in grads:
        h1, c1 = np_lstm(np_log_and_sign(g), h1, c1, w["lstm_1/w_gates"], w["lstm_1/b_gates"])
        h2, c2 = np_lstm(h1, h2, c2, w["lstm_2/w_gates"], w["lstm_2/b_gates"])
        out.append(0.01 * (h2 @ w["linear/w"] + w["linear/b"])[:, 0])
    return out


def np_rnnprop_features(grads, beta1=0.95, beta2=0.95, eps=1e-8):
    m = v = np.zeros_like(grads[0])
    out = []
    for t, g in enumerate(grads):
        n = t + 1
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1**n), v / (1 - beta2**n)
        denom = np.sqrt(v_hat) + eps
        out.append(np.stack([m_hat / denom, g / denom], axis=1))
    return out


def np_rnnprop_run(rule, grads):
    w = np_weights(rule)
    p = grads[0].shape[0]
    h1 = c1 = h2 = c2 = np.zeros((p, 20))
    out = []
    for feats in np_rnnprop_features(grads):
        z = feats @ w["input_projection/w"] + w["input_projection/b"]
        proj = np.where(z > 0, z, np.expm1(z))  # ELU
        h1, c1 = np_lstm(proj, h1, c1, w["lstm_1/w_gates"], w["lstm_1/b_gates"])
        h2, c2 = np_lstm(h1, h2, c2, w["lstm_2/w_gates"], w["lstm_2/b_gates"])
        out.append(rule.output_scale * np.tanh(h2 @ w["linear/w"] + w["linear/b"])[:, 0])
    return out


def torch_run(rule, grads, dtype=torch.float64):
    """Deltas of ``rule`` for a sequence of gradients [n, P]."""
    state = rule.init(torch.zeros_like(grads[0], dtype=dtype), None)
    out = []
    for g in grads:
        delta, state = rule.step(g.to(dtype), state)
        out.append(delta)
    return out, state


def random_grads(steps, n, p, seed=0):
    """Gradients over many orders of magnitude (LogAndSign and RNNprop's normalisation)."""
    gen = torch.Generator().manual_seed(seed)
    scale = 10.0 ** torch.empty(n, p).uniform_(-8, 1, generator=gen)
    return [torch.randn(n, p, generator=gen) * scale for _ in range(steps)]


# --------------------------------------------------------------------------------------------
# Structure


def test_weight_counts_and_checkpoint_keys():
    dm, rp = DMRule(), RNNpropRule()
    assert dm.num_weights == sum(p.numel() for p in dm.parameters()) == 5_141
    assert rp.num_weights == sum(p.numel() for p in rp.parameters()) == 6_641
    assert dm.npz_state_shapes() == DM_SHAPES
    assert rp.npz_state_shapes() == RNNPROP_SHAPES
    assert dm.name == "dm" and rp.name == "rnnprop"
    assert isinstance(dm, Rule) and isinstance(rp, Rule)


def test_initialisation_is_sonnets():
    torch.manual_seed(0)
    rule = RNNpropRule()
    for layer, fan in ((rule.lstm_1, 40), (rule.lstm_2, 40)):
        std = 1 / math.sqrt(fan)
        for p in (layer.w_gates, layer.b_gates):
            assert p.abs().max() <= 2 * std + 1e-7  # truncated at 2 std
            assert p.abs().max() > std  # not a uniform or a zero init
        assert abs(layer.w_gates.std().item() - 0.88 * std) < 0.1 * std  # truncated-normal std
    assert torch.all(rule.linear.b == 0) and torch.all(rule.input_projection.b == 0)
    assert rule.linear.w.abs().max() <= 2 / math.sqrt(20) + 1e-7
    dm = DMRule()
    assert dm.lstm_1.w_gates.abs().max() <= 2 / math.sqrt(22) + 1e-7
    assert dm.lstm_1.b_gates.abs().sum() > 0  # sonnet-1 initialises the gate bias too


# --------------------------------------------------------------------------------------------
# Semantics


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_lstm_layer_matches_numpy_sonnet_reference(dtype, tol):
    torch.manual_seed(1)
    layer = LSTMLayer(3, 20).to(dtype)
    with torch.no_grad():  # larger weights than the init, to exercise saturated gates too
        layer.w_gates.mul_(4.0)
        layer.b_gates.mul_(4.0)
    n, p = 2, 7
    x = torch.randn(3, n, p, dtype=dtype) * 2  # feature-first [features, n, P]
    h = torch.randn(20, n, p, dtype=dtype)
    c = torch.randn(20, n, p, dtype=dtype) * 3
    h_new, c_new = layer(x, h, c)
    assert h_new.shape == c_new.shape == (20, n, p)
    w = layer.w_gates.detach().double().numpy()
    b = layer.b_gates.detach().double().numpy()

    def rows(t, k):  # instance k as [P, features]
        return t[:, k].detach().double().numpy().T

    for k in range(n):
        h_ref, c_ref = np_lstm(rows(x, k), rows(h, k), rows(c, k), w, b)
        np.testing.assert_allclose(rows(h_new, k), h_ref, rtol=0, atol=tol)
        np.testing.assert_allclose(rows(c_new, k), c_ref, rtol=0, atol=tol * 10)


def test_lstm_gate_order_and_forget_bias_by_hand():
    """With zero weights the gates are the bias blocks i, j, f, o. b_f = -1 cancels the forget
    bias +1, so the forget gate is exactly 0.5."""
    layer = LSTMLayer(1, 2).double()
    with torch.no_grad():
        layer.w_gates.zero_()
        biases = [0.7, 0.7, 0.3, 0.3, -1.0, -1.0, -0.2, -0.2]
        layer.b_gates.copy_(torch.tensor(biases, dtype=torch.float64))
    c_prev = torch.tensor([[[2.0]], [[-4.0]]], dtype=torch.float64)  # [H, n, P]
    h, c = layer(torch.zeros(1, 1, 1, dtype=torch.float64), torch.zeros_like(c_prev), c_prev)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expect_c = [0.5 * 2.0 + sig(0.7) * math.tanh(0.3), 0.5 * -4.0 + sig(0.7) * math.tanh(0.3)]
    assert c.flatten().tolist() == pytest.approx(expect_c, abs=1e-14)
    assert h.flatten().tolist() == pytest.approx(
        [math.tanh(v) * sig(-0.2) for v in expect_c], abs=1e-14
    )


def test_log_and_sign_known_values():
    g = torch.tensor([0.0, 1e-10, -1e-3, 0.01, 1.0, -100.0], dtype=torch.float64)
    f = log_and_sign(g.view(1, -1))[:, 0]  # [2, P]
    assert f.shape == (2, 6)
    log_001 = math.log(0.01 + LOG_AND_SIGN_EPS) / 5  # -0.92: inside the clamp
    expect_log = [-1.0, -1.0, -1.0, log_001, 2.4e-8, math.log(100) / 5]
    expect_sign = [0.0, 1e-10 * math.exp(5), -1e-3 * math.exp(5), 1.0, 1.0, -1.0]
    assert f[0].tolist() == pytest.approx(expect_log, abs=1e-8)
    assert f[1].tolist() == pytest.approx(expect_sign, rel=1e-12, abs=1e-15)
    # eps is float32's machine epsilon, visible when k is large enough not to clamp log(eps)/k
    assert pytest.approx(1.1920929e-07) == LOG_AND_SIGN_EPS
    zero = log_and_sign(torch.zeros(1, 1, dtype=torch.float64), k=100.0)
    assert zero[0, 0, 0].item() == pytest.approx(math.log(1.1920929e-07) / 100, rel=1e-7)
    # and it agrees with the NumPy reference on random gradients
    grads = random_grads(1, 1, 50)[0].double()
    np.testing.assert_allclose(
        log_and_sign(grads)[:, 0].numpy().T, np_log_and_sign(grads[0].numpy()), atol=1e-12
    )


def test_rnnprop_features_and_bias_correction_over_three_steps():
    grads = random_grads(3, 2, 40, seed=3)
    grads = [g.double() for g in grads]
    m = v = torch.zeros(2, 40, dtype=torch.float64)
    step = torch.zeros(2, dtype=torch.int64)
    ours = []
    for g in grads:
        feats, m, v = rnnprop_features(g, m, v, step)
        step = step + 1
        ours.append(feats)
    for k in range(2):
        ref = np_rnnprop_features([g[k].numpy() for g in grads])
        for t in range(3):
            np.testing.assert_allclose(ours[t][:, k].numpy().T, ref[t], rtol=1e-10, atol=1e-12)
    # step 1 (n = 1): m_hat = g and v_hat = g^2, so both features are sign(g) (up to eps)
    first = ours[0]
    sign = torch.sign(grads[0])
    big = grads[0].abs() > 1e-3  # where eps = 1e-8 moves the ratio by less than 1e-5
    torch.testing.assert_close(first[0][big], sign[big], rtol=0, atol=1e-5)
    torch.testing.assert_close(first[1][big], sign[big], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["dm", "rnnprop"])
def test_rule_matches_numpy_reference_over_steps(kind):
    torch.manual_seed(4)
    rule = RULES[kind]().double()
    grads = random_grads(4, 1, 30, seed=5)
    ours, _ = torch_run(rule, grads)
    reference = np_dm_run if kind == "dm" else np_rnnprop_run
    ref = reference(rule, [g[0].double().numpy() for g in grads])
    for t in range(4):
        np.testing.assert_allclose(ours[t][0].detach().numpy(), ref[t], rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("kind", ["dm", "rnnprop"])
def test_state_fields_shapes_and_bounded_step(kind):
    """The family's own state fields (dtype, device and structure: tests/test_rule_contract.py)."""
    rule = RULES[kind]()
    n, p = 2, 11
    state = rule.init(torch.zeros(n, p, dtype=torch.float64), None)
    assert type(state) is (DMState if kind == "dm" else RNNpropState)
    with torch.no_grad():
        for _ in range(3):
            delta, state = rule.step(torch.randn(n, p, dtype=torch.float64), state)
    assert state.h1.shape == (n, 20, p) and state.h1.dtype == torch.float64
    if kind == "rnnprop":
        assert state.m.shape == (n, p) and state.m.dtype == torch.float64
        assert state.step.dtype == torch.int64 and state.step.tolist() == [3, 3]
        assert delta.abs().max() <= rule.output_scale  # bounded step


@pytest.mark.parametrize("kind", ["dm", "rnnprop"])
def test_other_hidden_sizes(kind):
    rule = RULES[kind](hidden_sizes=(12, 7))
    first_in = 2 if kind == "dm" else 20
    expected = (first_in + 12 + 1) * 48 + (12 + 7 + 1) * 28 + 7 + 1 + (60 if kind != "dm" else 0)
    assert rule.num_weights == expected
    state = rule.init(torch.zeros(3, 5), None)
    delta, state = rule.step(torch.randn(3, 5), state)
    assert delta.shape == (3, 5)
    assert (state.h1.shape, state.c1.shape) == ((3, 12, 5), (3, 12, 5))
    assert (state.h2.shape, state.c2.shape) == ((3, 7, 5), (3, 7, 5))
    assert type(rule).from_hyperparameters(rule.hyperparameters()).hidden_sizes == (12, 7)


@pytest.mark.parametrize("kind", ["dm", "rnnprop"])
def test_no_grad_step_equals_grad_step(kind):
    """Bitwise equal for these two (the contract asks only for agreement up to rounding)."""
    rule = RULES[kind]()
    grads = random_grads(3, 2, 17, seed=9)
    with_grad, _ = torch_run(rule, grads, dtype=torch.float32)
    assert with_grad[-1].requires_grad
    with torch.no_grad():
        without, state = torch_run(rule, grads, dtype=torch.float32)
    assert not without[-1].requires_grad and not state.h2.requires_grad
    for a, b in zip(with_grad, without, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["dm", "rnnprop"])
def test_family_hyperparameters(kind):
    """The family's own settings (the round trips: tests/test_rule_contract.py)."""
    cls = RULES[kind]
    hp = cls(output_scale=0.1).hyperparameters()
    assert hp["model"] == kind and hp["output_scale"] == 0.1 and hp["hidden_sizes"] == [20, 20]
    assert cls.from_hyperparameters(hp).output_scale == 0.1
    if kind == "dm":
        assert hp["k"] == 5.0 and hp["preprocessing"] == "log_and_sign"
        with pytest.raises(ValueError, match="log_and_sign"):
            cls.from_hyperparameters({**hp, "preprocessing": "none"})
    else:
        assert (hp["beta1"], hp["beta2"], hp["eps"]) == (0.95, 0.95, 1e-8)


# --------------------------------------------------------------------------------------------
# The authors' checkpoints


def test_paper_registry_and_attribution():
    assert set(PAPER_CHECKPOINTS) == {
        "paper:dm",
        "paper:dm-aug",
        "paper:dm-il",
        "paper:dm-cl",
        "paper:dm-cl-il",
        "paper:rnnprop",
        "paper:rnnprop-cl-il",
    }
    assert "VITA-Group/L2O-Training-Techniques" in PAPER_ATTRIBUTION
    assert "MIT License" in PAPER_ATTRIBUTION and "Chen" in PAPER_ATTRIBUTION


@needs_paper
@pytest.mark.parametrize("name", sorted(PAPER_CHECKPOINTS))
def test_paper_checkpoint_loads_exactly_and_round_trips(name):
    kind, file_name = PAPER_CHECKPOINTS[name]
    rule = load_paper_rule(name)
    assert isinstance(rule, RULES[kind])
    assert rule.hyperparameters()["weights"] == name
    assert not rule.training
    with np.load(paper_checkpoint_dir() / file_name) as data:
        original = {k: data[k] for k in data.files}
    exported = rule.export_npz_state()
    assert exported.keys() == original.keys()
    for key, value in original.items():
        assert exported[key].dtype == np.float32
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    assert all(p.dtype == torch.float32 for p in rule.parameters())
    # the "paper:" prefix is optional
    short = load_paper_rule(name.removeprefix("paper:"))
    pairs = zip(short.parameters(), rule.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_paper_checkpoint_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(CHECKPOINTS_ENV, str(tmp_path))
    assert paper_checkpoint_dir() == tmp_path
    with pytest.raises(ValueError, match="unknown paper checkpoint"):
        load_paper_rule("paper:nope")
    with pytest.raises(FileNotFoundError) as missing:
        load_paper_rule("paper:dm-cl-il")
    text = str(missing.value)
    assert "dm-cl-il.npz" in text and CHECKPOINTS_ENV in text and "lstm_1/w_gates 22x80" in text

    arrays = {k: np.zeros(s, np.float32) for k, s in DM_SHAPES.items()}
    np.savez(tmp_path / "dm.npz", **{k: v for k, v in arrays.items() if k != "linear/b"})
    with pytest.raises(ValueError, match=r"dm\.npz.*missing keys \['linear/b'\]"):
        load_paper_rule("paper:dm")
    np.savez(tmp_path / "dm.npz", **{**arrays, "lstm_1/w_gates": np.zeros((40, 80), np.float32)})
    with pytest.raises(ValueError, match=r"lstm_1/w_gates \(40, 80\) \(expected \(22, 80\)\)"):
        load_paper_rule("paper:dm")
    (tmp_path / "rnnprop.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match=r"rnnprop\.npz"):
        load_paper_rule("paper:rnnprop")
    # a correct file loads from the overriding folder
    np.savez(tmp_path / "dm.npz", **arrays)
    assert load_paper_rule("paper:dm").linear.w.abs().sum() == 0


def test_load_npz_state_leaves_weights_alone_on_error():
    rule = DMRule()
    before = [p.detach().clone() for p in rule.parameters()]
    bad = {k: np.ones(s, np.float32) for k, s in DM_SHAPES.items()}
    bad["extra/w"] = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"unexpected keys \['extra/w'\]"):
        rule.load_npz_state(bad)
    assert all(torch.equal(a, b) for a, b in zip(before, rule.parameters(), strict=True))


# --------------------------------------------------------------------------------------------
# Parity with the paper: the authors' weights on MLP-orig, test split, one seed
# (docs/method.md 6.1).
#
# Reference values: ../shared/data/paper-checkpoints/README.md, ln of the mean loss over the 100
# steps ending at each step, from one run of unknown seed. Measured with this implementation over
# seeds 0-7 (ln-window at 100 / 500 / 1000 / 2000):
#   dm-cl-il: [-0.49, -0.21] / [-2.25, -2.04] / [-3.09, -2.83] / [-4.30, -3.86]; README -0.37 /
#             -2.22 / -3.03 / -4.12: every seed within 0.26 of it. Seed 0: -0.34/-2.08/-2.83/-3.96.
#   dm:       [-0.98, -0.86] / [-2.21, -1.96] / [-1.56, -1.35] / [-0.75, -0.34]; README -0.93 /
#             -2.08 / -1.71 / -0.97: the same dip at 500, but a faster climb back afterwards
#             (every seed 0.15-0.36 above at 1000, 0.23-0.63 at 2000; float64 and an exact tanh
#             give the same). Seed 0: -0.95/-2.21/-1.53/-0.65.
#   rnnprop-cl-il (no published per-step values): 0.17..0.23 / -1.85..-1.76 / -2.64..-2.49 /
#             -3.95..-3.57.
# Each tolerance covers the spread over those seeds, no more; the shape checks (monotone decrease,
# the dip and climb) are seed-independent.

PARITY_STEPS = 2000


@pytest.fixture
def one_thread():
    """Run a trajectory on one intra-op thread: at P = 15,910 the kernels are too small to gain
    from a second one, and on a busy machine OpenMP threads waiting for each other made these
    runs three to four times slower (measured: 30-40 s against 10 s each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ln_windows(name: str, steps=(100, 500, 1000, 2000)) -> dict[int, float]:
    from l2o.evaluation import evaluate
    from l2o.tasks import get_task

    result = evaluate(load_paper_rule(name), get_task("mlp-orig"), PARITY_STEPS, seeds=[0])
    losses = result.losses[0]
    assert np.isfinite(losses).all()
    return {k: math.log(float(losses[k - 100 : k].mean())) for k in steps}


@pytest.mark.slow
@needs_paper
@pytest.mark.requires_full_data("mnist")
def test_parity_dm_cl_il_with_the_paper(one_thread):
    got = _ln_windows("paper:dm-cl-il")
    expected = {100: -0.37, 500: -2.22, 1000: -3.03, 2000: -4.12}
    for step, value in expected.items():
        assert got[step] == pytest.approx(value, abs=0.3), (step, got)
    assert got[2000] < got[1000] < got[500] < got[100]  # monotone progress


@pytest.mark.slow
@needs_paper
@pytest.mark.requires_full_data("mnist")
def test_parity_plain_dm_dips_then_climbs_back(one_thread):
    got = _ln_windows("paper:dm")
    expected = {100: -0.93, 500: -2.08, 1000: -1.71, 2000: -0.97}
    tolerance = {100: 0.3, 500: 0.3, 1000: 0.4, 2000: 0.7}
    for step, value in expected.items():
        assert got[step] == pytest.approx(value, abs=tolerance[step]), (step, got)
    assert got[500] < got[100] and got[500] < got[1000] < got[2000]  # the dip near 500


@pytest.mark.slow
@needs_paper
@pytest.mark.requires_full_data("mnist")
def test_parity_rnnprop_cl_il_decreases_well_below_zero(one_thread):
    got = _ln_windows("paper:rnnprop-cl-il")
    assert got[2000] < got[1000] < got[500] < got[100]
    assert got[2000] < -3.0, got
