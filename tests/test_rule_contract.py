"""The rule contract (l2o.rules.base), checked for every registered family, analytic and learned.

In the manner of learned_optimization's ``smoketest_learned_optimizer`` and optax's shared alias
tests: one parametrized suite that a new family passes by being registered, instead of per-family
copies. Family-specific semantics (paper-checkpoint parity, LogAndSign values, the sonnet LSTM,
L2O-Scale's and MLP-LOpt's references) stay in tests/test_rules_*.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

import l2o
from l2o.checkpoint import build_rule, load_rule_checkpoint, save_rule
from l2o.layout import Layout
from l2o.rules.analytic import AnalyticState
from l2o.rules.base import LearnedRule, Rule
from l2o.rules.registry import ANALYTIC_RULES, LEARNED_RULES, register_rule, rule_families
from l2o.tasks.base import generators

ALL = rule_families()
LEARNED = list(LEARNED_RULES)
LAYOUT = Layout.from_shapes({"w": (3, 4), "b": (4,), "v": (2,)})
P = LAYOUT.num_params


def make(name: str, seed: int = 0):
    """The family's default rule; learned weights seeded and moved off their initial values, so
    that zero-initialised weights (biases, L2O-Scale's learning-rate readout) matter."""
    if name in ANALYTIC_RULES:
        return ANALYTIC_RULES[name]()
    torch.manual_seed(seed)
    rule = LEARNED_RULES[name]()
    with torch.no_grad():
        for p in rule.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return rule


def grads(steps: int, n: int, seed: int = 1, dtype=torch.float32) -> list[torch.Tensor]:
    """Gradients over several orders of magnitude."""
    gen = torch.Generator().manual_seed(seed)
    scale = 10.0 ** torch.empty(n, P, dtype=torch.float64).uniform_(-4, 1, generator=gen)
    return [
        (torch.randn(n, P, generator=gen, dtype=torch.float64) * scale).to(dtype)
        for _ in range(steps)
    ]


def tensors(state) -> list[torch.Tensor]:
    """Every tensor of a state (an analytic rule's mirrored parameter and its optimizer slots)."""
    if isinstance(state, AnalyticState):
        slots = [v for s in state.optimizer.state.values() for v in s.values()]
        return [state.param, *(v for v in slots if isinstance(v, torch.Tensor))]
    return [t for t in tree_flatten(state)[0] if isinstance(t, torch.Tensor)]


def per_instance(state, n: int) -> list[torch.Tensor]:
    """The state's tensors that carry the population dimension first."""
    return [t for t in tensors(state) if t.dim() > 0 and t.shape[0] == n]


def run(rule, x, gs, gens=None):
    state = rule.init(x, LAYOUT, generator=gens)
    deltas = []
    for g in gs:
        delta, state = rule.step(g, state)
        deltas.append(delta)
    return deltas, state


def test_registry_lists_every_family():
    assert ALL[:4] == ["adam", "rmsprop", "sgd", "nag"]
    assert set(LEARNED) >= {"dm", "rnnprop", "scale", "mlp-lopt"}
    for name, cls in LEARNED_RULES.items():
        assert issubclass(cls, LearnedRule) and cls.name == name
        assert isinstance(cls(), Rule)
    assert l2o.checkpoint.model_classes() == LEARNED_RULES


def test_register_rule_refuses_a_taken_or_missing_name():
    class Nameless(LearnedRule):
        pass

    class Clash(LearnedRule):
        name = "dm"

    with pytest.raises(ValueError, match="class attribute `name`"):
        register_rule(Nameless)
    with pytest.raises(ValueError, match="already registered"):
        register_rule(Clash)
    assert register_rule(LEARNED_RULES["dm"]) is LEARNED_RULES["dm"]  # idempotent


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_structure_dtype_and_device_are_kept(name, dtype):
    """Float32 weights and a population in ``dtype``: state and steps follow the population."""
    rule = make(name)
    n = 2
    x = torch.randn(n, P, dtype=dtype)
    state = rule.init(x, LAYOUT, generator=generators([0, 1], "optimizer"))
    _, spec = tree_flatten(state)

    def signature(s):
        return [
            (t.shape, t.dtype if t.is_floating_point() else "int", t.device) for t in tensors(s)
        ]

    for t in tensors(state):
        assert t.dtype == dtype or not t.is_floating_point()
        assert t.device == x.device
    first = None  # torch.optim creates an analytic rule's slots on its first step
    with torch.no_grad():
        for g in grads(3, n, dtype=dtype):
            delta, state = rule.step(g, state)
            assert tree_flatten(state)[1] == spec
            first = first or signature(state)
            assert signature(state) == first
            # (torch.optim keeps its step counter as a float32 scalar: counters are exempt)
            assert all(
                t.dtype == dtype for t in tensors(state) if t.is_floating_point() and t.dim()
            )
            assert delta.shape == (n, P) and delta.dtype == dtype and delta.device == x.device
            assert torch.isfinite(delta).all()
    if name in LEARNED:
        assert signature(rule.init(x, LAYOUT, generator=generators([0, 1], "optimizer"))) == first


@pytest.mark.parametrize("name", ALL)
def test_float64_is_computed_in_float64(name):
    """A float64 population with float32 weights runs exactly as with float64 weights, and not
    as a float32 run cast up."""
    x = torch.randn(2, P, dtype=torch.float64)
    gs = grads(4, 2, dtype=torch.float64)
    gens = lambda: generators([0, 1], "optimizer")  # noqa: E731
    with torch.no_grad():
        mixed, _ = run(make(name), x, gs, gens())
        wide = make(name)
        if isinstance(wide, nn.Module):
            wide = wide.double()
        exact, _ = run(wide, x, gs, gens())
        single, _ = run(make(name), x.float(), [g.float() for g in gs], gens())
    for a, b in zip(mixed, exact, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert not torch.equal(mixed[-1].float(), single[-1])
    torch.testing.assert_close(mixed[-1].float(), single[-1], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_population_of_three_seeds_equals_each_seed_alone(name):
    rule = make(name)
    if isinstance(rule, nn.Module):
        rule = rule.double()
    seeds = [10, 11, 12]
    x = torch.randn(3, P, dtype=torch.float64)
    gs = grads(5, 3, dtype=torch.float64)
    with torch.no_grad():
        together, state = run(rule, x, gs, generators(seeds, "optimizer"))
        for i, seed in enumerate(seeds):
            alone, single = run(
                rule, x[i : i + 1], [g[i : i + 1] for g in gs], generators([seed], "optimizer")
            )
            for a, b in zip(alone, together, strict=True):
                torch.testing.assert_close(a, b[i : i + 1], rtol=1e-10, atol=1e-15)
            for a, b in zip(per_instance(single, 1), per_instance(state, 3), strict=True):
                torch.testing.assert_close(a, b[i : i + 1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ALL)
def test_steps_with_and_without_autograd_agree(name):
    """The same steps with and without a graph; learned steps carry one only with autograd on.
    (Equal up to summation order: ``torch.matmul`` may fold batched products differently when
    an operand requires grad, as in L2O-Scale's readout. L2O-DM and RNNprop are bitwise equal:
    tests/test_rules_learned.py.)"""
    rule = make(name)
    x = torch.randn(2, P)
    gs = grads(3, 2)
    with_grad, _ = run(rule, x, gs, generators([0, 1], "optimizer"))
    if name in LEARNED:
        assert with_grad[-1].requires_grad
    with torch.no_grad():
        without, state = run(rule, x, gs, generators([0, 1], "optimizer"))
    assert not without[-1].requires_grad
    if name in LEARNED:
        assert not any(t.requires_grad for t in tensors(state))
    for a, b in zip(with_grad, without, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("name", LEARNED)
def test_gradient_reaches_every_weight_through_three_steps(name):
    rule = make(name)
    target = torch.randn(2, P)
    x = torch.randn(2, P)
    state = rule.init(x, LAYOUT, generator=generators([0, 1], "optimizer"))
    meta_loss = 0.0
    for _ in range(3):
        grad = (2 * (x - target)).detach()  # the caller detaches the gradient
        delta, state = rule.step(grad, state)
        x = x + delta
        meta_loss = meta_loss + ((x - target) ** 2).sum()
    names, params = zip(*rule.named_parameters(), strict=True)
    grads_ = torch.autograd.grad(meta_loss, params, allow_unused=True)
    for key, g in zip(names, grads_, strict=True):
        assert g is not None, key
        assert torch.isfinite(g).all(), key
        assert g.abs().sum() > 0, key


@pytest.mark.parametrize("name", LEARNED)
def test_hyperparameters_round_trip(name):
    rule = make(name)
    hp = rule.hyperparameters()
    assert json.loads(json.dumps(hp)) == hp
    assert hp["model"] == name and hp["num_weights"] == rule.num_weights
    assert rule.num_weights == sum(p.numel() for p in rule.parameters())
    cls = type(rule)
    rebuilt = cls.from_hyperparameters(hp)
    assert type(rebuilt) is cls and rebuilt.hyperparameters() == hp
    assert type(build_rule(name, hp)) is cls
    other = next(k for k in LEARNED if k != name)
    with pytest.raises(ValueError, match="model"):
        cls.from_hyperparameters({**hp, "model": other})
    rule.weights_source = "test:source"
    assert rule.hyperparameters()["weights"] == "test:source"
    assert cls.from_hyperparameters(rule.hyperparameters()).weights_source is None


@pytest.mark.parametrize("name", ANALYTIC_RULES)
def test_analytic_hyperparameters_are_json(name):
    hp = make(name).hyperparameters()
    assert json.loads(json.dumps(hp)) == hp and "lr" in hp


@pytest.mark.parametrize("name", LEARNED)
def test_checkpoint_and_npz_round_trips(name, tmp_path):
    rule = make(name)
    save_rule(tmp_path / "best.safetensors", rule, {"note": "contract"})
    loaded = load_rule_checkpoint(tmp_path / "best.safetensors")
    assert type(loaded) is type(rule)
    assert loaded.hyperparameters() == rule.hyperparameters()
    assert loaded.card["note"] == "contract" and loaded.card["model"] == name
    for (k, p), (k2, q) in zip(rule.named_parameters(), loaded.named_parameters(), strict=True):
        assert k == k2 and torch.equal(p, q)
    x, gs = torch.randn(2, P), grads(3, 2)
    with torch.no_grad():
        a, _ = run(rule, x, gs, generators([0, 1], "optimizer"))
        b, _ = run(loaded, x, gs, generators([0, 1], "optimizer"))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    fresh = type(rule)()
    fresh.load_npz_state(rule.export_npz_state())
    assert set(rule.export_npz_state()) == set(rule.npz_state_shapes())
    for p, q in zip(rule.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ALL)
def test_learned_optimizer_steps_a_module_like_the_rule(name):
    """``l2o.LearnedOptimizer`` on a tiny ``nn.Module`` moves it by exactly the rule's steps on
    the flattened parameters."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    inputs, targets = torch.randn(8, 3), torch.randn(8, 2)
    names = [k for k, _ in net.named_parameters()]
    layout = Layout.from_shapes([(k, tuple(p.shape)) for k, p in net.named_parameters()])

    def flat() -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).unsqueeze(0)

    rule = make(name)
    x = x0 = flat()
    torch.manual_seed(5)  # L2O-Scale draws its initial learning rates from the global RNG here
    state = rule.init(x, layout)
    for _ in range(2):
        x = x.detach().requires_grad_(True)
        params = {k: v[0] for k, v in zip(names, layout.unflatten(x).values(), strict=True)}
        out = torch.func.functional_call(net, params, (inputs,))
        (grad,) = torch.autograd.grad(nn.functional.mse_loss(out, targets), x)
        with torch.no_grad():
            delta, state = rule.step(grad, state)
        x = x.detach() + delta

    opt = l2o.LearnedOptimizer(net.parameters(), rule)
    for t in range(2):
        opt.zero_grad()
        nn.functional.mse_loss(net(inputs), targets).backward()
        if t == 0:
            torch.manual_seed(5)
        opt.step()
    assert not torch.equal(flat(), x0)
    torch.testing.assert_close(flat(), x, rtol=1e-6, atol=1e-8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_cuda_state_stays_on_the_device_and_matches_cpu(name):
    x, gs = torch.randn(2, P), grads(4, 2)
    with torch.no_grad():
        cpu, _ = run(make(name), x, gs, generators([0, 1], "optimizer"))
        rule = make(name)
        if isinstance(rule, nn.Module):
            rule = rule.to("cuda")
        gpu, state = run(rule, x.cuda(), [g.cuda() for g in gs], generators([0, 1], "optimizer"))
    assert all(t.device.type == "cuda" for t in tensors(state))
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-7)
