"""The meta-training loop: epochs of truncated-BPTT unrolls, validation, best checkpoint, resume.

One epoch (docs/method.md 3.1) starts a fresh optimizee population, runs ``horizon`` steps in
unrolls of ``unroll_length`` and takes one meta-optimizer step per unroll. Every
``evaluation_period`` epochs the rule is validated on fresh populations and the best rule so far is
saved.

The trainer composes parts chosen once, when it is built: what an unroll's meta-loss is
(:mod:`l2o.training.epochs`: the sum, L2O-Scale's log objective, or joint imitation), whether some
epochs imitate a teacher off-policy, the meta-step (:mod:`l2o.training.metastep`), validation
(:mod:`l2o.training.validation`), the curriculum (:mod:`l2o.training.curriculum`, which decides the
horizon of each epoch and what a validation means: save, advance, stop) and the run directory
(:mod:`l2o.training.persistence`). The unrolls step with the rule's (compiled) step function.

Everything random in an epoch derives from ``(seed, epoch)``, and the training state is saved
atomically after every epoch, so a killed run resumed with ``resume=True`` continues exactly as
if it had never stopped.

**Data parallelism** (:mod:`l2o.training.distributed`): in a ``torch.distributed`` process group
(``l2o train --nproc N`` or ``torchrun``), or with a ``shard_size``, the instances of every
meta-step are split into shards (:class:`~l2o.training.epochs.ShardPlan`), each rank runs its own
and every rank applies the same reduced meta-gradient, so every decision (skip, curriculum, best)
is the same on every rank. Only rank 0 writes the run directory; the best weights of the run and
of each curriculum stage are also kept in memory, so no rank ever reads a file rank 0 is writing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import torch

from l2o.checkpoint import build_rule, load_rule_checkpoint, save_rule
from l2o.compiling import CompiledStep
from l2o.tasks import get_task
from l2o.tasks.base import derive_seed
from l2o.training.config import (
    ImitationMode,
    ImitationOptimizer,
    RuleState,
    TrainConfig,
)
from l2o.training.curriculum import Curriculum, CurriculumState
from l2o.training.distributed import ShardReducer, current
from l2o.training.epochs import (
    OffPolicyImitation,
    Population,
    epoch_record,
    make_objective,
    on_policy_epoch,
    plan_shards,
    sharded_on_policy_epoch,
)
from l2o.training.imitation import Teachers, freeze
from l2o.training.metastep import MetaStep, StepOutcome, make_meta_optimizer
from l2o.training.persistence import (
    RunDirectory,
    TrainingError,
    TrainSummary,
    capture_state,
    restore_state,
    rule_card,
    summarize,
)
from l2o.training.validation import act_on_validation, validate, validation_due


class Trainer:
    """Meta-trains a learned rule according to a :class:`TrainConfig`, writing into ``out_dir``."""

    def __init__(self, config: TrainConfig, out_dir, resume: bool = False) -> None:
        self.config = c = config
        self.run_dir = RunDirectory(out_dir)
        self.out = self.run_dir.out
        self.device = torch.device(c.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise TrainingError("device 'cuda' was asked for but CUDA is not available; use cpu")
        try:
            self.task = get_task(c.task, **c.task_options)
        except TypeError as err:  # an option the task does not take (e.g. quadratic + sampling)
            raise TrainingError(
                f"task {c.task!r} does not accept the options {c.task_options}: {err}"
            ) from err
        with torch.random.fork_rng(devices=[]):  # the initial weights derive from the seed
            torch.manual_seed(derive_seed(c.seed, "init"))
            self.rule = build_rule(c.model, None)
            if c.model_options:
                self.rule = type(self.rule)(**c.model_options)
        self.rule.to(self.device)
        self.epoch, self.best_score, self.best_epoch = 0, None, None
        self.skipped = self.zeroed = 0
        self.seconds = 0.0
        self.carried_state: list[torch.Tensor] | None = None
        h = c.schedule.horizons
        self.curriculum = Curriculum(tuple(h), c.schedule.min_evaluations) if h else None
        self.stage = CurriculumState()
        self.imitation_epochs = 0
        self.teachers = Teachers(c.imitation.teachers)
        self.objective = make_objective(c, self.task, self.teachers, self.device)
        alternate = c.imitation.enabled and c.imitation.mode is ImitationMode.ALTERNATE
        self.off_policy = OffPolicyImitation(c, self.teachers) if alternate else None
        self.meta_step = MetaStep(self.rule.parameters(), c.meta)
        self._make_optimizers()
        self.ranks = current()
        self.reducer = ShardReducer(self.ranks, self.device)
        # best weights of the run and of each curriculum stage, also kept in memory
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.stage_best_weights: dict[int, dict[str, torch.Tensor]] = {}
        state = self.run_dir.open(c, resume)
        self._make_shard_plan(state)
        if state is not None:
            self._restore(state)
        self.step_fn = CompiledStep(self.rule.step) if c.compile else self.rule.step

    def _make_shard_plan(self, state: dict[str, Any] | None) -> None:
        """Shard the meta-steps when a shard size is set or several ranks run
        (:func:`~l2o.training.epochs.plan_shards`)."""
        saved = json.loads(state["config"]).get("shard_size") if state is not None else None
        try:
            self.config, self.plan, self.objectives = plan_shards(
                self.config, saved, self.reducer, self.task, self.teachers, self.device
            )
        except ValueError as err:
            raise TrainingError(str(err)) from None
        self.meta_step.meta = self.config.meta

    def _make_optimizers(self) -> None:
        c = self.config
        self.meta_opt = make_meta_optimizer(c, self.rule.parameters())
        separate = c.imitation.enabled and c.imitation.optimizer is ImitationOptimizer.SEPARATE
        params = self.rule.parameters()
        self.imitation_opt = make_meta_optimizer(c, params) if separate else self.meta_opt

    # -- state (what a resumed run needs, and the card of a saved rule) ------------------------
    def _state(self) -> dict[str, Any]:
        return capture_state(self)

    def _restore(self, state: dict[str, Any]) -> None:
        restore_state(self, state)
        self._load_self_teacher()
        if self.ranks.main:
            self.run_dir.truncate_metrics(self.epoch)

    def card(self) -> dict[str, Any]:
        return rule_card(self)

    # -- curriculum and teachers ---------------------------------------------------------------
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

    def _load_self_teacher(self) -> None:
        """The self-improving teacher: the previous stage's best rule, frozen."""
        self.teachers.self_teacher = None
        if not self.teachers.needs_self or self.stage.stage == 0:
            return
        weights = self.stage_best_weights.get(self.stage.stage - 1)
        if weights is not None:
            teacher = freeze(self.rule)
            teacher.load_state_dict(weights)
            self.teachers.self_teacher = teacher
            return
        path = self.run_dir.stage_best(self.stage.stage - 1)  # saved before a resume
        if not path.exists():
            raise TrainingError(
                f"cannot resume {self.out}: the self-improving teacher {path} is missing"
            )
        self.teachers.self_teacher = freeze(load_rule_checkpoint(path, device=self.device))

    def imitation_epoch_now(self) -> bool:
        """Whether this epoch imitates a teacher off-policy."""
        return self.off_policy is not None and self.off_policy.due(self.epoch, self.stage.stage)

    # -- training ------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, Any]:
        """One epoch on the current horizon: an off-policy imitation epoch or an on-policy one."""
        horizon, stage = self.horizon, self.stage.stage
        if self.plan is not None:
            result = self._sharded_epoch(horizon, stage)
        elif self.imitation_epoch_now():
            pop = Population.for_epoch(self.task, self.config, self.epoch, self.device)
            result = self.off_policy.epoch(
                self.rule,
                self.step_fn,
                self.task,
                pop,
                horizon,
                self.imitation_epochs,
                self.meta_step,
                self.imitation_opt,
            )
            self.imitation_epochs += 1
        else:
            pop = Population.for_epoch(self.task, self.config, self.epoch, self.device)
            result = on_policy_epoch(
                self.objective,
                self.rule,
                self.step_fn,
                self.task,
                pop,
                self.config,
                horizon,
                self.meta_step,
                self.meta_opt,
                self.carried_state,
                self.epoch,
                stage,
            )
            if self.config.rule_state is RuleState.CARRY:
                self.carried_state = result.final_state
        self.skipped += result.outcomes[StepOutcome.SKIPPED]
        self.zeroed += result.outcomes[StepOutcome.ZEROED]
        stage_index = stage if self.curriculum is not None else None
        return epoch_record(self.config, self.epoch + 1, horizon, stage_index, result)

    def _sharded_epoch(self, horizon: int, stage: int):
        """An epoch over this rank's shards (every rank applies the same meta-steps)."""
        if self.imitation_epoch_now():
            result = self.off_policy.sharded_epoch(
                self.rule,
                self.step_fn,
                self.task,
                self.plan,
                self.epoch,
                horizon,
                self.imitation_epochs,
                self.meta_step,
                self.imitation_opt,
            )
            self.imitation_epochs += 1
            return result
        return sharded_on_policy_epoch(
            self.objectives,
            self.rule,
            self.step_fn,
            self.task,
            self.plan,
            self.config,
            horizon,
            self.meta_step,
            self.meta_opt,
            self.epoch,
            stage,
        )

    def validate(self, horizon: int | None = None) -> float:
        """Score of the current rule on fresh validation populations (lower is better)."""
        horizon = horizon or self.config.horizon
        return validate(self.rule, self.task, self.config, horizon, self.device, self.reducer)

    def _weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.rule.state_dict().items()}

    def save_best(self, stage: int | None = None) -> None:
        """Keep the current weights as the run's best (and ``stage``'s); rank 0 saves them."""
        self.best_weights = self._weights()
        if stage is not None:
            self.stage_best_weights[stage] = self.best_weights
        if self.ranks.main:
            if stage is not None:
                save_rule(self.run_dir.stage_best(stage), self.rule, self.card())
            save_rule(self.run_dir.best, self.rule, self.card())

    def run(self, callback: Callable[[dict[str, Any]], None] | None = None) -> TrainSummary:
        """Train until ``num_epochs`` (or the curriculum ends); Ctrl-C stops after saving the
        last completed epoch."""
        c = self.config
        main = self.ranks.main
        if main:
            self.run_dir.start(c)
        emit = callback or (lambda event: None)
        interrupted = False
        saved = self.epoch  # the last epoch in train_state.pt (a resumed run starts there)
        try:
            while self.epoch < c.num_epochs and not self.stage.done:
                start = time.perf_counter()
                record = self.train_epoch()
                self.epoch += 1
                stage = self.stage if self.curriculum is not None else None
                events = self._validation_events() if validation_due(c, self.epoch, stage) else []
                self.seconds += time.perf_counter() - start
                record["seconds"] = round(self.seconds, 3)
                for event in [*events, record]:
                    if main:
                        self.run_dir.log(event)
                    if event is not record:
                        emit(event)
                if main:
                    self.run_dir.save_state(self._state())
                saved = self.epoch
                emit(record)
        except KeyboardInterrupt:
            interrupted = True
        return summarize(self, saved, interrupted)

    def _validation_events(self) -> list[dict[str, Any]]:
        """Validate and act on the score (:func:`~l2o.training.validation.act_on_validation`)."""
        return act_on_validation(self)
