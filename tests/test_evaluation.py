import math

import numpy as np
import pytest
import torch

from l2o import adam, evaluate, get_task, sgd
from l2o.evaluation import summarize_losses


@pytest.mark.usefixtures("sample_data")
def test_population_equals_sequential_single_seeds():
    task = get_task("mlp-relu")
    together = evaluate(adam(lr=0.01), task, 40, [0, 1, 2])
    for i, seed in enumerate([0, 1, 2]):
        alone = evaluate(adam(lr=0.01), task, 40, [seed])
        np.testing.assert_allclose(alone.losses[0], together.losses[i], rtol=2e-4)


@pytest.mark.usefixtures("sample_data")
def test_adam_learns_and_summary_has_the_protocol_fields():
    result = evaluate(adam(lr=0.01), get_task("mlp-orig"), 300, [0, 1])
    s = result.summary()
    for key in (
        "rule",
        "hyperparameters",
        "task",
        "steps",
        "seeds",
        "final_ln_loss",
        "ln_mean_loss_at",
        "diverged_seeds",
        "seconds",
        "steps_per_second",
    ):
        assert key in s
    assert s["hyperparameters"]["lr"] == 0.01 and s["split"] == "test"
    per_seed = s["final_ln_loss"]["per_seed"]
    expected = [math.log(result.losses[i, -100:].mean()) for i in range(2)]
    assert per_seed == pytest.approx(expected, abs=1e-5)
    assert s["final_ln_loss"]["mean"] < s["initial_ln_loss"] - 1.0
    assert set(s["ln_mean_loss_at"]) == {"100", "300"}


def test_divergence_is_reported_not_dropped():
    result = evaluate(sgd(lr=1e4), get_task("quadratic"), 50, [0, 1])
    s = result.summary()
    assert s["diverged_seeds"] == [0, 1]
    assert s["final_ln_loss"]["per_seed"] == [None, None] and s["final_ln_loss"]["mean"] is None


def test_summarize_windows():
    losses = np.exp(np.tile(np.linspace(0, -5, 1000), (3, 1)))
    losses[2, 500] = np.nan
    s = summarize_losses(losses, [4, 5, 6])
    assert s["diverged_seeds"] == [6]
    assert s["final_ln_loss"]["per_seed"][2] is None
    assert s["ln_mean_loss_at"]["100"] == pytest.approx(math.log(losses[0, :100].mean()), abs=1e-5)


def test_ctrl_c_keeps_completed_steps():
    def interrupt(t, _):
        if t == 60:
            raise KeyboardInterrupt

    result = evaluate(
        adam(), get_task("quadratic"), 500, [0], callback=interrupt, callback_every=20
    )
    assert result.interrupted and result.steps == 60
    assert np.isfinite(result.losses).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="distinct"):
        evaluate(adam(), get_task("quadratic"), 5, [1, 1])
    with pytest.raises(ValueError, match="at least 1"):
        evaluate(adam(), get_task("quadratic"), 0, [1])


def test_float64_runs():
    """dtype=float64 runs the whole trajectory in float64: it matches torch.optim.Adam driven by
    hand in float64 to 1e-12, which a float32 run (or a float64 request run in float32) does
    not."""
    task = get_task("quadratic")
    result = evaluate(adam(), task, 20, [0], dtype=torch.float64)
    assert result.losses.shape == (1, 20)
    x = task.init([0], dtype=torch.float64).requires_grad_(True)
    stream = task.stream([0], task.eval_split)
    reference = torch.optim.Adam([x], lr=0.01)
    batch, expected = stream.next(), []
    for _ in range(20):
        reference.zero_grad()
        task.loss(x, batch).sum().backward()  # the gradient on the batch x_t was scored on
        reference.step()
        batch = stream.next()
        expected.append(task.loss(x, batch).item())
    np.testing.assert_allclose(result.losses[0], expected, rtol=1e-12)
    single = evaluate(adam(), task, 20, [0], dtype=torch.float32)
    assert np.max(np.abs(single.losses[0] / np.asarray(expected) - 1)) > 1e-9


@pytest.mark.parametrize("rule_name", ["dm", "rnnprop", "scale"])
@pytest.mark.usefixtures("sample_data")
def test_chunked_rule_steps_equal_one_piece(monkeypatch, rule_name):
    """Stepping a learned rule over chunks of instances changes nothing but speed."""
    import l2o.evaluation as ev
    from l2o.rules import DMRule, RNNpropRule, ScaleRule

    torch.manual_seed(0)
    rule = {"dm": DMRule, "rnnprop": RNNpropRule, "scale": ScaleRule}[rule_name]()
    task = get_task("mlp-deeper")
    monkeypatch.setattr(ev, "CHUNK_COORDINATES", 10**9)
    whole = evaluate(rule, task, 15, [0, 1, 2])
    monkeypatch.setattr(ev, "CHUNK_COORDINATES", task.num_params)  # one instance per chunk
    pieces = evaluate(rule, task, 15, [0, 1, 2])
    np.testing.assert_allclose(pieces.losses, whole.losses, rtol=1e-5)
