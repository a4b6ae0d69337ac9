"""The one contract every optimizer rule implements, learned or analytic, and the base class that
learned rules share.

``state = rule.init(x, layout, generator=None)`` then, each step,
``delta, state = rule.step(grad, state)`` and the caller applies ``x <- x + delta``. ``x`` and
``grad`` are a population ``[n, P]`` (``n`` independent instances of one problem); the layout says
which coordinates form which tensor (L2O-Scale and the MLP rule normalise per tensor).
``generator`` is where a rule with a random initial state draws it from: ``None`` (the global torch
RNG), one ``torch.Generator``, or one generator per instance, so that instance ``i`` depends on
``generator[i]`` alone. Callers always pass it (``l2o.evaluation.init_rule_state``); rules without
randomness ignore it. Evaluation, meta-training and imitation never ask which kind of rule they
hold.

Every rule state is a tree of tensors whose floating leaves take ``x``'s dtype and device, and
whose leaves with a leading population dimension can be sliced per instance (evaluation steps
large populations in chunks). ``tests/test_rule_contract.py`` checks all of this for every
registered family.

:class:`LearnedRule` (an ``nn.Module``) owns what the learned families share: the
``hyperparameters()`` card entry and its inverse :meth:`LearnedRule.from_hyperparameters`, the
``weights_source`` of loaded weights, :attr:`LearnedRule.num_weights`, and the ``.npz`` checkpoint
I/O (keys are ``state_dict`` names with ``/`` for ``.``, the sonnet variable names of the
authors' checkpoints: ``lstm_1.w_gates`` <-> ``lstm_1/w_gates``). A new learned optimizer subclasses
it, sets ``name``, implements ``settings()``, ``init`` and ``step``, and is listed in
:mod:`l2o.rules.registry`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from l2o.layout import Layout

#: What ``init`` accepts as ``generator``: the global RNG, one generator, or one per instance.
Generators = torch.Generator | Sequence[torch.Generator] | None


@runtime_checkable
class Rule(Protocol):
    """An optimizer update rule over a flat population."""

    name: str

    def init(self, x: Tensor, layout: Layout | None, generator: Generators = None) -> Any:
        """The rule's state for population ``x`` (``[n, P]``)."""
        ...

    def step(self, grad: Tensor, state: Any) -> tuple[Tensor, Any]:
        """The update ``delta`` (``x_{t+1} = x_t + delta``) for ``grad``, and the new state."""
        ...

    def hyperparameters(self) -> dict[str, Any]:
        """Settings recorded in summaries and checkpoint cards."""
        ...


# ---------------------------------------------------------------------------------------------
# Checkpoint keys: ``state_dict`` names with "/" for ".".


def npz_key(param_name: str) -> str:
    """``"lstm_1.w_gates"`` -> ``"lstm_1/w_gates"`` (the authors' sonnet variable names)."""
    return param_name.replace(".", "/")


