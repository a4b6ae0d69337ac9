"""The optimizee (task) interface: a population of ``n`` instances as one flat ``[n, P]`` tensor.

A task initialises a population from one seed per instance, draws per-instance minibatches, and
returns the ``n`` losses in one batched computation. Every random draw of instance ``i`` comes from
its own generators seeded by its seed, so a population of seeds ``[s0, s1, ...]`` follows exactly
the trajectories of the same seeds run one at a time (the property the tests check).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from l2o.layout import Layout

#: Offsets that separate the random streams derived from one seed.
_STREAMS = {
    "init": 0,
    "train": 1,
    "validation": 2,
    "test": 3,
    "problem": 4,
    "scaling": 5,
    "optimizer": 6,
}


def derive_seed(seed: int, stream: str) -> int:
    """A stable 63-bit seed for one named random stream of one instance."""
    return (int(seed) * 1_000_003 + 7_919 * _STREAMS.get(stream, 8) + 1) % (2**63 - 1)


def generators(seeds: Sequence[int], stream: str) -> list[torch.Generator]:
    """One CPU generator per instance for ``stream``. Draws happen on the CPU so that a seed gives
    the same numbers on every device."""
    return [torch.Generator().manual_seed(derive_seed(s, stream)) for s in seeds]


@dataclass(frozen=True)
class ParamInit:
    """How one optimizee tensor is initialised: ``normal`` (with ``std``), ``zeros`` or ``ones``."""

    kind: str = "normal"
    std: float = 0.01


class BatchStream(ABC):
    """Yields one batch for the whole population per call (each instance its own examples)."""

    @abstractmethod
    def next(self) -> Any: ...

    def sample(self, size: int, generators: Sequence[torch.Generator] | None = None) -> Any:
        """A batch of ``size`` *distinct* examples per instance, drawn uniformly without
        replacement (the whole pool if it is smaller), e.g. L2O-Scale's meta-objective subset
        (docs/method.md 3.2). ``generators`` (one per instance) give the draws their own random
        stream; by default the stream's own.

        A stream without an example pool (the quadratic's fixed problem, a user module's
        tensors) returns its next batch: for the quadratic that is the exact objective."""
        return self.next()


class Task(ABC):
    """An optimizee problem. Subclasses define ``layout``, ``inits``, ``stream`` and ``loss``.

    Attributes:
        name: registry name, e.g. ``"mlp-orig"``.
        description: one line for ``l2o tasks``.
        layout: the named tensors of one instance.
        eval_split: the split evaluation trajectories train on (the paper's quirk: ``"test"``).
        train_split: the split meta-training uses.
    """

    name: str = "task"
    description: str = ""
    eval_split: str = "test"
    train_split: str = "train"
    layout: Layout

    @property
    def num_params(self) -> int:
        return self.layout.num_params

    @abstractmethod
    def param_inits(self) -> dict[str, ParamInit]:
        """The initialiser of each tensor in ``layout``."""

    def init(
        self,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """A fresh population ``[len(seeds), P]``; instance ``i`` depends only on ``seeds[i]``."""
        inits = self.param_inits()
        rows = []
        for gen in generators(seeds, "init"):
            parts = []
            for spec in self.layout.specs:
                init = inits[spec.name]
                if init.kind == "normal":
                    parts.append(torch.randn(spec.size, generator=gen) * init.std)
                elif init.kind == "zeros":
                    parts.append(torch.zeros(spec.size))
                elif init.kind == "ones":
                    parts.append(torch.ones(spec.size))
                else:
                    raise ValueError(f"unknown initialiser {init.kind!r} for {spec.name!r}")
            rows.append(torch.cat(parts))
        return torch.stack(rows).to(device=device, dtype=dtype)

    @abstractmethod
    def stream(
        self, seeds: Sequence[int], split: str | None = None, device: torch.device | str = "cpu"
    ) -> BatchStream:
        """A minibatch stream for the population (``split`` defaults to ``eval_split``)."""

    @abstractmethod
    def loss(self, x: Tensor, batch: Any) -> Tensor:
        """The ``[n]`` losses of population ``x`` (``[n, P]``) on ``batch``."""

    def options(self) -> dict[str, Any]:
        """The task's settings, recorded in summaries and checkpoint cards."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({self.name!r}{', ' if opts else ''}{opts})"
