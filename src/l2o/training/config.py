"""Meta-training settings as one plain, JSON-able record (stored in every checkpoint card)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

VALIDATION_SCORES = ("last-unroll", "trajectory", "final-objective")
META_OPTIMIZERS = ("adam", "rmsprop")
OBJECTIVES = ("sum", "log-normalized")
NONFINITE = ("skip", "zero")
RULE_STATES = ("reset", "carry")


@dataclass
class TrainConfig:
    """Everything that defines a meta-training run (METHOD.md 3.1 defaults).

    Attributes:
        recipe: recipe name (``dm``, ``dm-aug``, ``rnnprop``, ...).
        budget: ``demo`` | ``cpu`` | ``paper`` (how many epochs).
        model: learned rule kind (``dm``, ``rnnprop``).
        model_options: keyword arguments of the rule's constructor (e.g. ``output_scale``).
        task: training task; ``task_options`` override its defaults.
        num_epochs: training epochs (each a fresh optimizee trajectory of ``horizon`` steps).
        horizon: optimizee steps per epoch (``num_steps`` of the original).
        unroll_length: truncation length T of backpropagation through time (20).
        meta_lr: learning rate of the meta-optimizer (Adam 1e-3 for L2O-DM/RNNprop).
        meta_optimizer: ``adam`` (TF's defaults, L2O-DM/RNNprop) or ``rmsprop`` (L2O-Scale's:
            decay 0.9, epsilon 1e-20, mean squares initialised to 1 as TF1 does; METHOD.md 3.2).
        instances: optimizee instances per epoch, batched (the paper uses 1).
        random_scaling: Lv et al.'s random scaling augmentation, factors exp(U(-bound, bound)).
        grad_clip: clip the meta-gradient norm to this value (``None``: no clipping, as the paper).
        grad_clip_value: clip every meta-gradient entry to ``[-v, v]`` (L2O-Scale: 1e4).
        nonfinite: what a NaN/inf meta-gradient does: ``skip`` the meta-step and count it
            (L2O-DM/RNNprop here) or ``zero`` the non-finite entries and step (L2O-Scale).
        objective: the unroll's meta-loss: ``sum`` of the T + 1 minibatch losses (METHOD.md 3.1)
            or L2O-Scale's ``log-normalized`` mean of log objectives on a data subset (3.2).
        objective_subset: examples in the meta-objective subset, redrawn every unroll (used by
            ``log-normalized`` and ``final-objective``; the original's 10,000).
        rule_state: ``reset`` the rule's state at every epoch (fresh, the default) or ``carry``
            the final state of an epoch into the next one (the original L2O-Scale code); the
            optimizee is re-initialised either way and validation always starts fresh.
        evaluation_period: validate every this many epochs.
        evaluation_epochs: validation trajectories per validation (one batched population).
        validation_score: ``last-unroll`` (the original: sum over runs of the last unroll's
            losses), ``trajectory`` (sum over runs of the mean loss over the whole horizon) or
            ``final-objective`` (L2O-Scale's: mean over runs of the meta-objective ``f_D`` at the
            last entry of the last unroll's list, i.e. after ``horizon - 1`` updates).
        seed: the run's seed; every epoch's optimizee seeds derive from it and the epoch number.
        device: ``cpu`` or ``cuda``.
        compile: ``torch.compile`` the learned rule's step (falls back to eager if it fails;
            measured 1.27x faster meta-training on the 2-core CPU, docs/performance.md).
    """

    recipe: str = "dm"
    budget: str = "cpu"
    model: str = "dm"
    model_options: dict[str, Any] = field(default_factory=dict)
    task: str = "mlp-orig"
    task_options: dict[str, Any] = field(default_factory=dict)
    num_epochs: int = 10_000
    horizon: int = 100
    unroll_length: int = 20
    meta_lr: float = 1e-3
    instances: int = 1
    random_scaling: bool = False
    scaling_bound: float = 3.0
    grad_clip: float | None = None
    evaluation_period: int = 100
    evaluation_epochs: int = 20
    validation_score: str = "last-unroll"
    seed: int = 0
    device: str = "cpu"
    compile: bool = True
    # Added for L2O-Scale (METHOD.md 3.2). Their defaults are the L2O-DM/RNNprop behaviour, and
    # a saved run without them resumes as long as they keep their defaults (Trainer._restore).
    meta_optimizer: str = "adam"
    nonfinite: str = "skip"
    grad_clip_value: float | None = None
    objective: str = "sum"
    objective_subset: int = 10_000
    rule_state: str = "reset"

    def __post_init__(self) -> None:
        if self.horizon % self.unroll_length:
            raise ValueError(
                f"horizon {self.horizon} must be a multiple of unroll_length {self.unroll_length}"
            )
        for name, allowed in (
            ("validation_score", VALIDATION_SCORES),
            ("meta_optimizer", META_OPTIMIZERS),
            ("objective", OBJECTIVES),
            ("nonfinite", NONFINITE),
            ("rule_state", RULE_STATES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("grad_clip", "grad_clip_value"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        for name in (
            "num_epochs",
            "evaluation_period",
            "evaluation_epochs",
            "instances",
            "objective_subset",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each setting's default value."""
        out = {}
        for f in fields(cls):
            out[f.name] = f.default_factory() if f.default is MISSING else f.default
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        return cls(**data)
