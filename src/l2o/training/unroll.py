"""One truncated unroll of meta-training (docs/method.md 3.1): T optimizee steps, one meta-loss.

The meta-loss of an unroll is ``sum_{t=0..T} f_t`` with ``f_t = L_{B_t}(c * x_t)`` on fresh
minibatches. Optimizee gradients are treated as constants (no second derivatives), so the only
path from the rule's weights to ``f_t`` is through ``x_t``, and ``d f_t / d x_t`` is exactly the
gradient ``g_t`` the rule was fed. We therefore never keep the optimizee's graph: each step
evaluates ``(f_t, g_t)`` on a detached copy of ``x_t`` and adds the surrogate ``<g_t, x_t>``,
whose gradient with respect to the weights equals that of ``f_t``. This halves the work of the
hot loop and its memory, with identical meta-gradients.

The last evaluation of an unroll (at ``x_T``) is carried into the next unroll as its step-0
evaluation: statistically the same as the original's separate fresh batch for ``f_0``.

**L2O-Scale's log-normalized objective** (docs/method.md 3.2, :func:`unroll_log_objective`). The
meta-loss of an unroll is ``mean_j log(F_j / (f_init + eps) + eps)`` over the list
``F = [f_D(x_start), f_D(x_0), ..., f_D(x_{T-1})]``, where ``f_D`` is the loss on a large
*meta-objective subset* ``D`` of the training data (drawn afresh for each unroll), ``x_start =
x_0`` is the unroll's first iterate (listed twice, as the original does), the post-update iterate
``x_T`` is not in the list, and ``f_init`` is the objective at the start of the epoch's first
unroll (a constant). The rule is still fed minibatch gradients (constants, as above). The log
is not linear, but the trick only needs the chain rule through ``x_j``: with
``r_j = F_j / (f_init + eps) + eps``,

    d meta-loss / d x_j = grad f_D(x_j) / ((T + 1) * r_j * (f_init + eps)),

so ``d meta-loss / d theta = sum_j <d meta-loss / d x_j, d x_j / d theta>``, which is the gradient
of the surrogate ``sum_j <w_j * grad f_D(x_j), x_j>`` with ``w_j = 1 / ((T + 1) r_j (f_init +
eps))`` and ``grad f_D(x_j)`` both detached: exactly the first-order meta-gradient (tested against
direct autograd). ``x_0`` is a constant (the graph is cut between
unrolls), so neither copy of ``F_0`` contributes, and, as in the original, the unroll's last
update (``x_{T-1} -> x_T``) gets no meta-gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from l2o.evaluation import init_rule_state
from l2o.tasks.base import BatchStream, Task, generators

#: ``eps`` of the log-normalized objective (the original's ``obj_scale_eps``).
LOG_OBJECTIVE_EPS = 1e-6


@dataclass
class Trajectory:
    """The carried state of a population being optimized by a rule during meta-training."""

    x: Tensor
    rule_state: Any
    loss: Tensor  # [n] loss at x on the batch its gradient came from
    grad: Tensor  # [n, P] that gradient (constant)
    scale: Tensor | None  # random-scaling factors c [n, P] or None
    steps_done: int = 0


def loss_and_grad(task: Task, x: Tensor, batch, scale: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(f(c * x), d f / d x)`` for the population, both detached."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        loss = task.loss(leaf * scale if scale is not None else leaf, batch)
        (grad,) = torch.autograd.grad(loss.sum(), leaf)
    return loss.detach(), grad


#: What an unroll steps with: a rule, or a step function ``(grad, state) -> (delta, state)`` such
#: as a compiled rule step (:class:`l2o.compiling.CompiledStep`).
Stepper = Any


def step_function(rule: Stepper) -> Callable[[Tensor, Any], tuple[Tensor, Any]]:
    """The step function of ``rule`` (itself, if it is one already)."""
    return rule.step if hasattr(rule, "step") else rule


def start_trajectory(
    rule,
    task: Task,
    x0: Tensor,
    stream: BatchStream,
    scale: Tensor | None = None,
    seeds: Sequence[int] | None = None,
) -> Trajectory:
    """Initial state: random scaling replaces ``x0`` by ``x0 / c`` (docs/method.md 3.1). ``seeds``
    seed the rule's own random initial state, if it has one (L2O-Scale)."""
    x = x0 / scale if scale is not None else x0
    loss, grad = loss_and_grad(task, x, stream.next(), scale)
    state = (
        init_rule_state(rule, x, task, seeds) if seeds is not None else rule.init(x, task.layout)
    )
    return Trajectory(x, state, loss, grad, scale)


