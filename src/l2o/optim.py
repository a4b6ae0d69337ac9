"""``LearnedOptimizer``: a trained learned rule as a real ``torch.optim.Optimizer``.

Each parameter group is flattened into one population of a single instance (``[1, P]``) with a
layout of its tensors, exactly the form the rule saw in meta-training and evaluation, so the
optimizer follows the same trajectory as ``l2o.evaluate`` on the same task and seed.

It behaves as ``torch.optim`` users expect:

* A parameter whose ``.grad`` is ``None`` does not move, and its part of the recurrent state
  (the per-coordinate state, and the per-tensor state of L2O-Scale) does not advance; the state
  the rule shares across all coordinates (L2O-Scale's global RNN, RNNprop's step counter)
  advances with the parameters that have a gradient. A group without any gradient is skipped.
* A non-finite gradient (inf or NaN anywhere in a group) skips that group's step with a
  ``RuntimeWarning``, leaving its weights and state untouched, as ``torch.amp.GradScaler`` does:
  one bad batch cannot poison the recurrent state for good.
* Every parameter group has an ``lr`` (default 1.0) that multiplies the learned step, so
  ``torch.optim.lr_scheduler`` schedules, warm-up and ``torch.optim.swa_utils.SWALR`` work. At
  ``lr=1.0`` the step is exactly the rule's.
* ``state_dict()`` holds only tensors and numbers: it round-trips through ``torch.save`` and
  ``torch.load(..., weights_only=True)``.

Example::

    import torch, l2o
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = l2o.LearnedOptimizer(model.parameters(), "runs/dm/best.safetensors")
    for inputs, targets in loader:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        opt.step()
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from l2o.layout import Layout

#: Two small layouts (tensor sizes) whose coordinate counts ``P`` and tensor counts ``T`` are all
#: distinct: a state leaf whose last dimension is ``P`` in both is per coordinate, ``T`` in both
#: per tensor, anything else is shared by the whole group (see ``_leaf_kinds``).
_PROBE_LAYOUTS = ((2, 3), (3, 4, 6))


def _resolve(rule_or_spec) -> Any:
    if isinstance(rule_or_spec, str) or hasattr(rule_or_spec, "__fspath__"):
        from l2o.registry import load_rule

        return load_rule(str(rule_or_spec))
    return rule_or_spec


def _check_lr(lr: Any) -> float:
    try:
        value = float(lr)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"LearnedOptimizer: lr must be a finite number >= 0 (a multiplier of the learned "
            f"step, 1.0 = the rule's own step), got {lr!r}"
        )
    return value


class LearnedOptimizer(torch.optim.Optimizer):
    """Apply a learned (or any :class:`~l2o.rules.base.Rule`) update rule to model parameters.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer. All
            parameters of a group must share one device and dtype (make separate groups
            otherwise).
        checkpoint: a checkpoint path, a pretrained/paper name (``"paper:dm-cl-il"``) or a rule
            object. Each group gets its own copy of the rule on the group's device and dtype.
        lr: the default multiplier of the learned step for groups that set none (1.0: the
            rule's step exactly, as in meta-training). Schedulers change ``group["lr"]``.
    """

    def __init__(
        self, params: Iterable[Tensor] | Iterable[dict], checkpoint: Any, lr: float = 1.0
    ) -> None:
        self.rule = _resolve(checkpoint)
        super().__init__(params, defaults={"lr": _check_lr(lr)})
        self._group_rules: dict[int, Any] = {}
        self._group_states: dict[int, Any] = {}
        self._group_leaf_kinds: dict[int, list[str]] = {}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "lr" in param_group:
            _check_lr(param_group["lr"])
        super().add_param_group(param_group)

    def _check_group(self, group: dict) -> tuple[torch.device, torch.dtype]:
        params = group["params"]
        devices = {p.device for p in params}
        dtypes = {p.dtype for p in params}
        if len(devices) > 1 or len(dtypes) > 1:
            raise ValueError(
                "LearnedOptimizer: all parameters of a group must share one device and dtype "
                f"(got {sorted(map(str, devices))}, {sorted(map(str, dtypes))}); "
                "pass them as separate parameter groups"
            )
        return next(iter(devices)), next(iter(dtypes))

    def _layout(self, group: dict) -> Layout:
        return Layout.from_shapes(
            [(f"param_{i}", tuple(p.shape)) for i, p in enumerate(group["params"])]
        )

    def _rule_for(self, index: int, group: dict):
        if index not in self._group_rules:
            device, dtype = self._check_group(group)
            rule = self.rule
            if isinstance(rule, torch.nn.Module):
                rule = copy.deepcopy(rule).to(device=device, dtype=dtype).requires_grad_(False)
            self._group_rules[index] = rule
        return self._group_rules[index]

    def _flat(self, tensors: list[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors]).unsqueeze(0)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            params = group["params"]
            has_grad = [p.grad is not None for p in params]
            if not any(has_grad):
                continue  # like torch.optim: nothing moves, no state advances
            if any(p.grad is not None and p.grad.is_sparse for p in params):
                raise ValueError("LearnedOptimizer does not support sparse gradients")
            lr = _check_lr(group["lr"])
            rule = self._rule_for(index, group)
            grad = self._flat(
                [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            )
            if not bool(torch.isfinite(grad).all()):
                warnings.warn(
                    f"LearnedOptimizer: non-finite gradient (inf or NaN) in parameter group "
                    f"{index}; skipped its step, its weights and state are unchanged",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            if index not in self._group_states:
                self._group_states[index] = self._load_group_state(index, group, rule)
            state = self._group_states[index]
            if not all(has_grad):
                self._check_can_freeze(index, group, rule)
            delta, new_state = rule.step(grad, state)
            if not all(has_grad):
                new_state = self._keep_frozen(index, group, rule, state, new_state, has_grad)
            self._group_states[index] = new_state
            self._store_group_state(index, group)
            offset = 0
            for p, moves in zip(params, has_grad, strict=True):
                n = p.numel()
                if moves:
                    update = delta[0, offset : offset + n].view_as(p)
                    p.add_(update if lr == 1.0 else update * lr)
                offset += n
        return loss

    # --- parameters without a gradient -----------------------------------------------------------

    def _leaf_kinds(self, index: int, group: dict, rule) -> list[str]:
        """``"coordinate"``, ``"tensor"`` or ``"shared"`` for each leaf of the rule's state, found
        by building the state of two small probe layouts (under a forked RNG, so the probe draws
        nothing from the caller's random stream)."""
        if index not in self._group_leaf_kinds:
            device, dtype = self._check_group(group)
            shapes = []
            with torch.random.fork_rng(devices=[]):
                for sizes in _PROBE_LAYOUTS:
                    layout = Layout.from_shapes([(f"t{i}", (s,)) for i, s in enumerate(sizes)])
                    x = torch.zeros(1, sum(sizes), device=device, dtype=dtype)
                    leaves, _ = tree_flatten(rule.init(x, layout))
                    shapes.append(
                        [leaf.shape if isinstance(leaf, Tensor) else None for leaf in leaves]
                    )
            kinds = []
            for probes in zip(*shapes, strict=True):
                if any(shape is None for shape in probes):
                    kinds.append("opaque")
                    continue
                last = [shape[-1] if len(shape) else None for shape in probes]
                if last == [sum(sizes) for sizes in _PROBE_LAYOUTS]:
                    kinds.append("coordinate")
                elif last == [len(sizes) for sizes in _PROBE_LAYOUTS]:
                    kinds.append("tensor")
                else:
                    kinds.append("shared")
            self._group_leaf_kinds[index] = kinds
        return self._group_leaf_kinds[index]

    def _check_can_freeze(self, index: int, group: dict, rule) -> None:
        """Raise before stepping if the rule's state cannot be split by parameter."""
        if "opaque" in self._leaf_kinds(index, group, rule):
            raise ValueError(
                f"LearnedOptimizer: rule {getattr(rule, 'name', rule)!r} keeps its state outside "
                "tensors, so parameters without a gradient cannot be left alone; give every "
                "parameter of the group a gradient (e.g. zero it), or use the torch.optim "
                "optimizer itself"
            )

    def _keep_frozen(
        self, index: int, group: dict, rule, old: Any, new: Any, has_grad: list[bool]
    ) -> Any:
        """``new`` with the per-coordinate and per-tensor state of the parameters that had no
        gradient taken from ``old``."""
        kinds = self._leaf_kinds(index, group, rule)
        device = group["params"][0].device
        by_tensor = torch.tensor(has_grad, device=device)
        sizes = torch.tensor([p.numel() for p in group["params"]], device=device)
        masks = {"tensor": by_tensor, "coordinate": by_tensor.repeat_interleave(sizes)}
        old_leaves, spec = tree_flatten(old)
        new_leaves, _ = tree_flatten(new)
        merged = []
        for kind, before, after in zip(kinds, old_leaves, new_leaves, strict=True):
            if kind in masks:
                out = torch.empty_like(after)  # keeps the rule's memory layout (strides)
                after = torch.where(masks[kind], after, before.to(after.dtype), out=out)
            merged.append(after)
        return tree_unflatten(merged, spec)

    # --- state_dict ------------------------------------------------------------------------------

    # The rule's state lives in self.state[first param of the group] so that state_dict() and
    # load_state_dict() carry it like any torch.optim state.
    def _load_group_state(self, index: int, group: dict, rule) -> Any:
        params = group["params"]
        x = self._flat([p.detach() for p in params])
        fresh = rule.init(x, self._layout(group))
        saved = self.state.get(params[0], {})
        if "rule_state_0" not in saved:
            return fresh
        leaves, spec = tree_flatten(fresh)
        restored = [saved[f"rule_state_{i}"] for i in range(len(leaves))]
        restored = [
            r.to(device=leaf.device, dtype=leaf.dtype) if isinstance(leaf, Tensor) else r
            for r, leaf in zip(restored, leaves, strict=True)
        ]
        return tree_unflatten(restored, spec)

    def _store_group_state(self, index: int, group: dict) -> None:
        # A new dict each step: a state_dict() taken earlier keeps the values it had.
        leaves, _ = tree_flatten(self._group_states[index])
        self.state[group["params"][0]] = {f"rule_state_{i}": leaf for i, leaf in enumerate(leaves)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._group_states.clear()
