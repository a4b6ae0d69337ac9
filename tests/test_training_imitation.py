"""Off-policy imitation (docs/method.md 5): the teacher's trajectory and labels, the loss and its
gradient, the joint variant, self-improving, and imitation epochs inside the trainer."""

import pytest
import torch

from configs import quick_config
from l2o.evaluation import evaluate
from l2o.rules import DMRule
from l2o.rules.analytic import adam
from l2o.tasks import get_task
from l2o.training import Trainer, get_recipe
from l2o.training.imitation import (
    TeacherStream,
    imitation_loss,
    imitation_unroll,
    joint_unroll,
    make_teacher,
    parse_teacher,
)
from l2o.training.unroll import start_trajectory, unroll


@pytest.mark.usefixtures("sample_data")
def test_teacher_labels_are_the_displacements_of_its_own_trajectory():
    task = get_task("mlp-orig")
    seeds = [3, 4]
    stream = task.stream(seeds, task.train_split)
    teacher = TeacherStream(adam(0.01), task, task.init(seeds), stream, seeds)
    steps = [teacher.next(5) for _ in range(2)]
    grads = torch.cat([s.grads for s in steps])
    targets = torch.cat([s.targets for s in steps])
    losses = torch.cat([s.losses for s in steps])
    assert grads.shape == targets.shape == (10, 2, task.num_params)
    # The same run through the evaluation harness: same minibatch losses, same end point.
    result = evaluate(adam(0.01), task, 10, seeds, split=task.train_split)
    reference = torch.cat(
        [torch.as_tensor(result.initial_losses)[None], torch.as_tensor(result.losses)[:, :-1].T]
    )
    torch.testing.assert_close(losses, reference.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(task.init(seeds) + targets.sum(0), teacher.x, rtol=0, atol=1e-6)
    # Adam's first step is -lr * g / (|g| + eps) (bias-corrected moments).
    first = -0.01 * grads[0] / (grads[0].abs() + 1e-8)
    torch.testing.assert_close(targets[0], first, rtol=1e-4, atol=1e-7)


def test_k_teacher_steps_per_label_sum_into_one_displacement():
    task = get_task("quadratic")
    seeds = [0]
    one = TeacherStream(adam(0.05), task, task.init(seeds), task.stream(seeds), seeds)
    two = TeacherStream(
        adam(0.05), task, task.init(seeds), task.stream(seeds), seeds, steps_per_label=2
    )
    a, b = one.next(4), two.next(2)
    torch.testing.assert_close(b.targets, a.targets[0::2] + a.targets[1::2])
    torch.testing.assert_close(b.grads, a.grads[0::2])


def test_imitation_loss_and_its_gradient_match_a_direct_computation():
    task = get_task("quadratic")
    seeds = [1, 2]
    rule = DMRule()
    steps = TeacherStream(adam(0.01), task, task.init(seeds), task.stream(seeds), seeds).next(6)
    loss, per_instance, _ = imitation_unroll(rule, steps, rule.init(task.init(seeds), None), 0.5)
    state, ref = rule.init(task.init(seeds), None), 0.0
    for g, target in zip(steps.grads, steps.targets, strict=True):
        delta, state = rule.step(g, state)
        ref = ref + 0.5 * ((target - delta) ** 2).sum(1) / task.num_params
    ref = 0.5 * ref
    torch.testing.assert_close(per_instance, ref.detach())
    got = torch.autograd.grad(loss, list(rule.parameters()))
    want = torch.autograd.grad(ref.mean(), list(rule.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    assert imitation_loss(torch.zeros(1, 4), torch.ones(1, 4)).item() == 0.5


def test_joint_unroll_adds_weighted_imitation_to_the_meta_loss():
    task = get_task("quadratic")
    seeds = [5]
    rule = DMRule()

    def surrogate(weight):
        stream = task.stream(seeds)
        traj = start_trajectory(rule, task, task.init(seeds), stream)
        if weight is None:
            return unroll(rule, task, traj, stream, 5)[0], None
        teacher = adam(0.01)
        out = joint_unroll(rule, teacher, teacher.init(traj.x), task, traj, stream, 5, weight)
        return out[0], out[2]

    plain, _ = surrogate(None)
    zero, il = surrogate(0.0)
    two, _ = surrogate(2.0)
    torch.testing.assert_close(plain, zero)
    torch.testing.assert_close(two, plain + 2.0 * il.mean(), rtol=1e-5, atol=1e-7)
    assert il.item() > 0


def test_teacher_specs_are_checked():
    assert parse_teacher("adam") == ("adam", 0.01)
    assert parse_teacher("nag@0.003") == ("nag", 0.003)
    assert make_teacher("rmsprop@0.02").hparams["lr"] == 0.02
    with pytest.raises(ValueError, match="unknown teacher 'lion'"):
        parse_teacher("lion")
    with pytest.raises(ValueError, match="not a learning rate"):
        parse_teacher("adam@fast")
    with pytest.raises(ValueError, match="needs a curriculum"):
        get_recipe("dm-il").config("demo", teachers=["self"])
    with pytest.raises(ValueError, match="joint"):
        get_recipe("scale-cl-il").config("demo", imitation_mode="joint")


def tiny_il_config(recipe="dm-il", **overrides):
    settings = dict(
        horizon=40, num_epochs=6, evaluation_period=3, evaluation_epochs=2, imitation_ratios=[1.0]
    )
    return quick_config(recipe, **{**settings, **overrides})


def test_imitation_epochs_train_the_rule_towards_the_teacher(tmp_path):
    """Only imitation epochs, on one fixed problem: the imitation loss falls."""
    trainer = Trainer(tiny_il_config(num_epochs=25, evaluation_period=25), tmp_path / "run")
    records = []
    trainer.run(lambda e: records.append(e) if e["type"] == "epoch" else None)
    assert all(r["imitation"] and r["teacher"] == "adam" for r in records)
    first = sum(r["mean_imitation_loss"] for r in records[:3])
    last = sum(r["mean_imitation_loss"] for r in records[-3:])
    assert last < 0.7 * first
    # The imitation meta-optimizer is a separate Adam (L2O-DM/RNNprop); the meta-loss one idled.
    assert trainer.imitation_opt is not trainer.meta_opt
    assert not trainer.meta_opt.state and trainer.imitation_opt.state


def test_imitation_ratio_is_the_fraction_of_imitation_epochs(tmp_path):
    trainer = Trainer(
        tiny_il_config(imitation_ratios=[0.3], num_epochs=200, evaluation_period=1000),
        tmp_path / "run",
    )
    draws = []
    for epoch in range(200):
        trainer.epoch = epoch
        draws.append(trainer.imitation_epoch_now())
    assert 0.2 < sum(draws) / len(draws) < 0.4


def test_self_improving_imitates_the_previous_stage_best(tmp_path, monkeypatch):
    config = get_recipe("dm-cl").config(
        "demo",
        task="quadratic",
        curriculum=[20, 40],
        num_epochs=6,
        evaluation_period=1,
        evaluation_epochs=2,
        min_evaluations=1,
        compile=False,
        imitation_ratios=[1.0],
        teachers=["self"],
    )
    trainer = Trainer(config, tmp_path / "run")
    scores = iter([2.0, 3.0, 10.0, 9.0, 9.5])
    monkeypatch.setattr(trainer, "validate", lambda horizon=None: next(scores))
    records = []
    trainer.run(lambda e: records.append(e))
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r.get("imitation") for r in epochs] == [False, False, True, True]
    assert all(r["teacher"] == "self" for r in epochs[2:])
    # The teacher is stage 0's best, frozen: its weights are the stage-0 checkpoint's.
    from l2o.checkpoint import load_rule_checkpoint

    stage0 = load_rule_checkpoint(tmp_path / "run" / "stage-0.safetensors")
    for a, b in zip(stage0.parameters(), trainer.teachers.self_teacher.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not b.requires_grad


def test_several_teachers_take_turns(tmp_path):
    config = tiny_il_config(teachers=["adam", "rmsprop@0.003", "nag"], num_epochs=5)
    records = []
    Trainer(config, tmp_path / "run").run(
        lambda e: records.append(e["teacher"]) if e["type"] == "epoch" else None
    )
    assert records == ["adam", "rmsprop@0.003", "nag", "adam", "rmsprop@0.003"]


def test_joint_mode_trains_on_policy_with_the_imitation_term(tmp_path):
    config = tiny_il_config(imitation_mode="joint", imitation_weight=0.5, num_epochs=2)
    trainer = Trainer(config, tmp_path / "run")
    records = []
    trainer.run(lambda e: records.append(e) if e["type"] == "epoch" else None)
    assert [r["imitation"] for r in records] == [False, False]  # no off-policy epochs
    assert all(r["teacher"] == "adam" and r["imitation_loss"] > 0 for r in records)
    assert trainer.meta_opt.state and not trainer.imitation_opt.state  # one objective, one step
