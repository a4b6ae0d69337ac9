"""The curriculum's stage controller (docs/method.md 4.2), driven by scripted validation scores, and
its wiring into the trainer (stage checkpoints, restore on advance, the end of training)."""

import json
import math

import pytest
import torch

from configs import quick_config
from l2o.checkpoint import load_rule_checkpoint
from l2o.training import Trainer, get_recipe
from l2o.training.curriculum import Action, Curriculum, CurriculumState


def play(curriculum, scores, baselines=()):
    """Feed scores in turn; after each ADVANCE take the next baseline. Returns the actions."""
    state, actions, baselines = CurriculumState(), [], list(baselines)
    for score in scores:
        state, action = curriculum.observe(state, score)
        actions.append(action)
        if action is Action.ADVANCE:
            state = curriculum.start_stage(state, baselines.pop(0))
        if state.done:
            break
    return state, actions


def test_stage_lasts_the_minimum_then_advances_at_the_first_non_improvement():
    c = Curriculum((100, 200, 500))
    state, actions = play(c, [10, 9, 8, 7, 7.5], baselines=[50])
    assert actions == [Action.IMPROVED] * 4 + [Action.ADVANCE]
    assert state.stage == 1 and state.best == 50 and state.evaluations == 0
    assert c.train_horizon(state) == 200 and c.validation_horizon(state) == 500


def test_non_improvements_before_the_minimum_do_not_end_a_stage():
    c = Curriculum((100, 200))
    _state, actions = play(c, [10, 11, 9, 9.5], baselines=[40])
    assert actions == [Action.IMPROVED, Action.CONTINUE, Action.IMPROVED, Action.ADVANCE]


def test_a_stage_that_never_beats_its_baseline_stops_training():
    c = Curriculum((100, 200, 500))
    state, actions = play(c, [10, 9, 9.5, 51, 52, 53], baselines=[50])
    assert actions[-4:] == [Action.ADVANCE, Action.CONTINUE, Action.CONTINUE, Action.STOP]
    assert state.done and state.stage == 1 and "did not improve" in state.reason


def test_the_last_stage_validates_on_its_own_horizon_then_finishes():
    c = Curriculum((100, 200))
    state, _actions = play(c, [10, 9, 9.5], baselines=[30])
    assert state.stage == 1 and c.is_last(state) and c.validation_horizon(state) == 200
    state, action = c.observe(state, 29)
    assert action is Action.IMPROVED
    for score in (29.5, 29.6):
        state, action = c.observe(state, score)
    assert action is Action.FINISH and state.done and "last stage" in state.reason
    with pytest.raises(ValueError, match="already ended"):
        c.observe(state, 1.0)


def test_non_finite_scores_never_improve():
    c = Curriculum((100, 200), min_evaluations=2)
    state, actions = play(c, [math.nan, math.inf])
    assert actions == [Action.CONTINUE, Action.STOP]
    state = c.start_stage(CurriculumState(stage=1), math.inf)
    assert state.best is None  # an infinite baseline: any finite score beats it
    assert c.observe(state, 1e9)[1] is Action.IMPROVED


def test_bad_schedules_are_rejected():
    with pytest.raises(ValueError, match="increasing"):
        Curriculum((200, 100))
    with pytest.raises(ValueError, match="at least one"):
        Curriculum(())
    with pytest.raises(ValueError, match="multiple of unroll_length"):
        get_recipe("dm-cl").config("demo", curriculum=[100, 150])


def tiny_cl_config(**overrides):
    settings = dict(
        curriculum=[20, 40, 60],
        num_epochs=40,
        evaluation_period=1,
        evaluation_epochs=2,
        min_evaluations=2,
    )
    return quick_config("dm-cl", **{**settings, **overrides})


