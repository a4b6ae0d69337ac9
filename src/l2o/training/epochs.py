"""What one training epoch does, chosen once per run (docs/method.md 3.1, 3.2, 5).

An **on-policy** epoch starts a fresh optimizee population and runs ``horizon / T`` unrolls of
the rule, one meta-step per unroll. What an unroll's meta-loss is depends on the run and is an
:class:`UnrollObjective` picked when the trainer is built (:func:`make_objective`):

* :class:`SumObjective`: the sum of the ``T + 1`` minibatch losses (L2O-DM, RNNprop);
* :class:`LogObjective`: L2O-Scale's log-normalized objective on a meta-objective subset;
* :class:`JointImitation`: the sum plus ``lambda`` times the imitation loss against a teacher fed
  the same gradients (in the stages whose imitation ratio is positive).

An **off-policy imitation** epoch (:class:`OffPolicyImitation`) instead lets a teacher optimize
the population and trains the rule to reproduce its steps. Everything random derives from
``(seed, epoch)``, so a resumed run repeats exactly what an uninterrupted one does.

**Sharded** epochs (data-parallel meta-training, :mod:`l2o.training.distributed`): with a
:class:`ShardPlan`, the population of every meta-step is split into shards of consecutive
instance seeds, this rank runs its own shards, and each meta-step applies the shards' rows summed
in shard order (:func:`sharded_on_policy_epoch`, :meth:`OffPolicyImitation.sharded_epoch`). The
sum objective and off-policy imitation are sharded; the log objective, joint imitation and a
carried rule state are not (the trainer refuses them with shards).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from l2o.evaluation import init_rule_state
from l2o.tasks.base import BatchStream, Task, derive_seed, generators
from l2o.training.config import (
    ImitationMode,
    NonFinite,
    Objective,
    RuleState,
    TimeWeight,
    TrainConfig,
)
from l2o.training.distributed import ShardReducer, resolve_shard_size, shard_bounds
from l2o.training.imitation import Teachers, TeacherStream, imitation_unroll, joint_unroll
from l2o.training.metastep import MetaStep, StepOutcome
from l2o.training.unroll import (
    ObjectiveSubsets,
    Stepper,
    Trajectory,
    detach,
    detach_state,
    start_trajectory,
    unroll,
    unroll_log_objective,
)


def epoch_seeds(run_seed: int, epoch: int, instances: int) -> list[int]:
    """Optimizee seeds of one training epoch (distinct from validation seeds)."""
    base = derive_seed(run_seed, "train") % 2**39
    return [base + epoch * instances + i for i in range(instances)]


@dataclass
class Population:
    """An epoch's fresh optimizees: seeds, ``x0``, minibatches and random-scaling factors."""

    seeds: list[int]
    x0: Tensor
    stream: BatchStream
    scale: Tensor | None

    @classmethod
    def for_epoch(
        cls,
        task: Task,
        config: TrainConfig,
        epoch: int,
        device,
        part: tuple[int, int] | None = None,
    ) -> Population:
        """The epoch's population, or its instances ``part = (start, stop)`` (a shard: every
        instance's data derives from its own seed, so a shard is exactly that part)."""
        seeds = epoch_seeds(config.seed, epoch, config.instances)
        if part is not None:
            seeds = seeds[part[0] : part[1]]
        x0 = task.init(seeds, device=device)
        stream = task.stream(seeds, task.train_split, device=device)
        scale = None
        if config.random_scaling:
            u = torch.stack(
                [torch.rand(task.num_params, generator=g) for g in generators(seeds, "scaling")]
            )
            scale = torch.exp((2 * u - 1) * config.scaling_bound).to(device)
        return cls(seeds, x0, stream, scale)


