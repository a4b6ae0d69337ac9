"""Meta-training settings as one plain, JSON-able record (stored in every checkpoint card)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from itertools import pairwise
from typing import Any

VALIDATION_SCORES = ("last-unroll", "trajectory", "final-objective")
META_OPTIMIZERS = ("adam", "rmsprop")
OBJECTIVES = ("sum", "log-normalized")
NONFINITE = ("skip", "zero")
RULE_STATES = ("reset", "carry")
IMITATION_MODES = ("alternate", "joint")
IMITATION_OPTIMIZERS = ("separate", "shared")
IMITATION_TIME_WEIGHTS = ("sum", "mean")


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
        stage_evaluation_periods: with a curriculum, validate every this many epochs *of the
            stage*, per stage (the last entry serves the later stages); empty: every
            ``evaluation_period`` epochs of the stage. The cpu and demo budgets use it to keep
            stage 0 as long as the paper's (L2O-DM's plateau, docs/techniques.md).
        evaluation_epochs: validation trajectories per validation (one batched population).
        validation_score: ``last-unroll`` (the original: sum over runs of the last unroll's
            losses), ``trajectory`` (sum over runs of the mean loss over the whole horizon) or
            ``final-objective`` (L2O-Scale's: mean over runs of the meta-objective ``f_D`` at the
            last entry of the last unroll's list, i.e. after ``horizon - 1`` updates).
        seed: the run's seed; every epoch's optimizee seeds derive from it and the epoch number.
        device: ``cpu`` or ``cuda``.
        compile: ``torch.compile`` the learned rule's step (falls back to eager if it fails;
            measured 1.27x faster meta-training on the 2-core CPU, docs/performance.md).
        curriculum: training horizons of the validation-gated curriculum (METHOD.md 4), or
            ``None`` for a fixed ``horizon``. With a curriculum, ``horizon`` is ignored, each
            stage validates on the next stage's horizon, and ``num_epochs`` caps the run.
        min_evaluations: validations a curriculum stage lasts at least (3).
        reset_meta_optimizer_on_advance: start each curriculum stage with fresh meta-optimizer
            moments (the original keeps them: ``False``).
        imitation_ratios: probability that an epoch is an imitation epoch, per curriculum stage
            (the last entry serves the later stages; one entry without a curriculum). Empty: no
            imitation (METHOD.md 5).
        teachers: imitation teachers, cycled round-robin over imitation epochs: analytic rules as
            ``NAME`` or ``NAME@LR`` (``adam`` = Adam at lr 0.01, the paper's), or ``self`` (a
            frozen copy of the previous stage's best rule: self-improving; needs a curriculum).
        teacher_steps: ``k``: teacher steps per imitated step (the label is their total).
        imitation_mode: ``alternate`` (whole imitation epochs, off-policy: the paper's) or
            ``joint`` (every epoch is on-policy meta-training whose unroll loss adds
            ``imitation_weight`` times the imitation loss against a teacher fed the same
            gradients; ``imitation_ratios`` then only says in which stages it is on).
        imitation_weight: lambda of the ``joint`` mode.
        imitation_optimizer: ``separate`` meta-optimizer for the imitation loss, with its own
            moments (L2O-DM/RNNprop) or ``shared`` with the meta-loss (L2O-Scale).
        imitation_time_weight: the imitation loss sums its T steps (``sum``, 5.1) or averages
            them (``mean``, L2O-Scale's 1/T weights, 5.2).
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
    # The paper's techniques (METHOD.md 4 and 5); the defaults switch them off.
    curriculum: list[int] | None = None
    min_evaluations: int = 3
    stage_evaluation_periods: list[int] = field(default_factory=list)
    reset_meta_optimizer_on_advance: bool = False
    imitation_ratios: list[float] = field(default_factory=list)
    teachers: list[str] = field(default_factory=lambda: ["adam"])
    teacher_steps: int = 1
    imitation_mode: str = "alternate"
    imitation_weight: float = 1.0
    imitation_optimizer: str = "separate"
    imitation_time_weight: str = "sum"

    def __post_init__(self) -> None:
        horizons = self.curriculum if self.curriculum else [self.horizon]
        for h in horizons:
            if h % self.unroll_length:
                raise ValueError(
                    f"horizon {h} must be a multiple of unroll_length {self.unroll_length}"
                )
        if self.curriculum is not None:
            if not self.curriculum or any(b <= a for a, b in pairwise(self.curriculum)):
                raise ValueError(f"curriculum must be increasing horizons, got {self.curriculum}")
            self.curriculum = [int(h) for h in self.curriculum]
        if any(p < 1 for p in self.stage_evaluation_periods):
            raise ValueError(
                f"stage_evaluation_periods must be at least 1, got {self.stage_evaluation_periods}"
            )
        if any(not 0.0 <= r <= 1.0 for r in self.imitation_ratios):
            raise ValueError(f"imitation_ratios must lie in [0, 1], got {self.imitation_ratios}")
        if self.imitation_ratios:
            from l2o.training.imitation import SELF_TEACHER, parse_teacher

            if not self.teachers:
                raise ValueError("imitation needs at least one teacher")
            for spec in self.teachers:
                parse_teacher(spec)
            if SELF_TEACHER in self.teachers and not self.curriculum:
                raise ValueError(
                    "the 'self' teacher is the previous curriculum stage's best rule: it needs "
                    "a curriculum"
                )
            if self.imitation_mode == "joint" and (
                self.objective != "sum" or SELF_TEACHER in self.teachers
            ):
                raise ValueError(
                    "imitation_mode 'joint' works with the 'sum' objective and analytic teachers"
                )
        for name, allowed in (
            ("validation_score", VALIDATION_SCORES),
            ("meta_optimizer", META_OPTIMIZERS),
            ("objective", OBJECTIVES),
            ("nonfinite", NONFINITE),
            ("rule_state", RULE_STATES),
            ("imitation_mode", IMITATION_MODES),
            ("imitation_optimizer", IMITATION_OPTIMIZERS),
            ("imitation_time_weight", IMITATION_TIME_WEIGHTS),
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
            "min_evaluations",
            "teacher_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def horizons(self) -> list[int]:
        """The training horizons: the curriculum's stages, or the one fixed horizon."""
        return list(self.curriculum) if self.curriculum else [self.horizon]

    def stage_evaluation_period(self, stage: int = 0) -> int:
        """Validation cadence (epochs) in curriculum stage ``stage``."""
        periods = self.stage_evaluation_periods
        return periods[min(stage, len(periods) - 1)] if periods else self.evaluation_period

    def imitation_ratio(self, stage: int = 0) -> float:
        """Probability that an epoch of ``stage`` is an imitation epoch."""
        if not self.imitation_ratios:
            return 0.0
        return self.imitation_ratios[min(stage, len(self.imitation_ratios) - 1)]

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
