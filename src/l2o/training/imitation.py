"""Off-policy imitation of a teacher optimizer (Chen et al. 2020; docs/method.md 5.1, 5.2 and 0
item 4).

A *teacher* (Adam at lr 0.01 by default, any analytic rule, or a frozen learned rule for
self-improving) optimizes a fresh optimizee population. Along its trajectory we record, per step,
the gradient ``g_t`` it was fed and its displacement ``Delta_t = x_{t+k} - x_t``. The learned rule
never acts on the optimizee: it is fed the teacher's gradients, runs its own recurrent state
through them, and is trained to output the teacher's displacement, with the loss per unroll of
``T`` steps

    L_IL = sum_t w * (1 / P) * 1/2 * ||Delta_t - delta_t||^2     (mean over instances),

where ``P`` is the number of optimizee coordinates and ``w`` is 1 for L2O-DM/RNNprop (5.1) or
``1 / T`` for L2O-Scale (5.2). The teacher advances one unroll at a time
(:class:`TeacherStream`), batched over the population on the training device, so a trajectory is
never stored whole and no Python data pipeline sits between teacher and student.

:func:`joint_unroll` is the on-policy alternative: the learned rule acts as in ordinary
meta-training, a teacher that is fed the same gradients proposes its own update at every step,
and the unroll's loss is ``meta-loss + lambda * L_IL``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from l2o.evaluation import init_rule_state
from l2o.registry import load_rule
from l2o.rules.analytic import ANALYTIC_RULES
from l2o.tasks.base import Task
from l2o.training.unroll import Stepper, Trajectory, loss_and_grad, step_function, unroll

#: The teacher learning rate of the paper (Adam, RMSProp and NAG all at 0.01; docs/method.md 5.1).
TEACHER_LR = 0.01
#: The teacher name that means "the rule's own best checkpoint of the previous stage".
SELF_TEACHER = "self"


def parse_teacher(spec: str) -> tuple[str, float]:
    """``"adam"`` or ``"adam@0.003"`` -> ``(name, lr)``; the lr defaults to 0.01."""
    name, _, lr = spec.partition("@")
    if name == SELF_TEACHER:
        if lr:
            raise ValueError("the 'self' teacher takes no learning rate")
        return name, float("nan")
    if name not in ANALYTIC_RULES:
        raise ValueError(
            f"unknown teacher {spec!r}: use one of {', '.join(ANALYTIC_RULES)} (optionally "
            f"NAME@LR, e.g. adam@0.01) or {SELF_TEACHER!r}"
        )
    try:
        value = float(lr) if lr else TEACHER_LR
    except ValueError:
        raise ValueError(f"teacher {spec!r}: {lr!r} is not a learning rate") from None
    if not value > 0:
        raise ValueError(f"teacher {spec!r}: the learning rate must be positive")
    return name, value


def make_teacher(spec: str):
    """An analytic teacher rule from its spec (``self`` teachers are built by the trainer)."""
    name, lr = parse_teacher(spec)
    if name == SELF_TEACHER:
        raise ValueError("the 'self' teacher is a frozen copy of a trained rule; use freeze()")
    return load_rule(name, lr=lr)


class Teachers:
    """The teachers of a run, taken round-robin: analytic rules built from their specs, and the
    ``self`` teacher (the previous curriculum stage's best rule, frozen), which the trainer sets
    as ``self_teacher`` when a stage starts (``None`` in stage 0: no teacher yet)."""

    def __init__(self, specs: Sequence[str]) -> None:
        self.specs = list(specs)
        self.self_teacher: torch.nn.Module | None = None

    @property
    def needs_self(self) -> bool:
        return SELF_TEACHER in self.specs

    @property
    def ready(self) -> bool:
        """Whether every teacher exists (the ``self`` teacher only from stage 1 on)."""
        return not self.needs_self or self.self_teacher is not None

    def get(self, count: int) -> tuple[Any, str]:
        """The ``count``-th teacher (round-robin) and its spec."""
        spec = self.specs[count % len(self.specs)]
        return (self.self_teacher if spec == SELF_TEACHER else make_teacher(spec)), spec


def freeze(rule: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of a learned rule, to serve as a teacher (self-improving)."""
    teacher = copy.deepcopy(rule)
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


@dataclass
class TeacherSteps:
    """One unroll of a teacher trajectory.

    Attributes:
        grads: ``[T, n, P]`` the gradient the teacher was fed at each recorded step.
        targets: ``[T, n, P]`` its displacement ``x_{t+k} - x_t`` after each (the label).
        losses: ``[T, n]`` the minibatch loss at each recorded point (for logging).
    """

    grads: Tensor
    targets: Tensor
    losses: Tensor


class TeacherStream:
    """A teacher optimizing a population, handing out its trajectory one unroll at a time.

    Args:
        teacher: any rule (analytic or a frozen learned one).
        task, x0, stream: the optimizee population, its initial point and its minibatches.
        seeds: the population's seeds (for a teacher with a random initial state).
        scale: random-scaling factors ``c`` (the teacher sees ``d f(c x) / d x``) or ``None``.
        steps_per_label: ``k``: teacher steps per recorded step, each on its own minibatch; the
            label is the displacement over all ``k`` (the original's ``k``, default 1).
    """

    def __init__(
        self,
        teacher,
        task: Task,
        x0: Tensor,
        stream,
        seeds: Sequence[int],
        scale: Tensor | None = None,
        steps_per_label: int = 1,
    ) -> None:
        if steps_per_label < 1:
            raise ValueError(f"steps_per_label must be at least 1, got {steps_per_label}")
        self.teacher, self.task, self.stream, self.scale = teacher, task, stream, scale
        self.k = steps_per_label
        self.x = x0 / scale if scale is not None else x0
        with torch.no_grad():
            self.state = init_rule_state(teacher, self.x, task, seeds)

    @torch.no_grad()
    def next(self, length: int) -> TeacherSteps:
        grads, targets, losses = [], [], []
        for _ in range(length):
            start = self.x
            for j in range(self.k):
                loss, grad = loss_and_grad(self.task, self.x, self.stream.next(), self.scale)
                if j == 0:
                    grads.append(grad)
                    losses.append(loss)
                delta, self.state = self.teacher.step(grad, self.state)
                self.x = self.x + delta
            targets.append(self.x - start)
        return TeacherSteps(torch.stack(grads), torch.stack(targets), torch.stack(losses))


def imitation_loss(delta: Tensor, target: Tensor) -> Tensor:
    """``(1 / P) * 1/2 * ||target - delta||^2`` per instance: ``[n]``."""
    return 0.5 * (target - delta).pow(2).mean(-1)


def imitation_unroll(
    rule: Stepper, steps: TeacherSteps, state: Any, time_weight: float = 1.0
) -> tuple[Tensor, Tensor, Any]:
    """Feed the rule the teacher's gradients and score its outputs against the teacher's steps.

    Returns:
        ``(loss, per_instance, state)``: ``loss`` is the scalar to minimise (mean over instances
        of ``time_weight * sum_t imitation_loss``), ``per_instance`` its detached ``[n]`` values,
        and the rule's new state (still carrying the graph).
    """
    step = step_function(rule)
    total = steps.grads.new_zeros(steps.grads.shape[1])
    for grad, target in zip(steps.grads, steps.targets, strict=True):
        delta, state = step(grad, state)
        total = total + imitation_loss(delta, target)
    total = total * time_weight
    return total.mean(), total.detach(), state


class _Shadowed:
    """A rule whose every step is shadowed by a teacher fed the same gradient; it accumulates
    the imitation loss of the rule's steps against the teacher's (``il``, ``[n]``)."""

    def __init__(self, rule: Stepper, teacher, teacher_state: Any) -> None:
        self.rule_step = step_function(rule)
        self.teacher, self.teacher_state = teacher, teacher_state
        self.il: Tensor | None = None

    def step(self, grad: Tensor, state: Any) -> tuple[Tensor, Any]:
        delta, state = self.rule_step(grad, state)
        with torch.no_grad():
            target, self.teacher_state = self.teacher.step(grad, self.teacher_state)
        term = imitation_loss(delta, target)
        self.il = term if self.il is None else self.il + term
        return delta, state


def joint_unroll(
    rule: Stepper,
    teacher,
    teacher_state: Any,
    task: Task,
    traj: Trajectory,
    stream,
    length: int,
    weight: float,
) -> tuple[Tensor, Tensor, Tensor, Trajectory, Any]:
    """An ordinary meta-training unroll (:func:`l2o.training.unroll.unroll`) whose loss adds
    ``weight`` times the imitation loss against a teacher fed the same gradients (on-policy).

    Returns:
        ``(surrogate, losses, il_per_instance, new_traj, teacher_state)``; the surrogate's
        gradient is that of ``mean_n(sum_t f_t + weight * L_IL)``.
    """
    shadowed = _Shadowed(rule, teacher, teacher_state)
    surrogate, losses, new = unroll(shadowed, task, traj, stream, length)
    il = shadowed.il
    return surrogate + weight * il.mean(), losses, il.detach(), new, shadowed.teacher_state
