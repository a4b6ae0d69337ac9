"""Meta-training settings: a typed record in sections, stored flat in every checkpoint card.

:class:`TrainConfig` holds what defines a run: the model and task, the horizon and truncation,
and five sections: the meta-optimizer (:class:`MetaConfig`), the meta-objective
(:class:`ObjectiveConfig`), validation (:class:`ValidationConfig`), the curriculum
(:class:`CurriculumConfig`) and imitation (:class:`ImitationConfig`). Every choice among named
alternatives is an enum (a ``StrEnum``: it compares equal to, and serialises as, its string), so
the trainer picks its parts once by type instead of comparing strings.

On disk the configuration is the **flat** dictionary it has always been (``to_dict()``; the keys
of :data:`FLAT_KEYS`, e.g. ``meta_optimizer``, ``imitation_ratios``): checkpoint cards, training
states and ``config.json`` of earlier runs load unchanged, and recipes and command-line overrides
are flat keyword settings (:meth:`TrainConfig.from_flat`). The flat names also read as attributes
(``config.imitation_ratios`` is ``config.imitation.ratios``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Any


class MetaOptimizer(StrEnum):
    """The meta-optimizer: Adam (TF's defaults; L2O-DM/RNNprop) or L2O-Scale's RMSProp."""

    ADAM = "adam"
    RMSPROP = "rmsprop"


class NonFinite(StrEnum):
    """What a NaN/inf meta-gradient does: ``skip`` the step (counted) or ``zero`` its entries."""

    SKIP = "skip"
    ZERO = "zero"


class Objective(StrEnum):
    """The unroll's meta-loss: the ``sum`` of its losses or L2O-Scale's ``log-normalized`` one."""

    SUM = "sum"
    LOG_NORMALIZED = "log-normalized"


class ValidationScore(StrEnum):
    """How a validation population is scored (:func:`l2o.training.validation.validation_score`)."""

    LAST_UNROLL = "last-unroll"
    TRAJECTORY = "trajectory"
    FINAL_OBJECTIVE = "final-objective"


class RuleState(StrEnum):
    """``reset`` the rule's state every epoch, or ``carry`` it into the next epoch."""

    RESET = "reset"
    CARRY = "carry"


class ImitationMode(StrEnum):
    """Off-policy imitation epochs (``alternate``) or an on-policy imitation term (``joint``)."""

    ALTERNATE = "alternate"
    JOINT = "joint"


class ImitationOptimizer(StrEnum):
    """A ``separate`` meta-optimizer for the imitation loss, or the ``shared`` one."""

    SEPARATE = "separate"
    SHARED = "shared"


class TimeWeight(StrEnum):
    """The imitation loss ``sum``\\ s its T steps or takes their ``mean``."""

    SUM = "sum"
    MEAN = "mean"


def _choice(kind: type[StrEnum], name: str, value: Any) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = tuple(m.value for m in kind)
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def _at_least_one(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def _positive_or_none(**values: float | None) -> None:
    for name, value in values.items():
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive or None, got {value}")


@dataclass
class MetaConfig:
    """The meta-optimizer and what it does with a meta-gradient (docs/method.md 3.1, 3.2).

    Attributes:
        optimizer: ``adam`` (TF's defaults, L2O-DM/RNNprop) or ``rmsprop`` (L2O-Scale's: decay
            0.9, epsilon 1e-20, mean squares initialised to 1 as TF1 does). Flat:
            ``meta_optimizer``.
        lr: its learning rate (Adam 1e-3 for L2O-DM/RNNprop). Flat: ``meta_lr``.
        grad_clip: clip the meta-gradient norm to this value (``None``: no clipping, as the paper).
        grad_clip_value: clip every meta-gradient entry to ``[-v, v]`` (L2O-Scale: 1e4).
        nonfinite: ``skip`` a NaN/inf meta-gradient and count it (L2O-DM/RNNprop here) or ``zero``
            its non-finite entries and step (L2O-Scale).
        shard_size: split a meta-step's ``instances`` into shards of this many consecutive
            instance seeds, backpropagated one shard at a time (the population mean still
            normalised by ``instances``) and summed in shard order, so the result does not depend
            on how many processes ran the shards (data-parallel meta-training,
            :mod:`l2o.training.distributed`). ``None``: one shard, the whole population (the
            single-process path); with several processes, one instance per shard.
    """

    optimizer: MetaOptimizer = MetaOptimizer.ADAM
    lr: float = 1e-3
    grad_clip: float | None = None
    grad_clip_value: float | None = None
    nonfinite: NonFinite = NonFinite.SKIP
    shard_size: int | None = None

    def __post_init__(self) -> None:
        self.optimizer = _choice(MetaOptimizer, "meta_optimizer", self.optimizer)
        self.nonfinite = _choice(NonFinite, "nonfinite", self.nonfinite)
        if self.shard_size is not None:
            _at_least_one(shard_size=self.shard_size)
        _positive_or_none(grad_clip=self.grad_clip, grad_clip_value=self.grad_clip_value)


@dataclass
class ObjectiveConfig:
    """The unroll's meta-loss.

    Attributes:
        kind: ``sum`` of the T + 1 minibatch losses (docs/method.md 3.1) or L2O-Scale's
            ``log-normalized`` mean of log objectives on a data subset (3.2). Flat: ``objective``.
        subset: examples in the meta-objective subset, redrawn every unroll (used by
            ``log-normalized`` and ``final-objective``; the original's 10,000). Flat:
            ``objective_subset``.
    """

    kind: Objective = Objective.SUM
    subset: int = 10_000

    def __post_init__(self) -> None:
        self.kind = _choice(Objective, "objective", self.kind)
        _at_least_one(objective_subset=self.subset)


@dataclass
class ValidationConfig:
    """When and how the rule is validated.

    Attributes:
        period: validate every this many epochs. Flat: ``evaluation_period``.
        epochs: validation trajectories per validation (one batched population). Flat:
            ``evaluation_epochs``.
        score: ``last-unroll`` (the original: sum over runs of the last unroll's losses),
            ``trajectory`` (sum over runs of the mean loss over the whole horizon) or
            ``final-objective`` (L2O-Scale's: mean over runs of the meta-objective ``f_D`` at the
            last entry of the last unroll's list, i.e. after ``horizon - 1`` updates). Flat:
            ``validation_score``.
        stage_periods: with a curriculum, validate every this many epochs *of the stage*, per
            stage (the last entry serves the later stages); empty: every ``period`` epochs of the
            stage. The cpu and demo budgets use it to keep stage 0 as long as the paper's
            (L2O-DM's plateau, docs/techniques.md). Flat: ``stage_evaluation_periods``.
    """

    period: int = 100
    epochs: int = 20
    score: ValidationScore = ValidationScore.LAST_UNROLL
    stage_periods: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.score = _choice(ValidationScore, "validation_score", self.score)
        _at_least_one(evaluation_period=self.period, evaluation_epochs=self.epochs)
        if any(p < 1 for p in self.stage_periods):
            raise ValueError(
                f"stage_evaluation_periods must be at least 1, got {self.stage_periods}"
            )


@dataclass
class CurriculumConfig:
    """The validation-gated curriculum (docs/method.md 4).

    Attributes:
        horizons: training horizons of the stages, increasing, or ``None`` for a fixed
            ``horizon``. With a curriculum, ``horizon`` is ignored, each stage validates on the
            next stage's horizon, and ``num_epochs`` caps the run. Flat: ``curriculum``.
        min_evaluations: validations a stage lasts at least (3).
        reset_meta_optimizer_on_advance: start each stage with fresh meta-optimizer moments (the
            original keeps them: ``False``).
    """

    horizons: list[int] | None = None
    min_evaluations: int = 3
    reset_meta_optimizer_on_advance: bool = False

    def __post_init__(self) -> None:
        if self.horizons is not None:
            if not self.horizons or any(b <= a for a, b in pairwise(self.horizons)):
                raise ValueError(f"curriculum must be increasing horizons, got {self.horizons}")
            self.horizons = [int(h) for h in self.horizons]
        _at_least_one(min_evaluations=self.min_evaluations)


@dataclass
class ImitationConfig:
    """Imitation of a teacher optimizer (docs/method.md 5).

    Attributes:
        ratios: probability that an epoch is an imitation epoch, per curriculum stage (the last
            entry serves the later stages; one entry without a curriculum). Empty: no imitation.
            Flat: ``imitation_ratios``.
        teachers: teachers, cycled round-robin over imitation epochs: analytic rules as ``NAME``
            or ``NAME@LR`` (``adam`` = Adam at lr 0.01, the paper's), or ``self`` (a frozen copy
            of the previous stage's best rule: self-improving; needs a curriculum).
        teacher_steps: ``k``: teacher steps per imitated step (the label is their total).
        mode: ``alternate`` (whole imitation epochs, off-policy: the paper's) or ``joint`` (every
            epoch is on-policy meta-training whose unroll loss adds ``weight`` times the imitation
            loss against a teacher fed the same gradients; ``ratios`` then only says in which
            stages it is on). Flat: ``imitation_mode``.
        weight: lambda of the ``joint`` mode. Flat: ``imitation_weight``.
        optimizer: ``separate`` meta-optimizer for the imitation loss, with its own moments
            (L2O-DM/RNNprop) or ``shared`` with the meta-loss (L2O-Scale). Flat:
            ``imitation_optimizer``.
        time_weight: the loss sums its T steps (``sum``, 5.1) or averages them (``mean``,
            L2O-Scale's 1/T weights, 5.2). Flat: ``imitation_time_weight``.
    """

    ratios: list[float] = field(default_factory=list)
    teachers: list[str] = field(default_factory=lambda: ["adam"])
    teacher_steps: int = 1
    mode: ImitationMode = ImitationMode.ALTERNATE
    weight: float = 1.0
    optimizer: ImitationOptimizer = ImitationOptimizer.SEPARATE
    time_weight: TimeWeight = TimeWeight.SUM

    def __post_init__(self) -> None:
        self.mode = _choice(ImitationMode, "imitation_mode", self.mode)
        self.optimizer = _choice(ImitationOptimizer, "imitation_optimizer", self.optimizer)
        self.time_weight = _choice(TimeWeight, "imitation_time_weight", self.time_weight)
        _at_least_one(teacher_steps=self.teacher_steps)
        if any(not 0.0 <= r <= 1.0 for r in self.ratios):
            raise ValueError(f"imitation_ratios must lie in [0, 1], got {self.ratios}")
        if self.ratios:
            from l2o.training.imitation import parse_teacher

            if not self.teachers:
                raise ValueError("imitation needs at least one teacher")
            for spec in self.teachers:
                parse_teacher(spec)

    @property
    def enabled(self) -> bool:
        return bool(self.ratios)

    def ratio(self, stage: int = 0) -> float:
        """Probability that an epoch of curriculum ``stage`` is an imitation epoch."""
        return self.ratios[min(stage, len(self.ratios) - 1)] if self.ratios else 0.0


#: Flat setting name -> ``(section, field)`` (``None``: a field of :class:`TrainConfig` itself),
#: in the order ``to_dict()`` writes them (the order of the flat record of earlier versions).
FLAT_KEYS: dict[str, tuple[str | None, str]] = {
    "recipe": (None, "recipe"),
    "budget": (None, "budget"),
    "model": (None, "model"),
    "model_options": (None, "model_options"),
    "task": (None, "task"),
    "task_options": (None, "task_options"),
    "num_epochs": (None, "num_epochs"),
    "horizon": (None, "horizon"),
    "unroll_length": (None, "unroll_length"),
    "meta_lr": ("meta", "lr"),
    "instances": (None, "instances"),
    "random_scaling": (None, "random_scaling"),
    "scaling_bound": (None, "scaling_bound"),
    "grad_clip": ("meta", "grad_clip"),
    "evaluation_period": ("validation", "period"),
    "evaluation_epochs": ("validation", "epochs"),
    "validation_score": ("validation", "score"),
    "seed": (None, "seed"),
    "device": (None, "device"),
    "compile": (None, "compile"),
    "meta_optimizer": ("meta", "optimizer"),
    "nonfinite": ("meta", "nonfinite"),
    "grad_clip_value": ("meta", "grad_clip_value"),
    "objective": ("meta_objective", "kind"),
    "objective_subset": ("meta_objective", "subset"),
    "rule_state": (None, "rule_state"),
    "curriculum": ("schedule", "horizons"),
    "min_evaluations": ("schedule", "min_evaluations"),
    "stage_evaluation_periods": ("validation", "stage_periods"),
    "reset_meta_optimizer_on_advance": ("schedule", "reset_meta_optimizer_on_advance"),
    "imitation_ratios": ("imitation", "ratios"),
    "teachers": ("imitation", "teachers"),
    "teacher_steps": ("imitation", "teacher_steps"),
    "imitation_mode": ("imitation", "mode"),
    "imitation_weight": ("imitation", "weight"),
    "imitation_optimizer": ("imitation", "optimizer"),
    "imitation_time_weight": ("imitation", "time_weight"),
    "shard_size": ("meta", "shard_size"),
}
#: Settings added after the flat record's first version, written only when not at their default,
#: so the record of a run that does not use them is exactly what earlier versions wrote.
OMITTED_AT_DEFAULT: dict[str, Any] = {"shard_size": None}
_SECTIONS: dict[str, type] = {
    "meta": MetaConfig,
    "meta_objective": ObjectiveConfig,
    "validation": ValidationConfig,
    "schedule": CurriculumConfig,
    "imitation": ImitationConfig,
}


@dataclass
class TrainConfig:
    """Everything that defines a meta-training run (docs/method.md 3.1 defaults).

    Build one from flat settings with :meth:`from_flat` (what recipes do) or from a saved record
    with :meth:`from_dict`.

    Attributes:
        recipe: recipe name (``dm``, ``dm-aug``, ``rnnprop``, ...).
        budget: ``demo`` | ``cpu`` | ``paper`` (how many epochs).
        model: learned rule kind (``dm``, ``rnnprop``, ``scale``).
        model_options: keyword arguments of the rule's constructor (e.g. ``output_scale``).
        task: training task; ``task_options`` override its defaults.
        num_epochs: training epochs (each a fresh optimizee trajectory of ``horizon`` steps).
        horizon: optimizee steps per epoch (``num_steps`` of the original).
        unroll_length: truncation length T of backpropagation through time (20).
        instances: optimizee instances per epoch, batched (the paper uses 1).
        random_scaling: Lv et al.'s random scaling augmentation, factors
            exp(U(-scaling_bound, scaling_bound)).
        seed: the run's seed; every epoch's optimizee seeds derive from it and the epoch number.
        device: ``cpu`` or ``cuda``.
        compile: ``torch.compile`` the learned rule's step (falls back to eager if it fails;
            measured 1.27x faster meta-training on the 2-core CPU, docs/performance.md).
        rule_state: ``reset`` the rule's state at every epoch (fresh, the default) or ``carry``
            the final state of an epoch into the next one (the original L2O-Scale code); the
            optimizee is re-initialised either way and validation always starts fresh.
        meta, meta_objective, validation, schedule, imitation: the sections.
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
    instances: int = 1
    random_scaling: bool = False
    scaling_bound: float = 3.0
    seed: int = 0
    device: str = "cpu"
    compile: bool = True
    rule_state: RuleState = RuleState.RESET
    meta: MetaConfig = field(default_factory=MetaConfig)
    meta_objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    schedule: CurriculumConfig = field(default_factory=CurriculumConfig)
    imitation: ImitationConfig = field(default_factory=ImitationConfig)

    def __post_init__(self) -> None:
        self.rule_state = _choice(RuleState, "rule_state", self.rule_state)
        _at_least_one(num_epochs=self.num_epochs, instances=self.instances)
        if self.meta.shard_size is not None and self.meta.shard_size > self.instances:
            raise ValueError(
                f"shard_size {self.meta.shard_size} is larger than instances {self.instances}; "
                "a shard is a part of a meta-step's instances"
            )
        for h in self.horizons:
            if h % self.unroll_length:
                raise ValueError(
                    f"horizon {h} must be a multiple of unroll_length {self.unroll_length}"
                )
        from l2o.training.imitation import SELF_TEACHER

        imitation = self.imitation
        if imitation.enabled and SELF_TEACHER in imitation.teachers and not self.curriculum:
            raise ValueError(
                "the 'self' teacher is the previous curriculum stage's best rule: it needs a "
                "curriculum"
            )
        if (
            imitation.enabled
            and imitation.mode is ImitationMode.JOINT
            and (
                self.meta_objective.kind is not Objective.SUM or SELF_TEACHER in imitation.teachers
            )
        ):
            raise ValueError(
                "imitation_mode 'joint' works with the 'sum' objective and analytic teachers"
            )

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not attributes: the flat names of section settings.
        where = FLAT_KEYS.get(name)
        if where is None or where[0] is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(getattr(self, where[0]), where[1])

    @property
    def horizons(self) -> list[int]:
        """The training horizons: the curriculum's stages, or the one fixed horizon."""
        return list(self.schedule.horizons) if self.schedule.horizons else [self.horizon]

    def stage_evaluation_period(self, stage: int = 0) -> int:
        """Validation cadence (epochs) in curriculum stage ``stage``."""
        periods = self.validation.stage_periods
        return periods[min(stage, len(periods) - 1)] if periods else self.validation.period

    def imitation_ratio(self, stage: int = 0) -> float:
        """Probability that an epoch of ``stage`` is an imitation epoch."""
        return self.imitation.ratio(stage)

    # -- the flat record ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The flat record (plain JSON values) stored in cards, training states, config.json;
        the settings of :data:`OMITTED_AT_DEFAULT` only when they are not at their default."""
        out = {}
        for key, (section, name) in FLAT_KEYS.items():
            value = getattr(getattr(self, section) if section else self, name)
            if isinstance(value, StrEnum):
                value = value.value
            elif isinstance(value, list | dict):
                value = type(value)(value)
            if key in OMITTED_AT_DEFAULT and value == OMITTED_AT_DEFAULT[key]:
                continue
            out[key] = value
        return out

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each flat setting's default value (every setting, including those ``to_dict()``
        omits at their default)."""
        return {**cls().to_dict(), **OMITTED_AT_DEFAULT}

    @classmethod
    def from_flat(cls, **settings: Any) -> TrainConfig:
        """A config from flat settings (``meta_optimizer="rmsprop"``, ``curriculum=[...]``);
        unknown names raise, listing the known ones."""
        unknown = sorted(set(settings) - set(FLAT_KEYS))
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(FLAT_KEYS)}")
        top: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        for key, value in settings.items():
            section, name = FLAT_KEYS[key]
            (sections[section] if section else top)[name] = value
        return cls(**top, **{name: _SECTIONS[name](**v) for name, v in sections.items()})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A config from a saved record: the flat form (``to_dict()``, every card so far)."""
        return cls.from_flat(**data)

    def replace(self, **settings: Any) -> TrainConfig:
        """A copy with some flat settings changed."""
        return self.from_flat(**{**self.to_dict(), **settings})
