"""Each analytic rule follows torch.optim applied to an ordinary nn.Module, step for step."""

import pytest
import torch
from torch import nn

from l2o.layout import Layout
from l2o.rules import get_analytic_rule

CASES = [
    ("adam", {"lr": 0.01}, torch.optim.Adam, {"lr": 0.01}),
    (
        "adam",
        {"lr": 0.003, "betas": (0.8, 0.99)},
        torch.optim.Adam,
        {"lr": 0.003, "betas": (0.8, 0.99)},
    ),
    ("rmsprop", {"lr": 0.01}, torch.optim.RMSprop, {"lr": 0.01, "alpha": 0.9, "eps": 1e-10}),
    (
        "rmsprop",
        {"lr": 0.001, "momentum": 0.5},
        torch.optim.RMSprop,
        {"lr": 0.001, "alpha": 0.9, "eps": 1e-10, "momentum": 0.5},
    ),
    ("sgd", {"lr": 0.1}, torch.optim.SGD, {"lr": 0.1}),
    ("sgd", {"lr": 0.05, "momentum": 0.9}, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    ("nag", {"lr": 0.05}, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
]


@pytest.mark.parametrize(("name", "hp", "cls", "ref_hp"), CASES)
def test_rule_matches_torch_optim_on_a_module(name, hp, cls, ref_hp):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2))
    inputs, targets = torch.randn(32, 5), torch.randn(32, 2)
    layout = Layout.from_shapes({k: v.shape for k, v in net.named_parameters()})
    x = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).unsqueeze(0)
    rule = get_analytic_rule(name, **hp)
    state = rule.init(x, layout)
    reference = cls(net.parameters(), **ref_hp)
    for _ in range(25):
        params = {k: v[0] for k, v in layout.unflatten(x.requires_grad_(True)).items()}
        loss = nn.functional.mse_loss(torch.func.functional_call(net, params, (inputs,)), targets)
        (grad,) = torch.autograd.grad(loss, x)
        delta, state = rule.step(grad, state)
        x = x.detach() + delta
        reference.zero_grad()
        nn.functional.mse_loss(net(inputs), targets).backward()
        reference.step()
    expected = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(x[0], expected, rtol=1e-5, atol=1e-6)


def test_hyperparameters_are_exposed_and_unknown_rule_errors():
    rule = get_analytic_rule("nag", lr=0.3)
    assert rule.hyperparameters() == {"lr": 0.3, "momentum": 0.9, "nesterov": True}
    with pytest.raises(ValueError, match="choose one of adam, rmsprop, sgd, nag"):
        get_analytic_rule("adagrad")