@dataclass
class ShardPlan:
    """The shards of every meta-step (``bounds``) and those this rank runs (``local``)."""

    bounds: list[tuple[int, int]]
    local: range
    instances: int
    reducer: ShardReducer

    @classmethod
    def make(cls, instances: int, shard_size: int, reducer: ShardReducer) -> ShardPlan:
        from l2o.training.distributed import block

        bounds = shard_bounds(instances, shard_size)
        return cls(bounds, block(len(bounds), reducer.ranks), instances, reducer)

    def populations(self, task: Task, config: TrainConfig, epoch: int, device) -> list[Population]:
        return [
            Population.for_epoch(task, config, epoch, device, self.bounds[i]) for i in self.local
        ]

    def weights(self) -> list[float]:
        """Each local shard's share of the population (its instances / ``instances``)."""
        return [(self.bounds[i][1] - self.bounds[i][0]) / self.instances for i in self.local]

    def reduce(self, rows: list[Tensor]) -> Tensor:
        """Every shard's row summed in shard order (identical on every rank)."""
        return self.reducer.sum_in_order(rows, len(self.bounds))


@dataclass
class EpochResult:
    """What an epoch reports: its per-unroll losses (the meta-losses, or the teacher's losses in
    an imitation epoch), the meta-steps' outcomes, and entries for its metrics record."""

    losses: list[float]
    outcomes: Counter = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)
    final_state: list[Tensor] | None = None  # the rule state to carry (rule_state="carry")


class UnrollObjective(Protocol):
    """The meta-loss of an on-policy epoch's unrolls."""

    def begin(self, step: Stepper, pop: Population, traj: Trajectory, epoch: int, stage: int):
        """Set up for an epoch (its stream, subsets, teacher)."""

    def unroll(self, traj: Trajectory) -> tuple[Tensor, float, Trajectory]:
        """One unroll: ``(surrogate, meta_loss, new trajectory still carrying the graph)``."""

    def record(self) -> dict[str, Any]:
        """The epoch's extra metrics."""


class SumObjective:
    """The sum of the unroll's ``T + 1`` minibatch losses (docs/method.md 3.1)."""

    def __init__(self, task: Task, length: int) -> None:
        self.task, self.length = task, length

    def begin(self, step, pop, traj, epoch, stage) -> None:
        self.step, self.stream = step, pop.stream

    def unroll(self, traj):
        surrogate, losses, traj = unroll(self.step, self.task, traj, self.stream, self.length)
        return surrogate, losses.sum(0).mean().item(), traj

    def record(self) -> dict[str, Any]:
        return {}


class LogObjective(SumObjective):
    """L2O-Scale's log-normalized objective on a fresh data subset per unroll (docs/method.md
    3.2)."""

    def __init__(self, task: Task, length: int, subset: int, device) -> None:
        super().__init__(task, length)
        self.subset, self.device = subset, device

    def begin(self, step, pop, traj, epoch, stage) -> None:
        super().begin(step, pop, traj, epoch, stage)
        split = self.task.train_split
        self.subsets = ObjectiveSubsets(self.task, pop.seeds, split, self.subset, self.device)
        self.f_init, self.objectives = None, []

    def unroll(self, traj):
        out = unroll_log_objective(
            self.step, self.task, traj, self.stream, self.subsets.next(), self.length, self.f_init
        )
        self.f_init = out.f_init
        self.objectives.append(out.objectives[-1].mean().item())
        return out.surrogate, out.meta_loss.mean().item(), out.traj

    def record(self) -> dict[str, Any]:
        # f_D at the last list entry, mean over instances
        return {"objective": self.objectives[-1]} if self.objectives else {}


