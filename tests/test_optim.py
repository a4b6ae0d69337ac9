"""LearnedOptimizer: a real torch.optim.Optimizer that follows the evaluation harness exactly."""

import numpy as np
import pytest
import torch
from torch import nn

from l2o import LearnedOptimizer, ModuleTask, evaluate
from l2o.rules import DMRule, RNNpropRule


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
