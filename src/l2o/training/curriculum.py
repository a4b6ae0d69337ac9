"""The validation-gated curriculum of Chen et al. (2020): a training horizon that grows by stages.

Training starts on a short horizon (100 optimizee steps) and validates on the *next* stage's
horizon, so that a stage is judged by how well its rule generalises one step further. A stage
lasts at least ``min_evaluations`` validations; every improving validation saves the stage's best
rule; at the first non-improving validation once the minimum is met, the stage's best rule is
restored and training moves to the next horizon, where the restored rule's score on the new
validation horizon is the bar to beat. A stage that never improves within its minimum ends
training. The last stage is validated on its own horizon and then ends training (the original
indexes past the end of its list there, docs/method.md 4.2 and 8.2). The truncation length of the
unrolls never changes.

:class:`Curriculum` is a pure state machine with no knowledge of models or training: the trainer
feeds it validation scores and acts on the :class:`Action` it returns. Its state is a plain record
saved in the training checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from itertools import pairwise
from typing import Any

#: L2O-DM and RNNprop's training horizons (docs/method.md 4.1).
DM_HORIZONS = (100, 200, 500, 1000, 1500, 2000, 2500, 3000)
#: L2O-Scale's training horizons (docs/method.md 4.1).
SCALE_HORIZONS = (100, 200, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 4500, 5000)


class Action(StrEnum):
    """What the trainer must do after a validation."""

    IMPROVED = "improved"  # new best of this stage: save it (as the stage's and the run's best)
    CONTINUE = "continue"  # keep training this stage
    ADVANCE = "advance"  # restore this stage's best, move on, then report its baseline score
    FINISH = "finish"  # the last stage is done: restore its best and end training
    STOP = "stop"  # this stage never improved: end training (the run's best stays as it is)


@dataclass
class CurriculumState:
    """Where a curriculum stands (saved in the training state for ``--resume``).

    Attributes:
        stage: index of the current stage.
        best: best validation score of this stage so far (``None`` before the first one).
        evaluations: validations of this stage so far (the baseline of a new stage not counted).
        improved: whether this stage has improved on its baseline at least once.
        done: training has ended (``FINISH`` or ``STOP``).
        reason: why it ended, in words.
        start_epoch: the training epoch at which this stage began.
    """

    stage: int = 0
    best: float | None = None
    evaluations: int = 0
    improved: bool = False
    done: bool = False
    reason: str | None = None
    start_epoch: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CurriculumState:
        return cls(**data)


@dataclass(frozen=True)
class Curriculum:
    """A list of training horizons and the rule that moves between them (docs/method.md 4.2).

    Attributes:
        horizons: training horizon of each stage, increasing.
        min_evaluations: validations a stage lasts at least (the original's 3).
    """

    horizons: tuple[int, ...] = DM_HORIZONS
    min_evaluations: int = 3

    def __post_init__(self) -> None:
        hs = tuple(int(h) for h in self.horizons)
        if not hs:
            raise ValueError("a curriculum needs at least one horizon")
        if any(h < 1 for h in hs) or any(b <= a for a, b in pairwise(hs)):
            raise ValueError(f"curriculum horizons must be positive and increasing, got {hs}")
        if self.min_evaluations < 1:
            raise ValueError(f"min_evaluations must be at least 1, got {self.min_evaluations}")
        object.__setattr__(self, "horizons", hs)

    def is_last(self, state: CurriculumState) -> bool:
        return state.stage == len(self.horizons) - 1

    def train_horizon(self, state: CurriculumState) -> int:
        return self.horizons[state.stage]

    def validation_horizon(self, state: CurriculumState) -> int:
        """The next stage's horizon; the last stage's own."""
        return self.horizons[min(state.stage + 1, len(self.horizons) - 1)]

    def observe(self, state: CurriculumState, score: float) -> tuple[CurriculumState, Action]:
        """Account one validation ``score`` (lower is better; non-finite never improves)."""
        if state.done:
            raise ValueError(f"the curriculum has already ended ({state.reason})")
        evaluations = state.evaluations + 1
        if math.isfinite(score) and (state.best is None or score < state.best):
            new = replace(state, best=score, evaluations=evaluations, improved=True)
            return new, Action.IMPROVED
        if evaluations < self.min_evaluations:
            return replace(state, evaluations=evaluations), Action.CONTINUE
        if not state.improved:
            reason = (
                f"stage {state.stage} (horizon {self.train_horizon(state)}) did not improve in "
                f"{evaluations} validations"
            )
            return replace(state, evaluations=evaluations, done=True, reason=reason), Action.STOP
        if self.is_last(state):
            reason = f"last stage (horizon {self.train_horizon(state)}) finished"
            return replace(state, evaluations=evaluations, done=True, reason=reason), Action.FINISH
        new = CurriculumState(stage=state.stage + 1)
        return new, Action.ADVANCE

    def start_stage(
        self, state: CurriculumState, baseline: float, epoch: int = 0
    ) -> CurriculumState:
        """After ``ADVANCE``: the restored rule's score on the new validation horizon is the bar
        the new stage must beat (not counted as one of its validations); ``epoch`` is the
        training epoch the stage starts at."""
        best = baseline if math.isfinite(baseline) else None
        return replace(state, best=best, evaluations=0, improved=False, start_epoch=epoch)
