"""The one interface every optimizer rule implements, learned or analytic.

``state = rule.init(x, layout)`` then, each step, ``delta, state = rule.step(grad, state)`` and the
caller applies ``x <- x + delta``. ``x`` and ``grad`` are a population ``[n, P]``; the layout says
which coordinates form which tensor (L2O-Scale's per-tensor level needs it). Evaluation,
meta-training and imitation never ask which kind of rule they hold.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from l2o.layout import Layout


@runtime_checkable
class Rule(Protocol):
    """An optimizer update rule over a flat population."""

    name: str

    def init(self, x: Tensor, layout: Layout) -> Any:
        """The rule's state for population ``x`` (``[n, P]``)."""
        ...

    def step(self, grad: Tensor, state: Any) -> tuple[Tensor, Any]:
        """The update ``delta`` (``x_{t+1} = x_t + delta``) for ``grad``, and the new state."""
        ...

    def hyperparameters(self) -> dict[str, Any]:
        """Settings recorded in summaries and checkpoint cards."""
        ...
