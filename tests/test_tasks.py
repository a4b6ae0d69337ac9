import pytest
import torch
from torch import nn

from l2o.tasks import TASKS, ModuleTask, get_task

EXPECTED_PARAMS = {
    "mlp-orig": 15_910,
    "mlp-relu": 15_910,
    "mlp-deeper": 16_330,
    "conv-mnist": 18_218,
    "conv-cifar": 13_706,
    "quadratic": 1_280,
}


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_parameter_counts(name):
    assert get_task(name).num_params == EXPECTED_PARAMS[name]


def test_registry_is_the_paper_task_set():
    assert set(TASKS) == set(EXPECTED_PARAMS)
    with pytest.raises(ValueError, match="choose one of: mlp-orig"):
        get_task("mlp-nope")


def test_conv_without_batchnorm_matches_l2o_scale_counts():
    assert get_task("conv-mnist", batch_norm=False).num_params == 18_122
    assert get_task("conv-cifar", batch_norm=False).num_params == 13_610


def test_init_is_per_seed_and_follows_initialisers():
    task = get_task("conv-mnist")
    a = task.init([3, 7])
    b = task.init([7])
    assert torch.equal(a[1], b[0])
    assert not torch.equal(a[0], a[1])
    p = task.layout.unflatten(a)
    assert torch.all(p["bn_0/gamma"] == 1) and torch.all(p["conv_1/b"] == 0)
    assert p["conv_1/w"].std().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize(
    "name", ["mlp-orig", "mlp-deeper", "conv-mnist", "conv-cifar", "quadratic"]
)
@pytest.mark.usefixtures("sample_data")
def test_population_equals_single_instances(name):
    """Losses and gradients of a population equal those of each seed run alone."""
    task = get_task(name)
    seeds = [0, 5, 9]
    x = task.init(seeds).requires_grad_(True)
    batch = task.stream(seeds, "train").next()
    losses = task.loss(x, batch)
    (grad,) = torch.autograd.grad(losses.sum(), x)
    assert losses.shape == (3,)
    for i, seed in enumerate(seeds):
        xi = task.init([seed]).requires_grad_(True)
        li = task.loss(xi, task.stream([seed], "train").next())
        (gi,) = torch.autograd.grad(li.sum(), xi)
        torch.testing.assert_close(li[0], losses[i], rtol=1e-5, atol=1e-6)
        # Conv biases right before BatchNorm have an exactly-zero true gradient (BN removes the
        # mean): what is computed there is round-off, so check it is ~0 and compare the rest.
        zero = torch.zeros(task.num_params, dtype=torch.bool)
        for spec in task.layout.specs:
            if spec.name.startswith("conv_") and spec.name.endswith("/b"):
                zero[spec.offset : spec.stop] = True
        scale = grad[i].abs().max()
        if zero.any():
            assert gi[0][zero].abs().max() < 1e-3 * scale
            assert grad[i][zero].abs().max() < 1e-3 * scale
        torch.testing.assert_close(gi[0][~zero], grad[i][~zero], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.usefixtures("sample_data")
def test_untrained_nets_start_near_ln10():
    for name in ("mlp-orig", "mlp-relu", "mlp-deeper", "conv-mnist", "conv-cifar"):
        task = get_task(name)
        loss = task.loss(task.init([0, 1]), task.stream([0, 1]).next())
        # BatchNorm rescales conv features to unit variance, so conv logits start less flat.
        tol = 0.1 if name.startswith("conv") else 0.02
        assert torch.allclose(loss, torch.full((2,), 2.3026), atol=tol), (name, loss)


@pytest.mark.requires_full_data("mnist")
def test_minibatches_are_drawn_with_replacement_from_the_split():
    task = get_task("mlp-orig")
    stream = task.stream([0], "validation")
    assert stream.size == 5_000
    idx = torch.cat([stream.indices() for _ in range(50)], dim=1)
    assert idx.max() < 5_000 and idx.unique().numel() < idx.numel()
    assert task.stream([0], "train").size == 55_000 and task.stream([0], "test").size == 10_000


@pytest.mark.requires_full_data("mnist")
def test_epoch_sampling_visits_every_example_once():
    task = get_task("mlp-orig", sampling="epoch")
    stream = task.stream([1], "validation")
    idx = torch.cat([stream.indices() for _ in range(40)], dim=1)[0, :5_000]
    assert idx.sort().values.tolist() == list(range(5_000))


@pytest.mark.usefixtures("sample_data")
def test_relu_logits_quirk_is_an_option():
    on, off = get_task("conv-cifar"), get_task("conv-cifar", relu_logits=False)
    x = on.init([0]) * 30
    images = on.stream([0]).next()[0]
    assert (on.logits(x, images) >= 0).all()
    assert (off.logits(x, images) < 0).any()


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x):
        return self.body(x)


def test_module_task_matches_the_module():
    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 4), torch.randint(0, 3, (64,))
    net = TinyNet()
    task = ModuleTask(net, (inputs, targets), batch_size=None, init="copy")
    assert task.num_params == sum(p.numel() for p in net.parameters())
    x = task.init([0, 1]).requires_grad_(True)
    losses = task.loss(x, task.stream([0, 1]).next())
    expected = nn.functional.cross_entropy(net(inputs), targets)
    torch.testing.assert_close(losses, expected.expand(2).detach())
    (grad,) = torch.autograd.grad(losses.sum(), x)
    expected.backward()
    flat = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(grad[0], flat)


def test_module_task_reinitialises_per_seed():
    task = ModuleTask(TinyNet(), (torch.randn(16, 4), torch.randint(0, 3, (16,))), batch_size=8)
    a, b = task.init([1, 2]), task.init([1])
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], a[1])
