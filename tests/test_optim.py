"""LearnedOptimizer: a real torch.optim.Optimizer that follows the evaluation harness exactly."""

import numpy as np
import pytest
import torch
from torch import nn

from l2o import LearnedOptimizer, ModuleTask, evaluate
from l2o.rules import DMRule, RNNpropRule, ScaleRule


class TwoLayer(nn.Module):
    """A model the package does not define."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(6, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def data():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(256, 6, generator=g)
    targets = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0).long()
    return inputs, targets


@pytest.mark.parametrize("rule_cls", [DMRule, RNNpropRule])
def test_same_trajectory_as_the_evaluation_harness(rule_cls):
    torch.manual_seed(1)
    rule = rule_cls()
    task = ModuleTask(TwoLayer(), data(), batch_size=32)
    seed, steps = 4, 30
    harness = evaluate(rule, task, steps, [seed])

    model = TwoLayer()
    x0 = task.init([seed])[0]
    torch.nn.utils.vector_to_parameters(x0, model.parameters())
    opt = LearnedOptimizer(model.parameters(), rule)
    stream = task.stream([seed])
    losses = []
    for t in range(steps + 1):
        inputs, targets = stream.next()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs[0]), targets[0])
        if t > 0:
            losses.append(loss.item())
        if t == steps:
            break
        loss.backward()
        opt.step()
    np.testing.assert_allclose(losses, harness.losses[0], rtol=1e-5)


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    rule = RNNpropRule()
    inputs, targets = data()

    def run(model, opt, n):
        for _ in range(n):
            opt.zero_grad()
            nn.functional.cross_entropy(model(inputs), targets).backward()
            opt.step()

    a = TwoLayer()
    b = TwoLayer()
    b.load_state_dict(a.state_dict())
    opt_a = LearnedOptimizer(a.parameters(), rule)
    run(a, opt_a, 5)
    saved_opt, saved_model = opt_a.state_dict(), {k: v.clone() for k, v in a.state_dict().items()}
    run(a, opt_a, 5)

    b.load_state_dict(saved_model)
    opt_b = LearnedOptimizer(b.parameters(), rule)
    opt_b.load_state_dict(saved_opt)
    run(b, opt_b, 5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_param_groups_shapes_and_dtypes():
    model = TwoLayer().double()
    scalar = nn.Parameter(torch.tensor(1.0))
    opt = LearnedOptimizer([{"params": model.parameters()}, {"params": [scalar]}], DMRule())
    loss = nn.functional.cross_entropy(model(data()[0].double()), data()[1]) + scalar**2
    loss.backward()
    before = scalar.detach().clone()
    opt.step()
    assert model.hidden.weight.dtype == torch.float64
    assert not torch.equal(before, scalar.detach())


def test_mixed_dtypes_in_one_group_is_a_clear_error():
    a = nn.Parameter(torch.zeros(3))
    b = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = LearnedOptimizer([a, b], DMRule())
    a.grad, b.grad = torch.ones(3), torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="separate parameter groups"):
        opt.step()


def test_loads_paper_weights_by_name():
    model = TwoLayer()
    opt = LearnedOptimizer(model.parameters(), "paper:dm-cl-il")
    assert isinstance(opt.rule, DMRule)


# --- as torch.optim users expect -----------------------------------------------------------------

RULES = {"dm": DMRule, "rnnprop": RNNpropRule, "scale": ScaleRule}


def _rule(name):
    torch.manual_seed(0)
    return RULES[name]()


def _state_leaves(opt, param):
    """The rule state of ``param``'s group as {leaf index: tensor} (stored on its first param)."""
    return {k: v.clone() for k, v in opt.state[param].items()}


