"""The meta-training loop: epochs of truncated-BPTT unrolls, validation, best checkpoint, resume.

One epoch (METHOD.md 3.1) starts a fresh optimizee population, runs ``horizon`` steps in unrolls
of ``unroll_length`` and takes one meta-optimizer step (Adam, lr 1e-3) per unroll. Every
``evaluation_period`` epochs the rule is validated on fresh populations (no scaling, no
meta-updates, never touching the training state) and the best rule so far is saved.

Everything random in an epoch derives from ``(seed, epoch)``, and the training state (weights,
meta-optimizer, epoch, best score) is saved atomically after every epoch, so a killed run resumed
with ``resume=True`` continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import math
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
    load_training_state,
    save_rule,
    save_training_state,
)
from l2o.compiling import CompiledStep
from l2o.evaluation import evaluate
from l2o.report import atomic_write_json
from l2o.tasks import get_task
from l2o.tasks.base import derive_seed, generators
from l2o.training.config import TrainConfig
from l2o.training.unroll import (
    ObjectiveSubsets,
    detach,
    start_trajectory,
    unroll,
    unroll_log_objective,
)

TRAIN_STATE = "train_state.pt"
BEST = "best.safetensors"
METRICS = "metrics.jsonl"
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
        self._init_weights(config.seed)
        self.meta_opt = make_meta_optimizer(config, self.rule.parameters())
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
            if k not in ("device", "compile")
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
        return {
            "recipe": c.recipe,
            "budget": c.budget,
            "task": c.task,
            "task_options": c.task_options,
            "epochs": self.epoch,
            "best_epoch": self.best_epoch,
            "horizons": [c.horizon],
            "validation_score": self.best_score,
            "training_seconds": round(self.seconds, 1),
            "package_version": __version__,
            "config": c.to_dict(),
        }

    # -- training ------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, Any]:
        """One epoch: a fresh population, ``horizon / unroll_length`` unrolls and meta-steps."""
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
        traj = start_trajectory(self.rule, self.task, x0, stream, scale, seeds)
        if c.rule_state == "carry" and self.carried_state is not None:
            _, spec = tree_flatten(traj.rule_state)
            traj.rule_state = tree_unflatten([t.to(self.device) for t in self.carried_state], spec)
        subsets = None
        if c.objective == "log-normalized":
            subsets = ObjectiveSubsets(
                self.task, seeds, self.task.train_split, c.objective_subset, self.device
            )
        meta_losses, objectives, f_init = [], [], None
        outcomes = {"skipped": 0, "zeroed": 0}
        for _ in range(c.horizon // c.unroll_length):
            if subsets is None:
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
            outcome = self._meta_step(surrogate, meta_loss)
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
        record = {
            "type": "epoch",
            "epoch": self.epoch + 1,
            "horizon": c.horizon,
            "meta_loss": meta_losses[-1],
            "mean_meta_loss": sum(meta_losses) / len(meta_losses),
            "skipped_meta_steps": outcomes["skipped"],
        }
        if c.nonfinite == "zero":
            record["zeroed_meta_steps"] = outcomes["zeroed"]
        if objectives:
            record["objective"] = objectives[-1]  # f_D at the last list entry, mean over instances
        return record

    def _meta_step(self, surrogate: torch.Tensor, meta_loss: float) -> str:
        """Backpropagate the surrogate and take one meta-step, treating the meta-gradient as
        the config says. Returns ``"step"``, ``"zeroed"`` (stepped after zeroing non-finite
        entries) or ``"skipped"`` (no step: a non-finite meta-loss, or a non-finite gradient with
        ``nonfinite="skip"``)."""
        c = self.config
        self.meta_opt.zero_grad(set_to_none=True)
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
        self.meta_opt.step()
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
        """Train until ``num_epochs``; Ctrl-C stops after saving the last completed epoch."""
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "config.json", c.to_dict())
        emit = callback or (lambda event: None)
        interrupted = False
        try:
            while self.epoch < c.num_epochs:
                start = time.perf_counter()
                record = self.train_epoch()
                self.epoch += 1
                if self.epoch % c.evaluation_period == 0 or self.epoch == c.num_epochs:
                    score = self.validate()
                    improved = self.best_score is None or score < self.best_score
                    if improved:
                        self.best_score, self.best_epoch = score, self.epoch
                    record_v = {
                        "type": "validation",
                        "epoch": self.epoch,
                        "horizon": c.horizon,
                        "score": score,
                        "best": self.best_score,
                        "improved": improved,
                    }
                    self.seconds += time.perf_counter() - start
                    start = time.perf_counter()
                    if improved:
                        self.save_best()
                    self._log(record_v)
                    emit(record_v)
                self.seconds += time.perf_counter() - start
                record["seconds"] = round(self.seconds, 3)
                self._log(record)
                save_training_state(self.out / TRAIN_STATE, self._state())
                emit(record)
        except KeyboardInterrupt:
            interrupted = True
        return TrainSummary(
            out_dir=str(self.out),
            epochs_done=self.epoch,
            best_score=self.best_score,
            best_epoch=self.best_epoch,
            skipped_meta_steps=self.skipped,
            seconds=self.seconds,
            interrupted=interrupted,
            best_path=str(self.out / BEST) if (self.out / BEST).exists() else None,
            extra={"zeroed_meta_steps": self.zeroed} if c.nonfinite == "zero" else {},
        )
