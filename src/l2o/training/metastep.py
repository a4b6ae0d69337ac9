"""The meta-optimizer and one meta-step: from a surrogate's gradient to updated rule weights.

A meta-step has two halves, kept apart so that a data-parallel trainer can reduce between them:
:meth:`MetaStep.compute_meta_gradient` backpropagates one unroll's surrogate (of a whole
population, or of one shard of its instances) into the rule's ``.grad``; :meth:`MetaStep.apply`
then treats the (reduced) gradient as the configuration says (a global finite check: skip the step
or zero the non-finite entries; clipping) and steps the meta-optimizer.

The sharded (data-parallel) meta-step, :mod:`l2o.training.distributed`, uses the same halves
through :meth:`MetaStep.shard_row` (one shard's weighted gradient and statistics as one flat row)
and :meth:`MetaStep.apply_row` (the rows' sum, in shard order, written back and applied).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from enum import StrEnum

import torch
from torch import Tensor

from l2o.training.config import MetaConfig, MetaOptimizer, NonFinite, TrainConfig

#: L2O-Scale's RMSProp meta-optimizer (docs/method.md 3.2): decay and epsilon.
RMSPROP_DECAY = 0.9
RMSPROP_EPS = 1e-20


def make_meta_optimizer(config: TrainConfig, params: Iterable) -> torch.optim.Optimizer:
    """Adam (TF's defaults; L2O-DM/RNNprop) or L2O-Scale's RMSProp.

    The RMSProp is TensorFlow 1's ``tf.train.RMSPropOptimizer`` as the original uses it: decay 0.9,
    epsilon 1e-20, no momentum, and mean squares initialised to **1** (TF1's slot initialiser;
    ``torch.optim.RMSprop`` starts them at 0, which would make the first steps about
    ``lr * sqrt(10)`` per weight whatever the gradient). TF adds epsilon under the square root,
    torch after it; at 1e-20 the two agree to float precision.
    """
    params = list(params)
    meta = config.meta
    if meta.optimizer is MetaOptimizer.ADAM:
        return torch.optim.Adam(params, lr=meta.lr)
    opt = torch.optim.RMSprop(params, lr=meta.lr, alpha=RMSPROP_DECAY, eps=RMSPROP_EPS)
    for p in params:
        opt.state[p] = {"step": torch.zeros(()), "square_avg": torch.ones_like(p)}
    return opt


class StepOutcome(StrEnum):
    """What a meta-step did: stepped, stepped after zeroing non-finite entries, or skipped."""

    STEP = "step"
    ZEROED = "zeroed"
    SKIPPED = "skipped"


class MetaStep:
    """One meta-step on the weights ``params`` as :class:`MetaConfig` says."""

    def __init__(self, params: Iterable[torch.nn.Parameter], meta: MetaConfig) -> None:
        self.params = list(params)
        self.meta = meta
        self.used: list[bool] | None = None  # which weights a shard's backward reaches

    def compute_meta_gradient(
        self, surrogate: torch.Tensor, meta_loss: float, optimizer: torch.optim.Optimizer
    ) -> bool:
        """Clear the gradients and backpropagate ``surrogate`` into them; ``False`` (nothing
        to step on) when ``meta_loss`` is not finite (the optimizee diverged)."""
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(meta_loss):
            return False
        surrogate.backward()
        return True

    def apply(self, optimizer: torch.optim.Optimizer) -> StepOutcome:
        """Check the accumulated meta-gradient (all of it: one global decision), clip it and
        step ``optimizer``."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return StepOutcome.SKIPPED
        zeroed = False
        if self.meta.nonfinite is NonFinite.SKIP:
            if not all(torch.isfinite(g).all() for g in grads):
                return StepOutcome.SKIPPED
        else:
            for g in grads:
                bad = ~torch.isfinite(g)
                if bad.any():
                    g.masked_fill_(bad, 0.0)
                    zeroed = True
        if self.meta.grad_clip_value is not None:
            torch.nn.utils.clip_grad_value_(self.params, self.meta.grad_clip_value)
        if self.meta.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.meta.grad_clip)
        optimizer.step()
        return StepOutcome.ZEROED if zeroed else StepOutcome.STEP

    def shard_row(
        self,
        surrogate: Tensor,
        meta_loss: float,
        weight: float,
        optimizer: torch.optim.Optimizer,
        stats: Sequence[float] = (),
    ) -> Tensor:
        """One shard's contribution to a sharded meta-step: ``[flattened gradient of weight *
        surrogate, weight * meta_loss, weight * stats...]`` (``weight``: the shard's share of the
        population). A non-finite ``meta_loss`` is not backpropagated; its row has a zero
        gradient and a NaN meta-loss, so the summed meta-loss is NaN and every rank skips."""
        optimizer.zero_grad(set_to_none=True)
        values = torch.tensor([meta_loss, *stats], dtype=torch.float64) * weight
        if math.isfinite(meta_loss):
            (surrogate * weight).backward()
            self.used = [p.grad is not None for p in self.params]
            grads = [
                p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel())
                for p in self.params
            ]
        else:
            values[0] = math.nan
            grads = [p.new_zeros(p.numel()) for p in self.params]
        optimizer.zero_grad(set_to_none=True)
        grads.append(values.to(self.params[0]))
        return torch.cat(grads)

    def apply_row(
        self, total: Tensor, optimizer: torch.optim.Optimizer
    ) -> tuple[StepOutcome, list[float]]:
        """Write the summed rows' gradient into ``.grad`` and :meth:`apply` it (or skip when the
        summed meta-loss is not finite); returns the outcome and ``[meta_loss, *stats]``."""
        sizes = [p.numel() for p in self.params]
        values = total[sum(sizes) :].tolist()
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(values[0]):
            return StepOutcome.SKIPPED, values
        used = self.used or [True] * len(self.params)
        grads = total[: sum(sizes)].split(sizes)
        for p, g, keep in zip(self.params, grads, used, strict=True):
            if keep:
                p.grad = g.reshape(p.shape).clone()
        return self.apply(optimizer), values

    def __call__(
        self, surrogate: torch.Tensor, meta_loss: float, optimizer: torch.optim.Optimizer
    ) -> StepOutcome:
        """Backpropagate ``surrogate`` and take one meta-step."""
        if not self.compute_meta_gradient(surrogate, meta_loss, optimizer):
            return StepOutcome.SKIPPED
        return self.apply(optimizer)
