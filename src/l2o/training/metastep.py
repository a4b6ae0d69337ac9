"""The meta-optimizer and one meta-step: from a surrogate's gradient to updated rule weights.

A meta-step has two halves, kept apart so that a data-parallel trainer can reduce between them:
:meth:`MetaStep.compute_meta_gradient` backpropagates one unroll's surrogate (of a whole
population, or of one shard of its instances) into the rule's ``.grad``; :meth:`MetaStep.apply`
then treats the (reduced) gradient as the configuration says (a global finite check: skip the step
or zero the non-finite entries; clipping) and steps the meta-optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum

import torch

from l2o.training.config import MetaConfig, MetaOptimizer, NonFinite, TrainConfig

#: L2O-Scale's RMSProp meta-optimizer (METHOD.md 3.2): decay and epsilon.
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

    def __call__(
        self, surrogate: torch.Tensor, meta_loss: float, optimizer: torch.optim.Optimizer
    ) -> StepOutcome:
        """Backpropagate ``surrogate`` and take one meta-step."""
        if not self.compute_meta_gradient(surrogate, meta_loss, optimizer):
            return StepOutcome.SKIPPED
        return self.apply(optimizer)
