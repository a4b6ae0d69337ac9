"""The meta-training loop: epochs of truncated-BPTT unrolls, validation, best checkpoint, resume.

One epoch (METHOD.md 3.1) starts a fresh optimizee population, runs ``horizon`` steps in unrolls
of ``unroll_length`` and takes one meta-optimizer step (Adam, lr 1e-3) per unroll. Every
``evaluation_period`` epochs the rule is validated on fresh populations (no scaling, no
meta-updates, never touching the training state) and the best rule so far is saved.

The paper's two techniques plug into this loop without touching the models: a
:class:`~l2o.training.curriculum.Curriculum` decides the horizon of each epoch and what a
validation means (save, advance to the next stage, stop), and an epoch may be an *imitation*
epoch (:mod:`l2o.training.imitation`) in which the rule learns to reproduce a teacher's steps.

Everything random in an epoch derives from ``(seed, epoch)``, and the training state (weights,
meta-optimizer, epoch, best score) is saved atomically after every epoch, so a killed run resumed
with ``resume=True`` continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from l2o import __version__
from l2o.checkpoint import (
    build_rule,
    load_rule_checkpoint,
    load_training_state,
    save_rule,
    save_training_state,
)
from l2o.compiling import CompiledStep
from l2o.evaluation import evaluate, init_rule_state
from l2o.report import atomic_write_json
from l2o.tasks import get_task
from l2o.tasks.base import derive_seed, generators
from l2o.training.config import TrainConfig
from l2o.training.curriculum import Action, Curriculum, CurriculumState
from l2o.training.imitation import (
    SELF_TEACHER,
    TeacherStream,
    freeze,
    imitation_unroll,
    joint_unroll,
    make_teacher,
)
from l2o.training.unroll import (
    ObjectiveSubsets,
    detach,
    detach_state,
    start_trajectory,
    unroll,
    unroll_log_objective,
)

TRAIN_STATE = "train_state.pt"
BEST = "best.safetensors"
METRICS = "metrics.jsonl"
#: Settings a resumed run may change: where it runs, and how long it trains.
RESUMABLE_CHANGES = ("device", "compile", "num_epochs")
#: The best rule of curriculum stage ``s`` (restored when the stage ends).
STAGE_BEST = "stage-{}.safetensors"
VALIDATION_SEED_BASE = 2**40
#: L2O-Scale's RMSProp meta-optimizer (METHOD.md 3.2): decay and epsilon.
RMSPROP_DECAY = 0.9
RMSPROP_EPS = 1e-20


class TrainingError(RuntimeError):
    """A training run that cannot start or continue (bad directory, foreign state, ...)."""


@dataclass
class TrainSummary:
    """What a finished (or interrupted) run reports."""

    out_dir: str
    epochs_done: int
    best_score: float | None
    best_epoch: int | None
    skipped_meta_steps: int
    seconds: float
    interrupted: bool
    best_path: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def epoch_seeds(run_seed: int, epoch: int, instances: int) -> list[int]:
    """Optimizee seeds of one training epoch (distinct from validation seeds)."""
    base = derive_seed(run_seed, "train") % 2**39
    return [base + epoch * instances + i for i in range(instances)]


def validation_score(losses_with_initial, unroll_length: int, kind: str) -> float:
    """Score of a validation population (lower is better).

    ``last-unroll`` sums, over runs, the ``unroll_length + 1`` losses of the final window (the
    original's score); ``trajectory`` sums, over runs, the mean loss of the whole trajectory.
    Non-finite losses make the score ``inf`` (never "improved").
    """
    t = torch.as_tensor(losses_with_initial)
    score = (
        t[:, -(unroll_length + 1) :].sum().item()
        if kind == "last-unroll"
        else t.mean(1).sum().item()
    )
    return score if math.isfinite(score) else math.inf


def make_meta_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """Adam (TF's defaults; L2O-DM/RNNprop) or L2O-Scale's RMSProp.

    The RMSProp is TensorFlow 1's ``tf.train.RMSPropOptimizer`` as the original uses it: decay 0.9,
    epsilon 1e-20, no momentum, and mean squares initialised to **1** (TF1's slot initialiser;
    ``torch.optim.RMSprop`` starts them at 0, which would make the first steps about
    ``lr * sqrt(10)`` per weight whatever the gradient). TF adds epsilon under the square root,
    torch after it; at 1e-20 the two agree to float precision.
    """
    params = list(params)
    if config.meta_optimizer == "adam":
        return torch.optim.Adam(params, lr=config.meta_lr)
    opt = torch.optim.RMSprop(params, lr=config.meta_lr, alpha=RMSPROP_DECAY, eps=RMSPROP_EPS)
    for p in params:
        opt.state[p] = {"step": torch.zeros(()), "square_avg": torch.ones_like(p)}
    return opt


class Trainer:
    """Meta-trains a learned rule according to a :class:`TrainConfig`, writing into ``out_dir``."""

    def __init__(self, config: TrainConfig, out_dir: Path, resume: bool = False) -> None:
        self.config = config
        self.out = Path(out_dir)
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError("device 'cuda' was asked for but CUDA is not available; use cpu")
        try:
            self.task = get_task(config.task, **config.task_options)
        except TypeError as err:  # an option the task does not take (e.g. quadratic + sampling)
            raise TrainingError(
                f"task {config.task!r} does not accept the options {config.task_options}: {err}"
            ) from err
        self.rule = build_rule(config.model, None)
        if config.model_options:
            self.rule = type(self.rule)(**config.model_options)
        self.rule.to(self.device)
        self.epoch = 0
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.skipped = 0
        self.zeroed = 0
        self.seconds = 0.0
        self.carried_state: list[torch.Tensor] | None = None
        self.curriculum = (
            Curriculum(tuple(config.curriculum), config.min_evaluations)
            if config.curriculum
            else None
        )
        self.stage = CurriculumState()
        self.imitation_epochs = 0
        self.self_teacher: torch.nn.Module | None = None
        self._init_weights(config.seed)
        self.meta_opt = make_meta_optimizer(config, self.rule.parameters())
        self.imitation_opt = (
            make_meta_optimizer(config, self.rule.parameters())
            if config.imitation_ratios and config.imitation_optimizer == "separate"
            else self.meta_opt
        )
        state_path = self.out / TRAIN_STATE
        if state_path.exists():
            if not resume:
                raise TrainingError(
                    f"{self.out} already holds a training run ({TRAIN_STATE}); pass --resume to "
                    "continue it, or choose another --out"
                )
            self._restore(load_training_state(state_path))
        elif resume and self.out.exists() and any(self.out.iterdir()):
            raise TrainingError(f"--resume: no {TRAIN_STATE} in {self.out}; nothing to resume")
        self.step_fn = CompiledStep(self.rule.step) if config.compile else self.rule.step

    # -- state ---------------------------------------------------------------------------------
    def _init_weights(self, seed: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "init"))
            fresh = build_rule(self.config.model, None)
            if self.config.model_options:
                fresh = type(fresh)(**self.config.model_options)
        self.rule.load_state_dict(fresh.state_dict())

    def _state(self) -> dict[str, Any]:
        return {
            "format": "l2o-train-v1",
            "config": json.dumps(self.config.to_dict()),
            "rule": {k: v.detach().cpu() for k, v in self.rule.state_dict().items()},
            "meta_optimizer": self.meta_opt.state_dict(),
            "epoch": self.epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "skipped": self.skipped,
            "seconds": self.seconds,
            "zeroed": self.zeroed,
            "carried_rule_state": self.carried_state,
            "curriculum": self.stage.to_dict(),
            "imitation_epochs": self.imitation_epochs,
            "imitation_optimizer": (
                self.imitation_opt.state_dict() if self.imitation_opt is not self.meta_opt else None
            ),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("format") != "l2o-train-v1":
            raise TrainingError(f"{self.out / TRAIN_STATE} is not an l2o training state")
        saved = json.loads(state["config"])
        mine = self.config.to_dict()
        defaults = TrainConfig.defaults()
        # A setting added after the run was saved is absent from its config: it ran with the
        # setting's default, so it matches exactly when the current value is that default.
        differ = {
            k
            for k in mine
            if k not in RESUMABLE_CHANGES
            and (saved[k] != mine[k] if k in saved else mine[k] != defaults[k])
        }
        if differ:
            details = ", ".join(
                f"{k}: saved {saved[k]!r} vs now {mine[k]!r}"
                if k in saved
                else f"{k}: saved run predates it (default {defaults[k]!r}) vs now {mine[k]!r}"
                for k in sorted(differ)
            )
            raise TrainingError(
                f"cannot resume {self.out}: its run used other settings ({details}); "
                "resume with the same recipe, budget and seed, or choose another --out"
            )
        self.rule.load_state_dict(state["rule"])
        self.meta_opt.load_state_dict(state["meta_optimizer"])
        self.epoch = state["epoch"]
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.skipped, self.seconds = state["skipped"], state["seconds"]
        self.zeroed = state.get("zeroed", 0)
        self.carried_state = state.get("carried_rule_state")
        if state.get("curriculum"):
            self.stage = CurriculumState.from_dict(state["curriculum"])
        self.imitation_epochs = state.get("imitation_epochs", 0)
        if state.get("imitation_optimizer") is not None and self.imitation_opt is not self.meta_opt:
            self.imitation_opt.load_state_dict(state["imitation_optimizer"])
        self._load_self_teacher()
        self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        """Drop metric lines of epochs after the saved state (work lost to the kill)."""
        path = self.out / METRICS
        if not path.exists():
            return
        keep = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("epoch", 0) <= self.epoch
        ]
        path.write_text("".join(f"{line}\n" for line in keep))

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.out / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")

    def card(self) -> dict[str, Any]:
        c = self.config
        card = {
            "recipe": c.recipe,
            "budget": c.budget,
            "task": c.task,
            "task_options": c.task_options,
            "epochs": self.epoch,
            "best_epoch": self.best_epoch,
            "horizons": c.horizons[: self.stage.stage + 1] if self.curriculum else [c.horizon],
            "validation_score": self.best_score,
            "validation_horizon": self.validation_horizon,
            "training_seconds": round(self.seconds, 1),
            "package_version": __version__,
            "config": c.to_dict(),
        }
        if self.curriculum:
            card["curriculum_stage"] = self.stage.stage
        if c.imitation_ratios:
            card["imitation_epochs"] = self.imitation_epochs
        return card

    # -- curriculum and imitation ----------------------------------------------------------------
    @property
    def horizon(self) -> int:
        """The training horizon of the current epoch."""
        if self.curriculum is None:
            return self.config.horizon
        return self.curriculum.train_horizon(self.stage)

    @property
    def validation_horizon(self) -> int:
        if self.curriculum is None:
            return self.config.horizon
        return self.curriculum.validation_horizon(self.stage)

    def _stage_path(self, stage: int) -> Path:
        return self.out / STAGE_BEST.format(stage)

    def _load_self_teacher(self) -> None:
        """The self-improving teacher: the previous stage's best rule, frozen."""
        self.self_teacher = None
        if SELF_TEACHER not in self.config.teachers or self.stage.stage == 0:
            return
        path = self._stage_path(self.stage.stage - 1)
        if not path.exists():
            raise TrainingError(
                f"cannot resume {self.out}: the self-improving teacher {path} is missing"
            )
        self.self_teacher = freeze(load_rule_checkpoint(path, device=self.device))

    def imitation_epoch_now(self) -> bool:
        """Whether this epoch imitates a teacher (a per-(seed, epoch) draw, so resumes agree)."""
        c = self.config
        ratio = c.imitation_ratio(self.stage.stage)
        if ratio <= 0 or c.imitation_mode == "joint":
            return False
        if SELF_TEACHER in c.teachers and self.self_teacher is None:
            return False  # stage 0 of self-improving: no teacher yet
        draw = random.Random(derive_seed(c.seed, "imitation") * 1_000_003 + self.epoch).random()
        return draw < ratio

    def _teacher(self, count: int):
        """The teacher of the ``count``-th imitation epoch (round-robin) and its name."""
        spec = self.config.teachers[count % len(self.config.teachers)]
        if spec == SELF_TEACHER:
            return self.self_teacher, spec
        return make_teacher(spec), spec

    # -- training ------------------------------------------------------------------------------
    def _population(self):
        """This epoch's fresh optimizee population: seeds, ``x0``, minibatches, scaling."""
        c = self.config
        seeds = epoch_seeds(c.seed, self.epoch, c.instances)
        x0 = self.task.init(seeds, device=self.device)
        stream = self.task.stream(seeds, self.task.train_split, device=self.device)
        scale = None
        if c.random_scaling:
            u = torch.stack(
                [
                    torch.rand(self.task.num_params, generator=g)
                    for g in generators(seeds, "scaling")
                ]
            )
            scale = torch.exp((2 * u - 1) * c.scaling_bound).to(self.device)
        return seeds, x0, stream, scale

    def train_epoch(self) -> dict[str, Any]:
        """One epoch: an imitation epoch or an ordinary one, on the current horizon."""
        if self.imitation_epoch_now():
            return self.imitation_epoch()
        return self.meta_epoch()

    def meta_epoch(self) -> dict[str, Any]:
        """One epoch: a fresh population, ``horizon / unroll_length`` unrolls and meta-steps."""
        c = self.config
        horizon = self.horizon
        seeds, x0, stream, scale = self._population()
        traj = start_trajectory(self.rule, self.task, x0, stream, scale, seeds)
        if c.rule_state == "carry" and self.carried_state is not None:
            _, spec = tree_flatten(traj.rule_state)
            traj.rule_state = tree_unflatten([t.to(self.device) for t in self.carried_state], spec)
        subsets = None
        if c.objective == "log-normalized":
            subsets = ObjectiveSubsets(
                self.task, seeds, self.task.train_split, c.objective_subset, self.device
            )
        joint = c.imitation_mode == "joint" and c.imitation_ratio(self.stage.stage) > 0
        if joint:
            teacher, teacher_name = self._teacher(self.epoch)
            with torch.no_grad():
                teacher_state = teacher.init(traj.x, self.task.layout)
        meta_losses, objectives, il_losses, f_init = [], [], [], None
        outcomes = {"skipped": 0, "zeroed": 0}
        for _ in range(horizon // c.unroll_length):
            if joint:
                surrogate, losses, il, traj, teacher_state = joint_unroll(
                    self,
                    teacher,
                    teacher_state,
                    self.task,
                    traj,
                    stream,
                    c.unroll_length,
                    c.imitation_weight,
                )
                meta_loss = losses.sum(0).mean().item()
                il_losses.append(il.mean().item())
            elif subsets is None:
                surrogate, losses, traj = unroll(self, self.task, traj, stream, c.unroll_length)
                meta_loss = losses.sum(0).mean().item()
            else:
                out = unroll_log_objective(
                    self, self.task, traj, stream, subsets.next(), c.unroll_length, f_init
                )
                surrogate, traj, f_init = out.surrogate, out.traj, out.f_init
                meta_loss = out.meta_loss.mean().item()
                objectives.append(out.objectives[-1].mean().item())
            meta_losses.append(meta_loss)
            outcome = self._meta_step(surrogate, meta_loss, self.meta_opt)
            if outcome in outcomes:
                outcomes[outcome] += 1
            traj = detach(traj)
            if not math.isfinite(meta_loss):
                break  # the optimizee diverged: nothing more to learn from this trajectory
        if c.rule_state == "carry":
            leaves, _ = tree_flatten(traj.rule_state)
            finite = math.isfinite(meta_losses[-1]) and all(
                torch.isfinite(t).all() for t in leaves if t.is_floating_point()
            )
            self.carried_state = [t.detach().cpu() for t in leaves] if finite else None
        self.skipped += outcomes["skipped"]
        self.zeroed += outcomes["zeroed"]
        record = self._epoch_record(horizon, meta_losses, outcomes)
        if objectives:
            record["objective"] = objectives[-1]  # f_D at the last list entry, mean over instances
        if joint:
            record["teacher"] = teacher_name
            record["imitation_loss"] = il_losses[-1]
        return record

    def imitation_epoch(self) -> dict[str, Any]:
        """One off-policy imitation epoch (METHOD.md 5.1/5.2): a teacher optimizes a fresh
        population over the current horizon; the rule, fed the teacher's gradients from a fresh
        state, is trained to output the teacher's steps, one meta-step per unroll."""
        c = self.config
        horizon = self.horizon
        seeds, x0, stream, scale = self._population()
        teacher, teacher_name = self._teacher(self.imitation_epochs)
        teachers = TeacherStream(
            teacher, self.task, x0, stream, seeds, scale, steps_per_label=c.teacher_steps
        )
        state = init_rule_state(self.rule, teachers.x, self.task, seeds)
        time_weight = 1.0 if c.imitation_time_weight == "sum" else 1.0 / c.unroll_length
        il_losses, teacher_losses = [], []
        outcomes = {"skipped": 0, "zeroed": 0}
        for _ in range(horizon // c.unroll_length):
            steps = teachers.next(c.unroll_length)
            loss, per_instance, state = imitation_unroll(self, steps, state, time_weight)
            value = per_instance.mean().item()
            il_losses.append(value)
            teacher_losses.append(steps.losses.sum(0).mean().item())
            outcome = self._meta_step(loss, value, self.imitation_opt)
            if outcome in outcomes:
                outcomes[outcome] += 1
            state = detach_state(state)
            if not math.isfinite(teacher_losses[-1]):
                break  # the teacher diverged: its steps teach nothing more
        self.imitation_epochs += 1
        self.skipped += outcomes["skipped"]
        self.zeroed += outcomes["zeroed"]
        record = self._epoch_record(horizon, teacher_losses, outcomes)
        record.update(
            imitation=True,
            teacher=teacher_name,
            imitation_loss=il_losses[-1],
            mean_imitation_loss=sum(il_losses) / len(il_losses),
        )
        return record

    def _epoch_record(self, horizon: int, meta_losses: list[float], outcomes) -> dict[str, Any]:
        record = {
            "type": "epoch",
            "epoch": self.epoch + 1,
            "horizon": horizon,
            "meta_loss": meta_losses[-1],
            "mean_meta_loss": sum(meta_losses) / len(meta_losses),
            "skipped_meta_steps": outcomes["skipped"],
        }
        if self.curriculum is not None:
            record["stage"] = self.stage.stage
        if self.config.imitation_ratios:
            record["imitation"] = False
        if self.config.nonfinite == "zero":
            record["zeroed_meta_steps"] = outcomes["zeroed"]
        return record

    def _meta_step(
        self,
        surrogate: torch.Tensor,
        meta_loss: float,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> str:
        """Backpropagate the surrogate and take one meta-step, treating the meta-gradient as
        the config says. Returns ``"step"``, ``"zeroed"`` (stepped after zeroing non-finite
        entries) or ``"skipped"`` (no step: a non-finite meta-loss, or a non-finite gradient with
        ``nonfinite="skip"``)."""
        c = self.config
        optimizer = optimizer or self.meta_opt
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(meta_loss):
            return "skipped"
        surrogate.backward()
        grads = [p.grad for p in self.rule.parameters() if p.grad is not None]
        if not grads:
            return "skipped"
        zeroed = False
        if c.nonfinite == "skip":
            if not all(torch.isfinite(g).all() for g in grads):
                return "skipped"
        else:
            for g in grads:
                bad = ~torch.isfinite(g)
                if bad.any():
                    g.masked_fill_(bad, 0.0)
                    zeroed = True
        if c.grad_clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.rule.parameters(), c.grad_clip_value)
        if c.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.rule.parameters(), c.grad_clip)
        optimizer.step()
        return "zeroed" if zeroed else "step"

    # The trainer is the rule the unroll steps with, so that a compiled step can stand in;
    # initial states come from the rule itself (start_trajectory(self.rule, ...)).
    def step(self, grad, state):
        return self.step_fn(grad, state)

    @torch.no_grad()
    def validate(self, horizon: int | None = None) -> float:
        """Score of the current rule on fresh validation populations (lower is better)."""
        c = self.config
        horizon = horizon or c.horizon
        seeds = [VALIDATION_SEED_BASE + i for i in range(c.evaluation_epochs)]
        if c.validation_score == "final-objective":
            return self._final_objective(horizon, seeds)
        result = evaluate(
            self.rule, self.task, horizon, seeds, split=self.task.train_split, device=self.device
        )
        full = torch.cat(
            [torch.as_tensor(result.initial_losses)[:, None], torch.as_tensor(result.losses)], 1
        )
        return validation_score(full, c.unroll_length, c.validation_score)

    def _final_objective(self, horizon: int, seeds: list[int]) -> float:
        """L2O-Scale's validation score (METHOD.md 3.2, without its leaks, 8.2 item 4): fresh
        optimizees and a fresh rule state per seed, ``horizon - 1`` updates on training
        minibatches, then the meta-objective ``f_D`` (the last entry of the last unroll's list) on
        a subset drawn from the validation seeds' own stream; the mean over seeds."""
        c, task = self.config, self.task
        x0 = task.init(seeds, device=self.device)
        stream = task.stream(seeds, task.train_split, device=self.device)
        traj = start_trajectory(self.rule, task, x0, stream, None, seeds)
        if horizon > 1:
            _, _, traj = unroll(self.rule, task, traj, stream, horizon - 1)
        subset = ObjectiveSubsets(task, seeds, task.train_split, c.objective_subset, self.device)
        score = task.loss(traj.x, subset.next()).mean().item()
        return score if math.isfinite(score) else math.inf

    def save_best(self) -> None:
        save_rule(self.out / BEST, self.rule, self.card())

    def run(self, callback: Callable[[dict[str, Any]], None] | None = None) -> TrainSummary:
        """Train until ``num_epochs`` (or the curriculum ends); Ctrl-C stops after saving the
        last completed epoch."""
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "config.json", c.to_dict())
        emit = callback or (lambda event: None)
        interrupted = False
        try:
            while self.epoch < c.num_epochs and not self.stage.done:
                start = time.perf_counter()
                record = self.train_epoch()
                self.epoch += 1
                events = []
                if self._validation_due():
                    events = self._validation_events()
                self.seconds += time.perf_counter() - start
                record["seconds"] = round(self.seconds, 3)
                for event in events:
                    self._log(event)
                    emit(event)
                self._log(record)
                save_training_state(self.out / TRAIN_STATE, self._state())
                emit(record)
        except KeyboardInterrupt:
            interrupted = True
        extra: dict[str, Any] = {"zeroed_meta_steps": self.zeroed} if c.nonfinite == "zero" else {}
        if self.curriculum is not None:
            extra.update(
                stage=self.stage.stage,
                horizon=self.horizon,
                curriculum_end=self.stage.reason,
            )
        if c.imitation_ratios:
            extra["imitation_epochs"] = self.imitation_epochs
        return TrainSummary(
            out_dir=str(self.out),
            epochs_done=self.epoch,
            best_score=self.best_score,
            best_epoch=self.best_epoch,
            skipped_meta_steps=self.skipped,
            seconds=self.seconds,
            interrupted=interrupted,
            best_path=str(self.out / BEST) if (self.out / BEST).exists() else None,
            extra=extra,
        )

    def _validation_due(self) -> bool:
        c = self.config
        if self.epoch == c.num_epochs:
            return True
        if self.curriculum is None:
            return self.epoch % c.evaluation_period == 0
        period = c.stage_evaluation_period(self.stage.stage)
        return (self.epoch - self.stage.start_epoch) % period == 0

    def _validation_events(self) -> list[dict[str, Any]]:
        """Validate, act on the result (save, advance, stop) and describe what happened."""
        horizon = self.validation_horizon
        score = self.validate(horizon)
        record = {
            "type": "validation",
            "epoch": self.epoch,
            "horizon": horizon,
            "score": score,
        }
        if self.curriculum is None:
            improved = self.best_score is None or score < self.best_score
            if improved:
                self.best_score, self.best_epoch = score, self.epoch
                self.save_best()
            return [{**record, "best": self.best_score, "improved": improved}]
        stage = self.stage.stage
        self.stage, action = self.curriculum.observe(self.stage, score)
        improved = action is Action.IMPROVED
        if improved:
            self.best_score, self.best_epoch = score, self.epoch
            save_rule(self._stage_path(stage), self.rule, self.card())
            self.save_best()
        record.update(
            stage=stage,
            best=self.stage.best if not self.stage.done and action is not Action.ADVANCE else None,
            improved=improved,
            action=action.value,
        )
        events = [record]
        if action is Action.IMPROVED or action is Action.CONTINUE:
            record["best"] = self.stage.best
            return events
        # The stage is over: go back to its best rule (weights only, METHOD.md 4.2); when
        # training ends, to the run's best (the last improvement saved).
        path = self._stage_path(stage) if action is Action.ADVANCE else self.out / BEST
        if path.exists():
            best = load_rule_checkpoint(path, device=self.device)
            self.rule.load_state_dict(best.state_dict())
        if action is Action.ADVANCE:
            if self.config.reset_meta_optimizer_on_advance:
                self.meta_opt = make_meta_optimizer(self.config, self.rule.parameters())
                if self.config.imitation_optimizer == "separate" and self.config.imitation_ratios:
                    self.imitation_opt = make_meta_optimizer(self.config, self.rule.parameters())
                else:
                    self.imitation_opt = self.meta_opt
            self._load_self_teacher()
            baseline_horizon = self.validation_horizon
            baseline = self.validate(baseline_horizon)
            self.stage = self.curriculum.start_stage(self.stage, baseline, self.epoch)
            events.append(
                {
                    "type": "stage",
                    "epoch": self.epoch,
                    "stage": self.stage.stage,
                    "horizon": self.horizon,
                    "validation_horizon": baseline_horizon,
                    "baseline": baseline,
                }
            )
        else:
            events.append(
                {
                    "type": "end",
                    "epoch": self.epoch,
                    "stage": self.stage.stage,
                    "reason": self.stage.reason,
                }
            )
        return events