class JointImitation(SumObjective):
    """On-policy imitation: the sum plus ``weight`` times the imitation loss against a teacher
    fed the same gradients, in the stages whose imitation ratio is positive (docs/method.md 5)."""

    def __init__(self, task: Task, length: int, config: TrainConfig, teachers: Teachers) -> None:
        super().__init__(task, length)
        self.imitation, self.teachers = config.imitation, teachers

    def begin(self, step, pop, traj, epoch, stage) -> None:
        super().begin(step, pop, traj, epoch, stage)
        self.active = self.imitation.ratio(stage) > 0
        self.il_losses: list[float] = []
        if self.active:
            self.teacher, self.name = self.teachers.get(epoch)
            with torch.no_grad():
                self.teacher_state = self.teacher.init(traj.x, self.task.layout)

    def unroll(self, traj):
        if not self.active:
            return super().unroll(traj)
        surrogate, losses, il, traj, self.teacher_state = joint_unroll(
            self.step,
            self.teacher,
            self.teacher_state,
            self.task,
            traj,
            self.stream,
            self.length,
            self.imitation.weight,
        )
        self.il_losses.append(il.mean().item())
        return surrogate, losses.sum(0).mean().item(), traj

    def record(self) -> dict[str, Any]:
        if not self.active:
            return {}
        return {"teacher": self.name, "imitation_loss": self.il_losses[-1]}


def make_objective(config: TrainConfig, task: Task, teachers: Teachers, device) -> UnrollObjective:
    """The run's unroll objective, chosen once from the configuration."""
    if config.imitation.enabled and config.imitation.mode is ImitationMode.JOINT:
        return JointImitation(task, config.unroll_length, config, teachers)
    if config.meta_objective.kind is Objective.LOG_NORMALIZED:
        return LogObjective(task, config.unroll_length, config.meta_objective.subset, device)
    return SumObjective(task, config.unroll_length)


def plan_shards(
    config: TrainConfig,
    saved_shard_size: int | None,
    reducer: ShardReducer,
    task: Task,
    teachers: Teachers,
    device,
) -> tuple[TrainConfig, ShardPlan | None, list[UnrollObjective] | None]:
    """The run's shard plan: ``(config with its shard size, plan, one objective per local
    shard)``, or no plan (``None, None``) for today's unsharded path. A resumed run without a
    shard size keeps the one it was saved with (``saved_shard_size``); several ranks with none
    set use one instance per shard. Raises ``ValueError`` for what cannot be sharded yet."""
    c = config
    if c.meta.shard_size is None and saved_shard_size is not None:
        c = c.replace(shard_size=saved_shard_size)
    size = resolve_shard_size(c.meta.shard_size, c.instances, reducer.ranks.world)
    if size != c.meta.shard_size:
        c = c.replace(shard_size=size)
    if size is None:
        return c, None, None
    unsharded = {
        "joint imitation": c.imitation.enabled and c.imitation.mode is ImitationMode.JOINT,
        "the log-normalized objective": c.meta_objective.kind is Objective.LOG_NORMALIZED,
        "a carried rule state": c.rule_state is RuleState.CARRY,
    }
    for what, used in unsharded.items():
        if used:
            raise ValueError(
                f"{what} cannot be sharded across processes yet; train this recipe in one "
                "process (--nproc 1, no --shard-size)"
            )
    plan = ShardPlan.make(c.instances, size, reducer)
    return c, plan, [make_objective(c, task, teachers, device) for _ in plan.local]