def unroll(
    rule: Stepper, task: Task, traj: Trajectory, stream: BatchStream, length: int
) -> tuple[Tensor, Tensor, Trajectory]:
    """Run ``length`` steps from ``traj`` with ``rule`` (a rule or a compiled step function).

    Returns:
        ``(surrogate, losses, new_traj)``: ``surrogate`` is a scalar whose gradient with respect
        to the rule's weights is that of the meta-loss (mean over instances of the sum of the
        ``length + 1`` losses); ``losses`` is ``[length + 1, n]`` (detached) for logging and
        validation; ``new_traj`` still carries the graph (call :func:`detach` after the
        meta-step).
    """
    step = step_function(rule)
    x, state = traj.x, traj.rule_state
    grad = traj.grad
    losses = [traj.loss]
    surrogate = x.new_zeros(())
    for _ in range(length):
        delta, state = step(grad, state)
        x = x + delta
        loss, grad = loss_and_grad(task, x, stream.next(), traj.scale)
        surrogate = surrogate + (grad * x).sum()
        losses.append(loss)
    n = x.shape[0]
    new = Trajectory(x, state, losses[-1], grad, traj.scale, traj.steps_done + length)
    return surrogate / n, torch.stack(losses), new


def detach_state(state: Any) -> Any:
    """A rule state with every tensor cut from the graph (truncated backpropagation)."""
    return tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, state)


def detach(traj: Trajectory) -> Trajectory:
    """Cut the graph: the next unroll continues the trajectory from constants."""
    state = detach_state(traj.rule_state)
    return Trajectory(traj.x.detach(), state, traj.loss, traj.grad, traj.scale, traj.steps_done)


class ObjectiveSubsets:
    """The meta-objective's data: ``next()`` draws, per instance, ``size`` distinct examples of
    ``split`` (the stream's :meth:`~l2o.tasks.base.BatchStream.sample`), from the instance's own
    ``"objective"`` random stream. Tasks without an example pool (the quadratic's fixed problem,
    user modules) use the task's own batches: for the quadratic that is the exact objective.
    """

    def __init__(
        self, task: Task, seeds: Sequence[int], split: str, size: int, device="cpu"
    ) -> None:
        self.base = task.stream(seeds, split, device=device)
        self.size = int(size)
        self.gens = generators(seeds, "objective")

    def next(self):
        return self.base.sample(self.size, self.gens)


@dataclass
class LogUnroll:
    """What :func:`unroll_log_objective` returns.

    Attributes:
        surrogate: scalar whose gradient w.r.t. the rule's weights is the first-order gradient of
            the mean over instances of ``meta_loss``.
        objectives: ``[T + 1, n]`` the list ``F`` (detached): ``f_D(x_0)`` twice, then
            ``f_D(x_1) .. f_D(x_{T-1})``.
        meta_loss: ``[n]`` the log-normalized meta-loss of each instance (detached).
        f_init: ``[n]`` the normaliser used (pass it to the epoch's later unrolls).
        traj: the new trajectory (still carrying the graph; :func:`detach` it after the step).
    """

    surrogate: Tensor
    objectives: Tensor
    meta_loss: Tensor
    f_init: Tensor
    traj: Trajectory


def unroll_log_objective(
    rule: Stepper,
    task: Task,
    traj: Trajectory,
    stream: BatchStream,
    subset,
    length: int,
    f_init: Tensor | None = None,
    eps: float = LOG_OBJECTIVE_EPS,
) -> LogUnroll:
    """Run ``length`` steps from ``traj`` with L2O-Scale's log-normalized meta-objective.

    Args:
        rule: the rule, or its (compiled) step function.
        task, traj, stream: as for :func:`unroll`; the rule is fed ``stream``'s minibatch
            gradients.
        subset: the meta-objective's batch ``D`` for this unroll (e.g.
            ``ObjectiveSubsets.next()``).
        length: ``T``.
        f_init: ``[n]`` the epoch's initial objective; ``None`` on the epoch's first unroll,
            where it is ``f_D(x_0)``.
        eps: the objective's epsilon (1e-6).
    """
    step = step_function(rule)
    x, state, grad = traj.x, traj.rule_state, traj.grad
    with torch.no_grad():
        f0 = task.loss(x.detach() * traj.scale if traj.scale is not None else x.detach(), subset)
    if f_init is None:
        f_init = f0
    denom = f_init + eps
    values = [f0, f0]  # x_start and x_0: constants of this unroll, no meta-gradient
    surrogate = x.new_zeros(())
    terms = length + 1
    for t in range(length):
        if t > 0:
            f, g_obj = loss_and_grad(task, x, subset, traj.scale)
            weight = 1.0 / (terms * (f / denom + eps) * denom)
            surrogate = surrogate + (weight.unsqueeze(1) * g_obj * x).sum()
            values.append(f)
        delta, state = step(grad, state)
        x = x + delta
        loss, grad = loss_and_grad(task, x, stream.next(), traj.scale)
    objectives = torch.stack(values)
    meta_loss = torch.log(objectives / denom + eps).mean(0)
    n = x.shape[0]
    new = Trajectory(x, state, loss, grad, traj.scale, traj.steps_done + length)
    return LogUnroll(surrogate / n, objectives, meta_loss, f_init, new)