def test_trainer_saves_stage_bests_restores_on_advance_and_ends(tmp_path, monkeypatch):
    trainer = Trainer(tiny_cl_config(), tmp_path / "run")
    # Scripted validation scores: stage 0 improves twice then stalls; stage 1's baseline is 5.0,
    # it improves once then stalls; the last stage (baseline 7.0) never beats its baseline.
    scores = iter([3.0, 2.0, 2.5, 5.0, 4.0, 4.5, 7.0, 7.5, 7.6])
    horizons = []

    def scripted(horizon=None):
        horizons.append(horizon)
        return next(scores)

    snapshots = {}

    def remember(event):
        if event["type"] == "validation" and event["improved"]:
            snapshots[event["epoch"]] = [p.detach().clone() for p in trainer.rule.parameters()]

    monkeypatch.setattr(trainer, "validate", scripted)
    summary = trainer.run(remember)
    assert horizons == [40, 40, 40, 60, 60, 60, 60, 60, 60]
    assert summary.extra["stage"] == 2 and "did not improve" in summary.extra["curriculum_end"]
    assert summary.epochs_done == 7 and summary.best_epoch == 4
    # The run's best is stage 1's best (epoch 4), and the rule was restored to it on advance.
    best = load_rule_checkpoint(tmp_path / "run" / "best.safetensors")
    stage1 = load_rule_checkpoint(tmp_path / "run" / "stage-1.safetensors")
    for a, b, c in zip(
        best.parameters(), stage1.parameters(), trainer.rule.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a.detach(), c.detach(), rtol=0, atol=0)
    stage0 = load_rule_checkpoint(tmp_path / "run" / "stage-0.safetensors")
    for a, b in zip(stage0.parameters(), snapshots[2], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    records = [
        json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")[:-1]
    ]
    stages = [r for r in records if r["type"] == "stage"]
    assert [(s["stage"], s["horizon"], s["baseline"]) for s in stages] == [
        (1, 40, 5.0),
        (2, 60, 7.0),
    ]
    assert [r["horizon"] for r in records if r["type"] == "epoch"] == [20] * 3 + [40] * 2 + [60] * 2
    assert records[-2]["type"] == "end"


def test_curriculum_with_imitation_resumes_exactly(tmp_path):
    config = tiny_cl_config(
        num_epochs=8, imitation_ratios=[0.5], evaluation_period=2, min_evaluations=1
    )
    full = Trainer(config, tmp_path / "full")
    full.run()
    part = Trainer(config, tmp_path / "part")

    def kill(event):
        if event["type"] == "epoch" and event["epoch"] == 5:
            raise KeyboardInterrupt

    part.run(kill)
    resumed = Trainer(config, tmp_path / "part", resume=True)
    assert resumed.stage == part.stage and resumed.imitation_epochs == part.imitation_epochs
    resumed.run()
    assert resumed.imitation_epochs == full.imitation_epochs > 0
    assert resumed.stage == full.stage
    for a, b in zip(full.rule.parameters(), resumed.rule.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_stage_evaluation_periods_count_epochs_from_the_stage_start(tmp_path, monkeypatch):
    config = tiny_cl_config(stage_evaluation_periods=[3, 2], num_epochs=12, min_evaluations=1)
    trainer = Trainer(config, tmp_path / "run")
    scores = iter([1.0, 2.0, 5.0, 4.0, 4.5, 6.0, 5.5, 5.8, 9.9])
    monkeypatch.setattr(trainer, "validate", lambda horizon=None: next(scores))
    events = []
    trainer.run(lambda e: events.append(e) if e["type"] != "epoch" else None)
    assert [(e["type"], e["epoch"]) for e in events] == [
        ("validation", 3),
        ("validation", 6),  # stage 0 ends at epoch 6; stage 1 starts there (baseline 5.0)
        ("stage", 6),
        ("validation", 8),
        ("validation", 10),  # stage 1 ends at epoch 10; stage 2 (baseline 6.0)
        ("stage", 10),
        ("validation", 12),
    ]


@pytest.mark.parametrize(
    "recipe",
    ["dm-cl", "dm-il", "dm-cl-il", "rnnprop-cl-il", "scale-cl-il", "scale-cl-self"],
)
@pytest.mark.usefixtures("sample_data")
def test_every_technique_recipe_trains_resumes_and_evaluates(tmp_path, recipe):
    """Each recipe at a tiny size: interrupted after its first epoch, resumed, evaluated; the
    resumed run ends with exactly the weights of an uninterrupted one."""
    from l2o.evaluation import evaluate
    from l2o.tasks import get_task

    scale = recipe.startswith("scale")
    small = dict(
        task="mlp-orig" if scale else "quadratic",
        num_epochs=4,
        evaluation_period=1,
        stage_evaluation_periods=[1],
        evaluation_epochs=1,
        min_evaluations=1,
        compile=False,
    )
    if get_recipe(recipe).settings.get("imitation_ratios"):
        small["imitation_ratios"] = [1.0]
    if get_recipe(recipe).settings.get("curriculum"):
        small["curriculum"] = [20, 40]
    else:
        small["horizon"] = 20
    if scale:
        small["objective_subset"] = 256
    config = get_recipe(recipe).config("demo", **small)

    def kill(event):
        if event["type"] == "epoch" and event["epoch"] == 1:
            raise KeyboardInterrupt

    first = Trainer(config, tmp_path / "run").run(kill)
    assert first.interrupted and first.epochs_done == 1
    resumed = Trainer(config, tmp_path / "run", resume=True)
    summary = resumed.run()
    assert not summary.interrupted and summary.best_path
    full = Trainer(config, tmp_path / "full")
    assert full.run().epochs_done == summary.epochs_done
    for a, b in zip(
        full.rule.state_dict().values(), resumed.rule.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert full.best_score == resumed.best_score
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == list(range(1, summary.epochs_done + 1))
    if recipe == "dm-cl":
        assert not any(r.get("imitation") for r in epochs)
    elif recipe != "scale-cl-self":  # self-improving has no teacher in stage 0
        assert all(r["imitation"] for r in epochs)  # p = 1
    rule = load_rule_checkpoint(summary.best_path)
    task = get_task(config.task, **config.task_options)
    result = evaluate(rule, task, 5, [0])
    assert math.isfinite(float(result.losses[0, -1]))