def on_policy_epoch(
    objective: UnrollObjective,
    rule,
    step: Stepper,
    task: Task,
    pop: Population,
    config: TrainConfig,
    horizon: int,
    meta_step: MetaStep,
    optimizer: torch.optim.Optimizer,
    carried: list[Tensor] | None,
    epoch: int,
    stage: int,
) -> EpochResult:
    """One on-policy epoch: ``horizon / T`` unrolls of ``step``, one meta-step each; the rule's
    state starts fresh from ``rule`` (or from ``carried``) and, with ``rule_state="carry"``,
    its finite final state is returned to carry."""
    traj = start_trajectory(rule, task, pop.x0, pop.stream, pop.scale, pop.seeds)
    carry = config.rule_state is RuleState.CARRY
    if carry and carried is not None:
        _, spec = tree_flatten(traj.rule_state)
        traj.rule_state = tree_unflatten([t.to(pop.x0.device) for t in carried], spec)
    objective.begin(step, pop, traj, epoch, stage)
    result = EpochResult([])
    for _ in range(horizon // config.unroll_length):
        surrogate, meta_loss, traj = objective.unroll(traj)
        result.losses.append(meta_loss)
        result.outcomes[meta_step(surrogate, meta_loss, optimizer)] += 1
        traj = detach(traj)
        if not math.isfinite(meta_loss):
            break  # the optimizee diverged: nothing more to learn from this trajectory
    if carry:
        leaves, _ = tree_flatten(traj.rule_state)
        finite = math.isfinite(result.losses[-1]) and all(
            torch.isfinite(t).all() for t in leaves if t.is_floating_point()
        )
        result.final_state = [t.detach().cpu() for t in leaves] if finite else None
    result.extra = objective.record()
    return result


def sharded_on_policy_epoch(
    objectives: list[UnrollObjective],
    rule,
    step: Stepper,
    task: Task,
    plan: ShardPlan,
    config: TrainConfig,
    horizon: int,
    meta_step: MetaStep,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    stage: int,
) -> EpochResult:
    """:func:`on_policy_epoch` over this rank's shards (one objective each): every unroll, each
    shard contributes its weighted gradient row, and the meta-step applies the rows of all
    shards summed in shard order; a non-finite meta-loss in any shard skips the step (and ends
    the epoch) on every rank."""
    device = next(rule.parameters()).device
    pops = plan.populations(task, config, epoch, device)
    trajs = [start_trajectory(rule, task, p.x0, p.stream, p.scale, p.seeds) for p in pops]
    for objective, pop, traj in zip(objectives, pops, trajs, strict=True):
        objective.begin(step, pop, traj, epoch, stage)
    weights = plan.weights()
    result = EpochResult([])
    for _ in range(horizon // config.unroll_length):
        rows = []
        for k, objective in enumerate(objectives):
            surrogate, meta_loss, trajs[k] = objective.unroll(trajs[k])
            rows.append(meta_step.shard_row(surrogate, meta_loss, weights[k], optimizer))
        outcome, (meta_loss,) = meta_step.apply_row(plan.reduce(rows), optimizer)
        result.losses.append(meta_loss)
        result.outcomes[outcome] += 1
        trajs = [detach(t) for t in trajs]
        if not math.isfinite(meta_loss):
            break  # an optimizee diverged (on some rank): every rank stops the epoch here
    return result


class OffPolicyImitation:
    """Off-policy imitation epochs (docs/method.md 5.1/5.2): in a fraction of the epochs a teacher
    optimizes a fresh population over the current horizon and the rule, fed the teacher's
    gradients from a fresh state, is trained to output the teacher's steps, one meta-step per
    unroll."""

    def __init__(self, config: TrainConfig, teachers: Teachers) -> None:
        self.config, self.teachers = config, teachers
        self.time_weight = (
            1.0 if config.imitation.time_weight is TimeWeight.SUM else 1.0 / config.unroll_length
        )

    def due(self, epoch: int, stage: int) -> bool:
        """Whether ``epoch`` imitates (a per-(seed, epoch) draw, so resumes agree)."""
        ratio = self.config.imitation.ratio(stage)
        if ratio <= 0 or not self.teachers.ready:
            return False  # (stage 0 of self-improving: no teacher yet)
        draw = random.Random(derive_seed(self.config.seed, "imitation") * 1_000_003 + epoch)
        return draw.random() < ratio

    def epoch(
        self,
        rule,
        step: Stepper,
        task: Task,
        pop: Population,
        horizon: int,
        count: int,
        meta_step: MetaStep,
        optimizer: torch.optim.Optimizer,
    ) -> EpochResult:
        """The ``count``-th imitation epoch (teachers take turns by ``count``)."""
        c = self.config
        teacher, name = self.teachers.get(count)
        teachers = TeacherStream(
            teacher,
            task,
            pop.x0,
            pop.stream,
            pop.seeds,
            pop.scale,
            steps_per_label=c.imitation.teacher_steps,
        )
        state = init_rule_state(rule, teachers.x, task, pop.seeds)
        il_losses: list[float] = []
        result = EpochResult([])
        for _ in range(horizon // c.unroll_length):
            steps = teachers.next(c.unroll_length)
            loss, per_instance, state = imitation_unroll(step, steps, state, self.time_weight)
            value = per_instance.mean().item()
            il_losses.append(value)
            result.losses.append(steps.losses.sum(0).mean().item())
            result.outcomes[meta_step(loss, value, optimizer)] += 1
            state = detach_state(state)
            if not math.isfinite(result.losses[-1]):
                break  # the teacher diverged: its steps teach nothing more
        result.extra = dict(
            imitation=True,
            teacher=name,
            imitation_loss=il_losses[-1],
            mean_imitation_loss=sum(il_losses) / len(il_losses),
        )
        return result

    def sharded_epoch(
        self,
        rule,
        step: Stepper,
        task: Task,
        plan: ShardPlan,
        epoch: int,
        horizon: int,
        count: int,
        meta_step: MetaStep,
        optimizer: torch.optim.Optimizer,
    ) -> EpochResult:
        """:meth:`epoch` over this rank's shards, one teacher trajectory per shard, the
        meta-step applying every shard's row summed in shard order."""
        c = self.config
        teacher, name = self.teachers.get(count)
        device = next(rule.parameters()).device
        pops = plan.populations(task, c, epoch, device)
        streams = [
            TeacherStream(
                teacher,
                task,
                p.x0,
                p.stream,
                p.seeds,
                p.scale,
                steps_per_label=c.imitation.teacher_steps,
            )
            for p in pops
        ]
        states = [
            init_rule_state(rule, t.x, task, p.seeds) for t, p in zip(streams, pops, strict=True)
        ]
        weights = plan.weights()
        il_losses: list[float] = []
        result = EpochResult([])
        for _ in range(horizon // c.unroll_length):
            rows = []
            for k, teachers in enumerate(streams):
                steps = teachers.next(c.unroll_length)
                loss, per_instance, states[k] = imitation_unroll(
                    step, steps, states[k], self.time_weight
                )
                teacher_loss = steps.losses.sum(0).mean().item()
                value = per_instance.mean().item()
                rows.append(
                    meta_step.shard_row(loss, value, weights[k], optimizer, stats=[teacher_loss])
                )
            outcome, (value, teacher_loss) = meta_step.apply_row(plan.reduce(rows), optimizer)
            il_losses.append(value)
            result.losses.append(teacher_loss)
            result.outcomes[outcome] += 1
            states = [detach_state(s) for s in states]
            if not math.isfinite(teacher_loss):
                break
        result.extra = dict(
            imitation=True,
            teacher=name,
            imitation_loss=il_losses[-1],
            mean_imitation_loss=sum(il_losses) / len(il_losses),
        )
        return result


def epoch_record(
    config: TrainConfig, epoch: int, horizon: int, stage: int | None, result: EpochResult
) -> dict[str, Any]:
    """The metrics record of a finished epoch (``epoch`` counts from 1)."""
    record = {
        "type": "epoch",
        "epoch": epoch,
        "horizon": horizon,
        "meta_loss": result.losses[-1],
        "mean_meta_loss": sum(result.losses) / len(result.losses),
        "skipped_meta_steps": result.outcomes[StepOutcome.SKIPPED],
    }
    if stage is not None:
        record["stage"] = stage
    if config.imitation.enabled:
        record["imitation"] = False
    if config.meta.nonfinite is NonFinite.ZERO:
        record["zeroed_meta_steps"] = result.outcomes[StepOutcome.ZEROED]
    record.update(result.extra)
    return record
