"""MLP-LOpt (Metz et al. 2022; learned_optimization's mlp_lopt.py): weights, initialisation, and an
independent NumPy reference of the per-step maths, written the way the original is (a loop over
the parameter tensors, row-major ``[coordinates, features]``). The generic contract (dtype,
populations, gradients, round trips) is tests/test_rule_contract.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from l2o.layout import Layout
from l2o.rules import segments
from l2o.rules.mlp_lopt import MLPLOptRule, MLPLOptState

SHAPES = {"w": (3, 4), "b": (4,), "s": (1,)}
LAYOUT = Layout.from_shapes(SHAPES)


def test_weight_count_and_keys():
    rule = MLPLOptRule()
    assert rule.num_inputs == 19
    assert rule.npz_state_shapes() == {
        "layers/0/w": (19, 32),
        "layers/0/b": (32,),
        "layers/1/w": (32, 32),
        "layers/1/b": (32,),
        "layers/2/w": (32, 2),
        "layers/2/b": (2,),
    }
    assert rule.num_weights == 1762
    assert MLPLOptRule(hidden_size=8, hidden_layers=3).num_weights == 20 * 8 + 2 * 9 * 8 + 9 * 2


def test_initialisation_is_haikus():
    """hk.Linear: truncated normal with std 1 / sqrt(fan_in) (cut at 2 std), zero biases."""
    torch.manual_seed(0)
    rule = MLPLOptRule(hidden_size=256)
    for layer in rule.layers:
        std = 1 / math.sqrt(layer.input_size)
        assert torch.all(layer.b == 0)
        assert layer.w.abs().max() <= 2 * std
        assert layer.w.std().item() == pytest.approx(0.88 * std, rel=0.1)  # truncation: 0.88


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="decays"):
        MLPLOptRule(decays=[0.5, 1.0])
    with pytest.raises(ValueError, match="hidden_size"):
        MLPLOptRule(hidden_layers=0)
    with pytest.raises(ValueError, match="layout has 18 parameters but x has 5"):
        MLPLOptRule().init(torch.zeros(1, 5), Layout.from_shapes({"a": (18,)}))


# ---------------------------------------------------------------------------------------------
# The reference


def np_step(weights, params, grads, momenta, iteration, decays, scales, exp_mult, step_mult):
    """One step of the original on one instance: dicts of tensors -> (new params, new momenta)."""
    new_params, new_momenta = {}, {}
    emb = np.tanh(iteration / np.asarray(scales) - 1.0)
    for name in params:
        p, g, m = params[name].reshape(-1), grads[name].reshape(-1), momenta[name]
        m = np.asarray(decays) * m + (1 - np.asarray(decays)) * g[:, None]  # [size, K]
        inp = np.concatenate([g[:, None], p[:, None], m], axis=1)
        inp = inp / np.sqrt(1e-5 + np.mean(inp**2, axis=0, keepdims=True))
        inp = np.concatenate([inp, np.tile(emb, (len(p), 1))], axis=1)
        h = inp
        for i, (w, b) in enumerate(weights):
            h = h @ w + b
            if i < len(weights) - 1:
                h = np.maximum(h, 0.0)
        step = h[:, 0] * np.exp(h[:, 1] * exp_mult) * step_mult
        new_params[name] = (p - step).reshape(params[name].shape)
        new_momenta[name] = m
    return new_params, new_momenta


def perturbed_rule(seed=0, **kwargs):
    torch.manual_seed(seed)
    rule = MLPLOptRule(**kwargs).double()
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return rule


@pytest.mark.parametrize("exp_mult, step_mult", [(0.001, 0.001), (0.5, 0.1)])
def test_steps_match_the_independent_reference(exp_mult, step_mult):
    rule = perturbed_rule(exp_mult=exp_mult, step_mult=step_mult)
    weights = [(layer.w.detach().numpy(), layer.b.detach().numpy()) for layer in rule.layers]
    torch.manual_seed(1)
    x = torch.randn(2, LAYOUT.num_params, dtype=torch.float64)
    state = rule.init(x, LAYOUT)
    steps = 4
    grads = [
        torch.randn(2, LAYOUT.num_params, dtype=torch.float64) * 10.0 ** torch.randint(-3, 2, (1,))
        for _ in range(steps)
    ]
    ours = []
    for g in grads:
        delta, state = rule.step(g, state)
        ours.append(delta)
    for i in range(2):
        params = {k: v[i].numpy() for k, v in LAYOUT.unflatten(x).items()}
        momenta = {k: np.zeros((v.size, 6)) for k, v in params.items()}
        for t, g in enumerate(grads):
            gd = {k: v[i].numpy() for k, v in LAYOUT.unflatten(g).items()}
            new, momenta = np_step(
                weights, params, gd, momenta, t, rule.decays, rule.time_scales, exp_mult, step_mult
            )
            expected = np.concatenate([(new[k] - params[k]).reshape(-1) for k in params])
            np.testing.assert_allclose(ours[t][i].detach().numpy(), expected, rtol=1e-9, atol=1e-15)
            params = new
        np.testing.assert_allclose(
            state.param[i].detach().numpy(),
            np.concatenate([params[k].reshape(-1) for k in params]),
            rtol=1e-12,
            atol=1e-14,
        )
    assert state.iteration.tolist() == [steps, steps]


def test_state_fields_and_the_parameter_copy():
    rule = MLPLOptRule()
    n, p, t = 2, LAYOUT.num_params, LAYOUT.num_tensors
    x = torch.randn(n, p)
    state = rule.init(x, LAYOUT)
    assert MLPLOptState._fields == (
        "param",
        "momenta",
        "iteration",
        "segment_ids",
        "tensor_sizes",
        "segment_matrix",
    )
    assert state.momenta.shape == (n, 6, p) and state.segment_matrix.shape == (n, t, p)
    assert state.tensor_sizes[0].tolist() == [12, 4, 1]
    total = x.clone()
    with torch.no_grad():
        for _ in range(3):
            delta, state = rule.step(torch.randn(n, p), state)
            total = total + delta
    torch.testing.assert_close(state.param, total)
    x[0, 0] = 100.0
    assert state.param[0, 0] != 100.0  # init copies x


def test_index_path_equals_dense_path(monkeypatch):
    rule = perturbed_rule()
    x = torch.randn(2, LAYOUT.num_params, dtype=torch.float64)
    dense = rule.init(x, LAYOUT)
    monkeypatch.setattr(segments, "DENSE_SEGMENT_MAX_TENSORS", 1)
    sparse = rule.init(x, LAYOUT)
    assert sparse.segment_matrix.shape == (2, 3, 0)
    torch.manual_seed(2)
    for _ in range(3):
        grad = torch.randn(2, LAYOUT.num_params, dtype=torch.float64)
        d1, dense = rule.step(grad, dense)
        d2, sparse = rule.step(grad, sparse)
        torch.testing.assert_close(d1, d2, rtol=1e-12, atol=1e-18)


def test_untrained_steps_are_about_step_mult():
    """The direction output is O(1) at initialisation and exp(a * 0.001) is about 1, so the first
    steps are about step_mult (the original's small, safe start)."""
    torch.manual_seed(0)
    rule = MLPLOptRule()
    x = torch.randn(4, LAYOUT.num_params)
    state = rule.init(x, LAYOUT)
    with torch.no_grad():
        delta, _ = rule.step(torch.randn(4, LAYOUT.num_params), state)
    assert 0.01 * rule.step_mult < delta.abs().mean() < 10 * rule.step_mult
