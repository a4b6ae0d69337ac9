"""One truncated unroll of meta-training (METHOD.md 3.1): T optimizee steps, one meta-loss.

The meta-loss of an unroll is ``sum_{t=0..T} f_t`` with ``f_t = L_{B_t}(c * x_t)`` on fresh
minibatches. Optimizee gradients are treated as constants (no second derivatives), so the only
path from the rule's weights to ``f_t`` is through ``x_t``, and ``d f_t / d x_t`` is exactly the
gradient ``g_t`` the rule was fed. We therefore never keep the optimizee's graph: each step
evaluates ``(f_t, g_t)`` on a detached copy of ``x_t`` and adds the surrogate ``<g_t, x_t>``,
whose gradient with respect to the weights equals that of ``f_t``. This halves the work of the
hot loop and its memory, with identical meta-gradients.

The last evaluation of an unroll (at ``x_T``) is carried into the next unroll as its step-0
evaluation: statistically the same as the original's separate fresh batch for ``f_0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from l2o.evaluation import init_rule_state
from l2o.tasks.base import BatchStream, Task


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


def start_trajectory(
    rule,
    task: Task,
    x0: Tensor,
    stream: BatchStream,
    scale: Tensor | None = None,
    seeds: Sequence[int] | None = None,
) -> Trajectory:
    """Initial state: random scaling replaces ``x0`` by ``x0 / c`` (METHOD.md 3.1). ``seeds``
    seed the rule's own random initial state, if it has one (L2O-Scale)."""
    x = x0 / scale if scale is not None else x0
    loss, grad = loss_and_grad(task, x, stream.next(), scale)
    state = (
        init_rule_state(rule, x, task, seeds) if seeds is not None else rule.init(x, task.layout)
    )
    return Trajectory(x, state, loss, grad, scale)


def unroll(
    rule, task: Task, traj: Trajectory, stream: BatchStream, length: int
) -> tuple[Tensor, Tensor, Trajectory]:
    """Run ``length`` steps from ``traj``.

    Returns:
        ``(surrogate, losses, new_traj)``: ``surrogate`` is a scalar whose gradient with respect
        to the rule's weights is that of the meta-loss (mean over instances of the sum of the
        ``length + 1`` losses); ``losses`` is ``[length + 1, n]`` (detached) for logging and
        validation; ``new_traj`` still carries the graph (call :func:`detach` after the
        meta-step).
    """
    x, state = traj.x, traj.rule_state
    grad = traj.grad
    losses = [traj.loss]
    surrogate = x.new_zeros(())
    for _ in range(length):
        delta, state = rule.step(grad, state)
        x = x + delta
        loss, grad = loss_and_grad(task, x, stream.next(), traj.scale)
        surrogate = surrogate + (grad * x).sum()
        losses.append(loss)
    n = x.shape[0]
    new = Trajectory(x, state, losses[-1], grad, traj.scale, traj.steps_done + length)
    return surrogate / n, torch.stack(losses), new


def detach(traj: Trajectory) -> Trajectory:
    """Cut the graph: the next unroll continues the trajectory from constants."""
    state = tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, traj.rule_state)
    return Trajectory(traj.x.detach(), state, traj.loss, traj.grad, traj.scale, traj.steps_done)