def npz_state_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The checkpoint keys of ``module`` and the shape each must have."""
    return {npz_key(name): tuple(p.shape) for name, p in module.named_parameters()}


def _describe(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{k} {'x'.join(map(str, s)) or 'scalar'}" for k, s in shapes.items())


def load_npz_state(module: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy ``arrays`` (checkpoint key -> array) into ``module``'s parameters, exactly.

    Raises:
        ValueError: if a key is missing or unexpected or a shape differs; the message lists the
            expected keys and shapes. Nothing is copied in that case.
    """
    expected = npz_state_shapes(module)
    got = {k: tuple(np.shape(v)) for k, v in arrays.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or extra or wrong:
        problems = []
        if missing:
            problems.append(f"missing keys {missing}")
        if extra:
            problems.append(f"unexpected keys {extra}")
        if wrong:
            problems.append(
                "wrong shapes " + ", ".join(f"{k} {got[k]} (expected {expected[k]})" for k in wrong)
            )
        raise ValueError(
            f"weights do not fit {type(module).__name__}: {'; '.join(problems)}. "
            f"Expected exactly: {_describe(expected)}."
        )
    with torch.no_grad():
        for name, p in module.named_parameters():
            value = torch.from_numpy(np.asarray(arrays[npz_key(name)]))
            p.copy_(value.to(device=p.device, dtype=p.dtype))


def export_npz_state(module: nn.Module) -> dict[str, np.ndarray]:
    """``module``'s parameters as float32 NumPy arrays under the checkpoint keys (the inverse of
    :func:`load_npz_state`; ``np.savez(path, **export_npz_state(rule))`` writes a checkpoint)."""
    return {
        npz_key(name): p.detach().to("cpu", torch.float32).numpy().copy()
        for name, p in module.named_parameters()
    }


class NpzStateMixin:
    """Checkpoint I/O for a rule module whose parameter names map 1:1 to the npz keys."""

    def npz_state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Checkpoint key -> expected shape."""
        return npz_state_shapes(self)  # type: ignore[arg-type]

    def load_npz_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Copy the checkpoint ``arrays`` (e.g. ``dict(np.load(path))``) into the weights."""
        load_npz_state(self, arrays)  # type: ignore[arg-type]

    def export_npz_state(self) -> dict[str, np.ndarray]:
        """The weights as float32 arrays under the checkpoint keys."""
        return export_npz_state(self)  # type: ignore[arg-type]

    @property
    def num_weights(self) -> int:
        """The number of trainable scalars (5,141 for L2O-DM, 6,641 for RNNprop)."""
        return sum(p.numel() for p in self.parameters())  # type: ignore[attr-defined]


#: Keys of ``hyperparameters()`` that describe an instance but are not constructor arguments.
INFO_KEYS = frozenset({"model", "weights", "num_weights"})


def constructor_kwargs(d: Mapping, model: str) -> dict:
    """The constructor arguments in a ``hyperparameters()`` dict, checking its ``model``."""
    if d.get("model", model) != model:
        raise ValueError(f"hyperparameters describe model {d['model']!r}, not {model!r}")
    return {k: v for k, v in d.items() if k not in INFO_KEYS}


class LearnedRule(NpzStateMixin, nn.Module):
    """Base class of the meta-trainable rules: an ``nn.Module`` that is a :class:`Rule`.

    Subclasses set ``name`` (the family, the key in :mod:`l2o.rules.registry` and the ``model``
    of checkpoint cards), implement :meth:`settings` (their constructor arguments, JSON-ready),
    :meth:`init` and :meth:`step`. ``step`` must be differentiable with respect to the weights
    (meta-training backpropagates through it) and also run under ``torch.no_grad()``.
    """

    name: str = ""

    def __init__(self) -> None:
        super().__init__()
        #: Where the weights came from (e.g. ``"paper:dm-cl-il"``), once loaded; ``None`` if not.
        self.weights_source: str | None = None

    def settings(self) -> dict[str, Any]:
        """The constructor arguments of this instance (lists, not tuples: JSON-ready)."""
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        """``{"model": name, **settings(), "num_weights": ..., ["weights": source]}``: what
        summaries and checkpoint cards record, and what :meth:`from_hyperparameters` reads."""
        out: dict[str, Any] = {"model": self.name, **self.settings()}
        out["num_weights"] = self.num_weights
        if self.weights_source is not None:
            out["weights"] = self.weights_source
        return out

    @classmethod
    def from_hyperparameters(cls, d: Mapping[str, Any]) -> LearnedRule:
        """An untrained instance with the settings of a :meth:`hyperparameters` dict.

        Raises:
            ValueError: if ``d`` describes another family.
        """
        return cls(**cls._kwargs_from_settings(constructor_kwargs(d, cls.name)))

    @classmethod
    def _kwargs_from_settings(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Hook: turn recorded settings into constructor arguments (drop descriptive keys)."""
        return kwargs

    def init(self, x: Tensor, layout: Layout | None = None, generator: Generators = None) -> Any:
        raise NotImplementedError

    def step(self, grad: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError
