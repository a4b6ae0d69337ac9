"""The layout of a flat optimizee population: which segment of ``P`` belongs to which tensor.

An optimizee population is one tensor ``x`` of shape ``[n, P]`` (``n`` independent instances of a
task with ``P`` parameters). Coordinatewise learned optimizers (L2O-DM, RNNprop) only need ``x``;
L2O-Scale's per-tensor level and users' models need to know where each tensor lives. A
:class:`Layout` records that, and converts between the flat view and named tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor


@dataclass(frozen=True)
class TensorSpec:
    """One optimizee tensor: its name, its per-instance shape and its offset in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class Layout:
    """An ordered, contiguous partition of the flat parameter vector into named tensors."""

    specs: tuple[TensorSpec, ...]

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Iterable[int]] | Iterable[tuple[str, Iterable[int]]]):
        """Build a layout from ``{name: shape}`` (or ``(name, shape)`` pairs), packed in order."""
        items = shapes.items() if isinstance(shapes, Mapping) else shapes
        specs, offset = [], 0
        for name, shape in items:
            spec = TensorSpec(name, tuple(int(d) for d in shape), offset)
            specs.append(spec)
            offset = spec.stop
        return cls(tuple(specs))

    @property
    def num_params(self) -> int:
        return self.specs[-1].stop if self.specs else 0

    @property
    def num_tensors(self) -> int:
        return len(self.specs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def __getitem__(self, name: str) -> TensorSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(f"no tensor named {name!r} in layout; tensors are {list(self.names)}")

    @cached_property
    def _segment_ids(self) -> Tensor:
        sizes = torch.tensor([s.size for s in self.specs])
        return torch.repeat_interleave(torch.arange(len(self.specs)), sizes)

    def segment_ids(self, device: torch.device | str | None = None) -> Tensor:
        """``[P]`` long tensor: the index of the tensor each coordinate belongs to."""
        return self._segment_ids.to(device) if device is not None else self._segment_ids

    def sizes(self) -> list[int]:
        return [s.size for s in self.specs]

    def unflatten(self, x: Tensor) -> dict[str, Tensor]:
        """Views of ``x`` (``[..., P]``) as named tensors of shape ``[..., *spec.shape]``."""
        lead = x.shape[:-1]
        return {s.name: x[..., s.offset : s.stop].view(*lead, *s.shape) for s in self.specs}

    def flatten(self, tensors: Mapping[str, Tensor], batch_dims: int = 1) -> Tensor:
        """Inverse of :meth:`unflatten`: concatenate named tensors into ``[..., P]``."""
        parts = [
            tensors[s.name].reshape(*tensors[s.name].shape[:batch_dims], -1) for s in self.specs
        ]
        return torch.cat(parts, dim=-1)