def test_parameters_without_grad_stay_put_and_their_state_holds_dm():
    """L2O-DM is coordinatewise, so a parameter left without a gradient for some steps must be
    exactly where a separate optimizer over the other parameters would leave it, and when its
    gradients return it resumes as if the skipped steps had never happened."""
    torch.manual_seed(3)
    rule = _rule("dm")
    a0, b0 = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    a, b = nn.Parameter(a0.clone()), nn.Parameter(b0.clone())
    a_alone, b_alone = nn.Parameter(a0.clone()), nn.Parameter(b0.clone())
    joint = LearnedOptimizer([a, b], rule)
    only_a, only_b = LearnedOptimizer([a_alone], rule), LearnedOptimizer([b_alone], rule)
    for t in range(8):
        b_has_grad = t < 2 or t >= 6  # b gets no gradient on steps 2..5
        for opt in (joint, only_a, only_b):
            opt.zero_grad()  # set_to_none=True: the usual way a parameter ends up without .grad
        ((a**2).sum() + (a_alone**2).sum()).backward()
        if b_has_grad:
            ((b.sin()).sum() + (b_alone.sin()).sum()).backward()
        before = b.detach().clone()
        joint.step()
        only_a.step()
        if b_has_grad:
            only_b.step()
        else:
            assert torch.equal(b.detach(), before), f"b moved at step {t} without a gradient"
        torch.testing.assert_close(a.detach(), a_alone.detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(b.detach(), b_alone.detach(), rtol=1e-12, atol=1e-14)
    assert not torch.equal(b.detach(), b0)  # and it did move when it had gradients


@pytest.mark.parametrize("name", ["rnnprop", "scale"])
def test_parameters_without_grad_stay_put_and_their_state_holds(name):
    torch.manual_seed(5)
    model = TwoLayer()
    frozen = model.hidden.weight  # tensor 0 of the group: coordinates 0..95
    opt = LearnedOptimizer(model.parameters(), _rule(name))
    inputs, targets = data()

    def step(with_hidden_weight: bool) -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        if not with_hidden_weight:
            frozen.grad = None
        opt.step()

    step(True)
    step(True)
    weight, state = frozen.detach().clone(), _state_leaves(opt, frozen)
    moving = [p for p in model.parameters() if p is not frozen]
    others = [p.detach().clone() for p in moving]
    for _ in range(3):
        step(False)
    assert torch.equal(frozen.detach(), weight)
    assert all(not torch.equal(p.detach(), q) for p, q in zip(moving, others, strict=True))
    n = frozen.numel()
    after = _state_leaves(opt, frozen)
    kinds = opt._group_leaf_kinds[0]
    assert "coordinate" in kinds and (name != "scale" or "tensor" in kinds)
    for i, kind in enumerate(kinds):
        old, new = state[f"rule_state_{i}"], after[f"rule_state_{i}"]
        if kind == "coordinate":  # the frozen tensor's coordinates hold, the others advance
            assert torch.equal(new[..., :n], old[..., :n]), f"leaf {i} advanced"
        elif kind == "tensor":
            assert torch.equal(new[..., 0], old[..., 0]), f"per-tensor leaf {i} advanced"
    h = state["rule_state_0"]
    assert not torch.equal(after["rule_state_0"][..., n:], h[..., n:])  # the rest did advance
    step(True)
    assert not torch.equal(frozen.detach(), weight)  # and it moves again with a gradient


def test_a_group_without_any_gradient_is_skipped():
    model = TwoLayer()
    extra = nn.Parameter(torch.ones(3))
    opt = LearnedOptimizer([{"params": model.parameters()}, {"params": [extra]}], DMRule())
    nn.functional.cross_entropy(model(data()[0]), data()[1]).backward()
    opt.step()
    assert torch.equal(extra.detach(), torch.ones(3)) and extra not in opt.state
    assert model.hidden.weight in opt.state


@pytest.mark.parametrize("name", ["dm", "rnnprop", "scale"])
def test_non_finite_gradient_skips_the_group_step_and_warns(name):
    """A NaN or inf gradient is dropped like GradScaler drops it: the weights and the recurrent
    state are untouched, so the run continues exactly as if that batch had never come."""
    torch.manual_seed(2)
    rule = _rule(name)
    start = torch.randn(6, 4, dtype=torch.float64)
    other0 = torch.randn(3, dtype=torch.float64)
    w, clean = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    other = nn.Parameter(other0.clone())
    opt = LearnedOptimizer([{"params": [w]}, {"params": [other]}], rule)
    opt_clean = LearnedOptimizer([clean], rule)

    def grad_of(p):
        return (p.detach() ** 3 - p.detach()).clone()

    for t in range(6):
        other.grad = torch.ones_like(other)
        if t in (2, 4):
            w.grad = grad_of(w)
            w.grad[1, 2] = float("nan") if t == 2 else float("inf")
            weight, state = w.detach().clone(), _state_leaves(opt, w)
            moved_other = other.detach().clone()
            with pytest.warns(RuntimeWarning, match=r"non-finite gradient.*group 0.*skipped"):
                opt.step()
            assert torch.equal(w.detach(), weight)
            after = _state_leaves(opt, w)
            assert all(torch.equal(after[k], state[k]) for k in state)
            assert not torch.equal(other.detach(), moved_other)  # group 1 still stepped
            continue
        w.grad, clean.grad = grad_of(w), grad_of(clean)
        torch.manual_seed(7)  # L2O-Scale draws its initial log learning rates on the first step
        opt.step()
        torch.manual_seed(7)
        opt_clean.step()
        assert torch.equal(w.detach(), clean.detach())
        assert torch.isfinite(w).all()


def _constant_gradient_run(opt, w, c, steps, scheduler=None):
    """Per-step displacements of ``w`` under a gradient that does not depend on ``w`` (so the
    rule's state, and its unscaled step, are the same whatever the learning rates)."""
    moves, lrs = [], []
    for _ in range(steps):
        opt.zero_grad()
        (w * c).sum().backward()
        before = w.detach().clone()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        moves.append(w.detach() - before)
        if scheduler is not None:
            scheduler.step()
    return moves, lrs


def _scaled_run(name, make_scheduler, steps=6):
    torch.manual_seed(11)
    c = torch.randn(20, dtype=torch.float64)
    w0 = torch.randn(20, dtype=torch.float64)
    rule = _rule(name)
    ref = nn.Parameter(w0.clone())
    torch.manual_seed(1)
    reference, ref_lrs = _constant_gradient_run(LearnedOptimizer([ref], rule), ref, c, steps)
    assert ref_lrs == [1.0] * steps
    w = nn.Parameter(w0.clone())
    torch.manual_seed(1)
    opt = LearnedOptimizer([w], rule)
    moves, lrs = _constant_gradient_run(opt, w, c, steps, make_scheduler(opt))
    for t, (move, lr, base) in enumerate(zip(moves, lrs, reference, strict=True)):
        torch.testing.assert_close(move, lr * base, rtol=1e-9, atol=1e-15, msg=f"step {t}")
    return lrs


def test_lr_is_in_every_group_and_scales_the_step():
    model = TwoLayer()
    opt = LearnedOptimizer(
        [{"params": model.hidden.parameters()}, {"params": model.out.parameters(), "lr": 0.3}],
        DMRule(),
    )
    assert [g["lr"] for g in opt.param_groups] == [1.0, 0.3]
    assert LearnedOptimizer(model.parameters(), DMRule(), lr=0.5).param_groups[0]["lr"] == 0.5
    assert _scaled_run("rnnprop", lambda opt: None) == [1.0] * 6


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "fast"])
def test_bad_lr_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"lr must be a finite number >= 0.*got"):
        LearnedOptimizer(TwoLayer().parameters(), DMRule(), lr=bad)
    opt = LearnedOptimizer(TwoLayer().parameters(), DMRule())
    with pytest.raises(ValueError, match=r"lr must be a finite number >= 0"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))], "lr": bad})


