"""Per-tensor reductions over a flat population, shared by the rules that work per tensor
(L2O-Scale's tensor level, MLP-LOpt's per-tensor normalisation).

A layout's ``T`` tensors are segments of the ``P`` coordinates. A rule keeps three constants of the
layout in its state (:func:`segment_state`): ``segment_ids [n, P]``, ``tensor_sizes [n, T]`` and
``segment_matrix [n, T, P]``, the one-hot matrix when ``T`` and ``T * P`` are small (then sums and
broadcasts are GEMMs: measured on the CPU for mlp-orig, 15x faster than ``index_add``) or
``[n, T, 0]`` otherwise (``index_add`` / ``index_select``, no memory cost). With the GEMM path a
non-finite value in one tensor also turns the other tensors' values NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from l2o.layout import Layout

#: The dense one-hot matrix is used up to this many tensors and ``T * P`` elements.
DENSE_SEGMENT_MAX_TENSORS = 16
DENSE_SEGMENT_LIMIT = 1 << 24


def segment_state(layout: Layout, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(segment_ids [n, P], tensor_sizes [n, T], segment_matrix [n, T, P or 0])`` for the
    population ``x [n, P]`` (expanded views: one copy whatever ``n``)."""
    n, p = x.shape
    t = layout.num_tensors
    seg = layout.segment_ids(x.device)
    sizes = torch.tensor(layout.sizes(), dtype=x.dtype, device=x.device)
    if t <= DENSE_SEGMENT_MAX_TENSORS and t * p <= DENSE_SEGMENT_LIMIT:
        matrix = torch.nn.functional.one_hot(seg, t).to(x.dtype).t().contiguous()
    else:
        matrix = x.new_zeros(t, 0)
    return (
        seg.view(1, p).expand(n, p),
        sizes.view(1, t).expand(n, t),
        matrix.unsqueeze(0).expand(n, *matrix.shape),
    )


def segment_sum(values: Tensor, segment_ids: Tensor, num_segments: int) -> Tensor:
    """Sums over the last dimension by segment: ``[..., P]`` -> ``[..., num_segments]``."""
    out = values.new_zeros(*values.shape[:-1], num_segments)
    return out.index_add(-1, segment_ids, values)


def tensor_sum(values: Tensor, state) -> Tensor:
    """Per-tensor sums over the last dimension: ``[..., P]`` -> ``[..., T]`` (``state`` holds
    the constants of :func:`segment_state`)."""
    matrix = state.segment_matrix[0]  # [T, P] or [T, 0]
    if matrix.shape[-1] == values.shape[-1]:
        return torch.matmul(values, matrix.t())
    return segment_sum(values, state.segment_ids[0], matrix.shape[0])


def to_coordinates(values: Tensor, state) -> Tensor:
    """Each coordinate gets its tensor's value: ``[..., T]`` -> ``[..., P]``."""
    matrix = state.segment_matrix[0]
    if matrix.shape[-1] == state.segment_ids.shape[-1]:
        return torch.matmul(values, matrix)
    return values.index_select(-1, state.segment_ids[0])
