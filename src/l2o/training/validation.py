"""Validation: the score that gates the best checkpoint and the curriculum (docs/method.md 3.1,
4.2).

Every validation runs ``validation.epochs`` fresh trajectories as one batched population, on the
training split, with no scaling and no meta-updates, never touching the training state. Its
seeds are the same at every validation (common random numbers), so scores are comparable; they are
far from every training seed. :func:`validation_due` is the cadence (with a curriculum, counted
from the start of the current stage); what a score means next (save, advance, stop) is the
:class:`~l2o.training.curriculum.Curriculum`'s decision.

With several ranks (data-parallel meta-training), each rank runs a contiguous block of the
validation seeds and the per-seed losses are gathered in seed order, so every rank computes the
same score. A seed's losses do not depend on the rest of its population, so this is the score a
single process computes.

Ctrl-C (or SIGTERM, which the CLI turns into Ctrl-C) during a validation raises
``KeyboardInterrupt`` out of it: :func:`l2o.evaluation.evaluate` would return the steps done so far,
and a score of a cut trajectory must never be logged or pick the best checkpoint. The trainer then
stops as on any Ctrl-C, with the last epoch whose validation finished saved; ``--resume`` redoes
the interrupted epoch and its validation.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from l2o.checkpoint import load_rule_checkpoint
from l2o.evaluation import evaluate
from l2o.tasks.base import Task
from l2o.training.config import TrainConfig, ValidationScore
from l2o.training.curriculum import Action, CurriculumState
from l2o.training.distributed import ShardReducer, block
from l2o.training.unroll import ObjectiveSubsets, start_trajectory, unroll

#: Validation seeds are ``VALIDATION_SEED_BASE + i`` (training seeds stay below 2**39).
VALIDATION_SEED_BASE = 2**40


def validation_seeds(count: int) -> list[int]:
    """The seeds of a validation population (the same at every validation)."""
    return [VALIDATION_SEED_BASE + i for i in range(count)]


def validation_score(losses_with_initial, unroll_length: int, kind: ValidationScore | str) -> float:
    """Score of a validation population (lower is better).

    ``last-unroll`` sums, over runs, the ``unroll_length + 1`` losses of the final window (the
    original's score); ``trajectory`` sums, over runs, the mean loss of the whole trajectory.
    Non-finite losses make the score ``inf`` (never "improved").
    """
    t = torch.as_tensor(losses_with_initial)
    if ValidationScore(kind) is ValidationScore.LAST_UNROLL:
        score = t[:, -(unroll_length + 1) :].sum().item()
    else:
        score = t.mean(1).sum().item()
    return score if math.isfinite(score) else math.inf


@torch.no_grad()
def validate(
    rule,
    task: Task,
    config: TrainConfig,
    horizon: int,
    device,
    reducer: ShardReducer | None = None,
) -> float:
    """Score of ``rule`` on the validation populations over ``horizon`` steps (with
    ``reducer``, this rank's block of the seeds, gathered: the same score on every rank)."""
    seeds = validation_seeds(config.validation.epochs)
    if reducer is not None and reducer.ranks.world > 1:
        mine = [seeds[i] for i in block(len(seeds), reducer.ranks)]
        if config.validation.score is ValidationScore.FINAL_OBJECTIVE:
            subset = config.meta_objective.subset
            local = final_objectives(rule, task, horizon, mine, subset, device) if mine else None
            local = (local if mine else torch.zeros(0))[:, None]
            score = reducer.gather_rows(local, len(seeds)).reshape(-1).mean().item()
            return score if math.isfinite(score) else math.inf
        local = _trajectory_losses(rule, task, horizon, mine, device) if mine else None
        local = local if mine else torch.zeros(0, horizon + 1, dtype=torch.float64)
        full = reducer.gather_rows(local, len(seeds))
        return validation_score(full, config.unroll_length, config.validation.score)
    if config.validation.score is ValidationScore.FINAL_OBJECTIVE:
        return final_objective(rule, task, horizon, seeds, config.meta_objective.subset, device)
    full = _trajectory_losses(rule, task, horizon, seeds, device)
    return validation_score(full, config.unroll_length, config.validation.score)


def _trajectory_losses(rule, task: Task, horizon: int, seeds: list[int], device) -> torch.Tensor:
    """``[n, horizon + 1]``: each seed's initial loss and its losses along the trajectory."""
    result = evaluate(rule, task, horizon, seeds, split=task.train_split, device=device)
    if result.interrupted:  # Ctrl-C: no score from a cut trajectory (the trainer stops)
        raise KeyboardInterrupt
    full = torch.cat(
        [torch.as_tensor(result.initial_losses)[:, None], torch.as_tensor(result.losses)], 1
    )
    return full.double()  # float64 (as evaluate returns): every rank gathers one dtype


@torch.no_grad()
def final_objective(
    rule, task: Task, horizon: int, seeds: list[int], subset_size: int, device
) -> float:
    """L2O-Scale's validation score (docs/method.md 3.2, without its leaks, 8.2 item 4): fresh
    optimizees and a fresh rule state per seed, ``horizon - 1`` updates on training minibatches,
    then the meta-objective ``f_D`` (the last entry of the last unroll's list) on a subset drawn
    from the validation seeds' own stream; the mean over seeds."""
    score = final_objectives(rule, task, horizon, seeds, subset_size, device).mean().item()
    return score if math.isfinite(score) else math.inf


@torch.no_grad()
def final_objectives(
    rule, task: Task, horizon: int, seeds: list[int], subset_size: int, device
) -> torch.Tensor:
    """``[n]``: each seed's ``f_D`` of :func:`final_objective`."""
    x0 = task.init(seeds, device=device)
    stream = task.stream(seeds, task.train_split, device=device)
    traj = start_trajectory(rule, task, x0, stream, None, seeds)
    if horizon > 1:
        _, _, traj = unroll(rule, task, traj, stream, horizon - 1)
    subset = ObjectiveSubsets(task, seeds, task.train_split, subset_size, device)
    return task.loss(traj.x, subset.next())


def validation_due(config: TrainConfig, epoch: int, stage: CurriculumState | None) -> bool:
    """Whether to validate after ``epoch`` epochs: at the end of training, and every
    ``validation.period`` epochs (with a curriculum, ``stage_evaluation_period`` epochs of the
    current ``stage``)."""
    if epoch == config.num_epochs:
        return True
    if stage is None:
        return epoch % config.validation.period == 0
    return (epoch - stage.start_epoch) % config.stage_evaluation_period(stage.stage) == 0


def act_on_validation(trainer) -> list[dict[str, Any]]:
    """Validate ``trainer``'s rule and act on the score as the curriculum says: keep the best
    (save it), continue, advance to the next stage (restore the stage's best weights, reset the
    meta-optimizer if configured, load the self-teacher, validate the baseline of the new stage)
    or stop (restore the run's best). Returns the metric records describing what happened."""
    horizon = trainer.validation_horizon
    score = trainer.validate(horizon)
    record = {"type": "validation", "epoch": trainer.epoch, "horizon": horizon, "score": score}
    if trainer.curriculum is None:
        improved = trainer.best_score is None or score < trainer.best_score
        if improved:
            trainer.best_score, trainer.best_epoch = score, trainer.epoch
            trainer.save_best()
        return [{**record, "best": trainer.best_score, "improved": improved}]
    stage = trainer.stage.stage
    trainer.stage, action = trainer.curriculum.observe(trainer.stage, score)
    improved = action is Action.IMPROVED
    if improved:
        trainer.best_score, trainer.best_epoch = score, trainer.epoch
        trainer.save_best(stage)
    ongoing = not trainer.stage.done and action is not Action.ADVANCE
    record.update(
        stage=stage,
        best=trainer.stage.best if ongoing else None,
        improved=improved,
        action=action.value,
    )
    if action is Action.IMPROVED or action is Action.CONTINUE:
        return [record]
    # The stage is over: go back to its best rule (weights only, docs/method.md 4.2); when
    # training ends, to the run's best (the last improvement saved).
    advance = action is Action.ADVANCE
    weights = trainer.stage_best_weights.get(stage) if advance else trainer.best_weights
    path = trainer.run_dir.stage_best(stage) if advance else trainer.run_dir.best
    if weights is None and path.exists():  # saved before a resume
        weights = load_rule_checkpoint(path, device=trainer.device).state_dict()
    if weights is not None:
        trainer.rule.load_state_dict(weights)
    if not advance:
        end = {"type": "end", "epoch": trainer.epoch, "stage": trainer.stage.stage}
        return [record, {**end, "reason": trainer.stage.reason}]
    if trainer.config.schedule.reset_meta_optimizer_on_advance:
        trainer._make_optimizers()
    trainer._load_self_teacher()
    baseline_horizon = trainer.validation_horizon
    baseline = trainer.validate(baseline_horizon)
    trainer.stage = trainer.curriculum.start_stage(trainer.stage, baseline, trainer.epoch)
    stage_record = {"type": "stage", "epoch": trainer.epoch, "stage": trainer.stage.stage}
    stage_record.update(horizon=trainer.horizon, validation_horizon=baseline_horizon)
    return [record, {**stage_record, "baseline": baseline}]
