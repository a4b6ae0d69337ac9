"""``LearnedOptimizer``: a trained learned rule as a real ``torch.optim.Optimizer``.

Each parameter group is flattened into one population of a single instance (``[1, P]``) with a
layout of its tensors, exactly the form the rule saw in meta-training and evaluation, so the
optimizer follows the same trajectory as ``l2o.evaluate`` on the same task and seed.

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
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from l2o.layout import Layout


def _resolve(rule_or_spec) -> Any:
    if isinstance(rule_or_spec, str) or hasattr(rule_or_spec, "__fspath__"):
        from l2o.registry import load_rule

        return load_rule(str(rule_or_spec))
    return rule_or_spec


class LearnedOptimizer(torch.optim.Optimizer):
    """Apply a learned (or any :class:`~l2o.rules.base.Rule`) update rule to model parameters.

    Args:
        params: parameters or parameter groups, as for any ``torch.optim`` optimizer. All
            parameters of a group must share one device and dtype (make separate groups
            otherwise).
        checkpoint: a checkpoint path, a pretrained/paper name (``"paper:dm-cl-il"``) or a rule
            object. Each group gets its own copy of the rule on the group's device and dtype.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], checkpoint: Any) -> None:
        self.rule = _resolve(checkpoint)
        super().__init__(params, defaults={})
        self._group_rules: dict[int, Any] = {}
        self._group_states: dict[int, Any] = {}

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
            if not params:
                continue
            rule = self._rule_for(index, group)
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            if index not in self._group_states:
                self._group_states[index] = self._load_group_state(index, group, rule)
            delta, self._group_states[index] = rule.step(
                self._flat(grads), self._group_states[index]
            )
            self._store_group_state(index, group)
            offset = 0
            for p in params:
                n = p.numel()
                p.add_(delta[0, offset : offset + n].view_as(p))
                offset += n
        return loss

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