@pytest.mark.parametrize("name", ["dm", "scale"])
def test_step_lr_and_warm_up_schedules(name):
    lrs = _scaled_run(
        name, lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    )
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    warm_up = _scaled_run(
        name, lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4))
    )
    assert warm_up == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_swa_utils_anneal_and_average():
    lrs = _scaled_run(
        "rnnprop",
        lambda opt: torch.optim.swa_utils.SWALR(
            opt, swa_lr=0.1, anneal_epochs=3, anneal_strategy="linear"
        ),
    )
    assert lrs[0] == 1.0 and lrs[-1] == pytest.approx(0.1) and lrs == sorted(lrs, reverse=True)
    model = TwoLayer()
    swa = torch.optim.swa_utils.AveragedModel(model)
    opt = LearnedOptimizer(model.parameters(), RNNpropRule())
    scheduler = torch.optim.swa_utils.SWALR(opt, swa_lr=0.05)
    inputs, targets = data()
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        opt.step()
        swa.update_parameters(model)
        scheduler.step()
    assert int(swa.n_averaged) == 4 and opt.param_groups[0]["swa_lr"] == 0.05


@pytest.mark.parametrize("name", ["dm", "rnnprop", "scale"])
def test_state_dict_round_trips_through_torch_save_weights_only(name, tmp_path):
    torch.manual_seed(0)
    rule = _rule(name)
    inputs, targets = data()

    def run(model, opt, n):
        for _ in range(n):
            opt.zero_grad()
            nn.functional.cross_entropy(model(inputs), targets).backward()
            opt.step()

    a, b = TwoLayer(), TwoLayer()
    opt_a = LearnedOptimizer(a.parameters(), rule, lr=0.7)
    run(a, opt_a, 4)
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    run(a, opt_a, 4)
    b.load_state_dict(saved["model"])
    opt_b = LearnedOptimizer(b.parameters(), rule)
    opt_b.load_state_dict(saved["opt"])
    assert opt_b.param_groups[0]["lr"] == 0.7
    run(b, opt_b, 4)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_analytic_rule_with_a_parameter_without_grad_is_a_clear_error():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt = LearnedOptimizer([a, b], "adam")
    a.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"cannot be left alone.*torch.optim optimizer itself"):
        opt.step()
    b.grad = torch.ones(2)
    opt.step()  # with every gradient present it steps
    assert not torch.equal(a.detach(), torch.ones(3))
