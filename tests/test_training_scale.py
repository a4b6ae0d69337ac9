"""L2O-Scale meta-training (docs/method.md 3.2): the log-normalized objective's surrogate, the
RMSProp meta-optimizer with zeroed non-finite entries and value clipping, the ``scale`` recipe end
to end (train, validate, checkpoint, evaluate, resume, LearnedOptimizer) and resuming older runs."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import l2o
from configs import quick_config
from l2o.checkpoint import load_rule_checkpoint, load_training_state, save_training_state
from l2o.cli import app
from l2o.rules.scale import ScaleRule
from l2o.tasks import get_task
from l2o.tasks.base import generators
from l2o.training import TrainConfig, Trainer, TrainingError, get_recipe
from l2o.training.metastep import make_meta_optimizer
from l2o.training.persistence import TRAIN_STATE
from l2o.training.unroll import (
    LOG_OBJECTIVE_EPS,
    ObjectiveSubsets,
    start_trajectory,
    unroll_log_objective,
)

_DATA = os.environ.get("L2O_DATA_DIR")
needs_data = pytest.mark.skipif(
    not _DATA or not (Path(_DATA) / "mnist").is_dir(), reason="MNIST data not available"
)


def scale_config(**overrides):
    settings = dict(
        task_options={"init_std": 1.0},
        horizon=20,
        unroll_length=10,
        num_epochs=4,
        evaluation_period=2,
        evaluation_epochs=2,
    )
    return quick_config("scale", **{**settings, **overrides})


def mlp_config(**overrides):
    values = dict(
        task="mlp-orig",
        task_options={"init_std": 1.0, "sampling": "epoch"},
        objective_subset=300,
    )
    values.update(overrides)
    return scale_config(**values)


@needs_data
def test_log_objective_surrogate_gives_the_true_first_order_meta_gradient():
    """<w_j grad f_D(x_j), x_j> has the gradient of mean_j log(f_D(x_j) / (f_init + eps) + eps)
    w.r.t. the weights when the gradients fed to the rule are constants; f_D's data (the subset)
    differs from the minibatches the rule is fed."""
    torch.manual_seed(0)
    task = get_task("mlp-orig", init_std=1.0, sampling="epoch")
    rule = ScaleRule().double()
    with torch.no_grad():  # move every weight so that zero-initialised ones matter
        for p in rule.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seeds, steps = [3, 4], 4
    x0 = task.init(seeds, dtype=torch.float64)
    subset = ObjectiveSubsets(task, seeds, "train", 200).next()
    eps = LOG_OBJECTIVE_EPS

    for f_init in (None, torch.tensor([2.5, 7.0], dtype=torch.float64)):
        stream = task.stream(seeds, "train")
        traj = start_trajectory(rule, task, x0, stream, None, seeds)
        out = unroll_log_objective(rule, task, traj, stream, subset, steps, f_init)
        auto = torch.autograd.grad(out.surrogate, list(rule.parameters()), allow_unused=True)

        # Reference: keep the objective's graph, detach only the minibatch gradients.
        stream = task.stream(seeds, "train")
        x = x0
        state = rule.init(x0, task.layout, generator=generators(seeds, "optimizer"))
        values = [task.loss(x, subset), task.loss(x, subset)]
        for t in range(steps):
            if t > 0:
                values.append(task.loss(x, subset))
            leaf = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(task.loss(leaf, stream.next()).sum(), leaf)
            delta, state = rule.step(g, state)
            x = x + delta
        values = torch.stack(values)
        init = values[0].detach() if f_init is None else f_init
        meta_loss = torch.log(values / (init + eps) + eps).mean(0)
        ref = torch.autograd.grad(meta_loss.mean(), list(rule.parameters()), allow_unused=True)

        torch.testing.assert_close(out.objectives, values.detach())
        torch.testing.assert_close(out.meta_loss, meta_loss.detach())
        torch.testing.assert_close(out.f_init, init)
        nonzero = 0
        for a, b in zip(auto, ref, strict=True):
            a = torch.zeros(()) if a is None else a
            b = torch.zeros(()) if b is None else b
            torch.testing.assert_close(a, b.expand_as(a), rtol=1e-6, atol=1e-12)
            nonzero += int(a.abs().sum() > 0)
        assert nonzero > 10  # the meta-gradient reaches most weights


def test_rmsprop_zeroes_non_finite_entries_and_clips_by_value(tmp_path):
    trainer = Trainer(scale_config(grad_clip_value=0.5, meta_lr=0.1), tmp_path / "z")
    assert isinstance(trainer.meta_opt, torch.optim.RMSprop)
    params = list(trainer.rule.parameters())
    before = [p.detach().clone() for p in params]
    coeffs = []
    for p in params:
        c = torch.linspace(-2.0, 2.0, p.numel(), dtype=p.dtype).view_as(p).clone()
        c.view(-1)[0] = float("nan")
        if p.numel() > 1:
            c.view(-1)[1] = float("inf")
        coeffs.append(c)

    def surrogate():
        return sum((p * c).sum() for p, c in zip(params, coeffs, strict=True))

    assert trainer.meta_step(surrogate(), 1.0, trainer.meta_opt) == "zeroed"
    for p, b, c in zip(params, before, coeffs, strict=True):
        g = torch.where(torch.isfinite(c), c, torch.zeros_like(c)).clamp(-0.5, 0.5)
        ms = 0.9 * 1.0 + 0.1 * g * g  # TF1's RMSProp: mean squares start at 1
        torch.testing.assert_close(p.detach(), b - 0.1 * g / ms.sqrt())

    # The same gradient under the L2O-DM/RNNprop treatment: the whole step is skipped.
    skip = Trainer(scale_config(nonfinite="skip"), tmp_path / "s")
    params = list(skip.rule.parameters())
    before = [p.detach().clone() for p in params]
    assert skip.meta_step(surrogate(), 1.0, skip.meta_opt) == "skipped"
    for p, b in zip(params, before, strict=True):
        torch.testing.assert_close(p.detach(), b)
    # A non-finite meta-loss (diverged optimizee) never steps.
    assert trainer.meta_step(surrogate(), math.inf, trainer.meta_opt) == "skipped"


def test_tf_rmsprop_settings():
    rule = ScaleRule()
    config = TrainConfig.from_flat(meta_optimizer="rmsprop", meta_lr=3e-4)
    opt = make_meta_optimizer(config, rule.parameters())
    group = opt.param_groups[0]
    assert group["alpha"] == 0.9 and group["eps"] == 1e-20 and group["lr"] == 3e-4
    assert group["momentum"] == 0 and not group["centered"]
    assert all(torch.equal(opt.state[p]["square_avg"], torch.ones_like(p)) for p in group["params"])
    with pytest.raises(ValueError, match="meta_optimizer"):
        TrainConfig.from_flat(meta_optimizer="sgd")


def test_scale_recipe_trains_validates_and_its_checkpoint_is_usable(tmp_path, monkeypatch):
    trainer = Trainer(scale_config(), tmp_path / "run")
    initial = [p.detach().clone() for p in trainer.rule.parameters()]
    summary = trainer.run()
    assert summary.epochs_done == 4 and summary.best_path and summary.skipped_meta_steps == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["type"] == "epoch"]
    validations = [r for r in lines if r["type"] == "validation"]
    assert [r["epoch"] for r in validations] == [2, 4]
    assert all(math.isfinite(r["meta_loss"]) and r["zeroed_meta_steps"] == 0 for r in epochs)
    assert all(math.isfinite(r["score"]) for r in validations)
    assert any(
        not torch.equal(a, b) for a, b in zip(initial, trainer.rule.parameters(), strict=True)
    )

    best = tmp_path / "run" / "best.safetensors"
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # keep the test fast
    rule = load_rule_checkpoint(best)
    assert isinstance(rule, ScaleRule)
    assert rule.card["recipe"] == "scale" and rule.card["config"]["objective"] == "log-normalized"
    result = CliRunner().invoke(
        app,
        [
            *("evaluate", str(best), "--task", "quadratic", "--steps", "20", "--seeds", "2"),
            *("--out", str(tmp_path / "ev")),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["rule"] == "scale" and summary["steps"] == 20

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    inputs, targets = torch.randn(32, 4), torch.randn(32, 1)
    start = [p.detach().clone() for p in model.parameters()]
    opt = l2o.LearnedOptimizer(model.parameters(), str(best))
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(inputs), targets).backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(start, model.parameters(), strict=True))


def test_validation_is_fresh_and_never_touches_training(tmp_path):
    often = Trainer(scale_config(num_epochs=2, evaluation_period=1), tmp_path / "often")
    first = often.validate()
    assert often.validate() == first  # fixed seeds, fresh state: a deterministic score
    often.run()
    rarely = Trainer(scale_config(num_epochs=2, evaluation_period=2), tmp_path / "rarely")
    rarely.run()
    for a, b in zip(often.rule.parameters(), rarely.rule.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@needs_data
@pytest.mark.parametrize("rule_state", ["reset", "carry"])
def test_scale_resume_after_interrupt_gives_the_same_weights(tmp_path, rule_state):
    config = mlp_config(rule_state=rule_state)
    full = Trainer(config, tmp_path / "full")
    full.run()

    part = Trainer(config, tmp_path / "part")

    def kill_after_epoch_2(event):
        if event["type"] == "epoch" and event["epoch"] == 2:
            raise KeyboardInterrupt

    assert part.run(kill_after_epoch_2).interrupted
    resumed = Trainer(config, tmp_path / "part", resume=True)
    assert resumed.epoch == 2
    assert (resumed.carried_state is not None) == (rule_state == "carry")
    resumed.run()
    for a, b in zip(
        full.rule.state_dict().values(), resumed.rule.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(
        full.meta_opt.state_dict()["state"].values(),
        resumed.meta_opt.state_dict()["state"].values(),
        strict=True,
    ):
        torch.testing.assert_close(a["square_avg"], b["square_avg"], rtol=0, atol=0)
    assert full.best_score == resumed.best_score


def test_runs_saved_before_the_new_settings_still_resume(tmp_path):
    """A training state whose config lacks the settings added for L2O-Scale (the dm/rnnprop runs
    started before them) resumes while those settings keep their defaults."""
    config = get_recipe("dm").config(
        "demo", task="quadratic", horizon=20, num_epochs=2, evaluation_period=1, compile=False
    )
    Trainer(config.replace(num_epochs=1), tmp_path / "old").run()
    path = tmp_path / "old" / TRAIN_STATE
    state = load_training_state(path)
    saved = json.loads(state["config"])
    new = ("meta_optimizer", "nonfinite", "grad_clip_value", "objective", "objective_subset")
    for key in (*new, "rule_state"):
        del saved[key]
    saved["num_epochs"] = 2
    state["config"] = json.dumps(saved)
    for key in ("zeroed", "carried_rule_state"):
        del state[key]
    save_training_state(path, state)

    changed = config.replace(nonfinite="zero")
    with pytest.raises(TrainingError, match=r"nonfinite: saved run predates it \(default 'skip'\)"):
        Trainer(changed, tmp_path / "old", resume=True)
    resumed = Trainer(config, tmp_path / "old", resume=True)
    assert resumed.epoch == 1
    assert resumed.run().epochs_done == 2


def test_task_options_the_task_does_not_take_are_reported(tmp_path):
    with pytest.raises(TrainingError, match="does not accept"):
        Trainer(scale_config(task_options={"sampling": "epoch"}), tmp_path / "bad")


@needs_data
def test_objective_subsets_are_distinct_examples_of_each_instance():
    """``stream.sample(size)``: per instance, ``size`` distinct examples of the split, from the
    instance's own random stream (a population equals its seeds drawn one at a time)."""
    task = get_task("mlp-orig")
    images, labels = ObjectiveSubsets(task, [4, 5], "train", 500).next()
    assert images.shape[:2] == (2, 500) and labels.shape == (2, 500)
    for i in range(2):
        flat = images[i].reshape(500, -1)
        assert torch.unique(flat, dim=0).shape[0] == 500  # no example drawn twice
    alone, alone_labels = ObjectiveSubsets(task, [5], "train", 500).next()
    torch.testing.assert_close(alone[0], images[1], rtol=0, atol=0)
    assert torch.equal(alone_labels[0], labels[1])
    stream = task.stream([5], "train")
    same, _ = stream.sample(500, generators([5], "objective"))
    torch.testing.assert_close(same, alone, rtol=0, atol=0)
    # The quadratic has no example pool: its sample is its (fixed, exact) batch.
    quadratic = get_task("quadratic")
    w, _ = quadratic.stream([0]).sample(10)
    torch.testing.assert_close(w, quadratic.stream([0]).next()[0])
