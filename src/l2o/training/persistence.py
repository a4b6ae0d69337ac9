"""A training run's directory: the resumable state, the metrics log, the configuration.

``train_state.pt`` holds everything a killed run needs to continue exactly (weights,
meta-optimizer moments, epoch counter, best score, curriculum state, ...), written atomically after
every epoch and read with ``torch.load(weights_only=True)``; ``metrics.jsonl`` has one JSON
object per epoch and per validation; ``config.json`` is the flat configuration. A resumed run must
use the settings it was saved with, except those in :data:`RESUMABLE_CHANGES`. The card saved
with every best rule (:func:`rule_card`) records the run's flat configuration and the package
version.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2o._version import __version__
from l2o.checkpoint import load_training_state, save_training_state
from l2o.io import append_jsonl, atomic_write_json, read_jsonl_torn_tail, write_jsonl
from l2o.training.config import NonFinite, TrainConfig
from l2o.training.curriculum import CurriculumState
from l2o.training.recipes import RECIPES

TRAIN_STATE = "train_state.pt"
BEST = "best.safetensors"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
#: The best rule of curriculum stage ``s`` (restored when the stage ends).
STAGE_BEST = "stage-{}.safetensors"
#: The ``format`` entry of a training state.
STATE_FORMAT = "l2o-train-v1"
#: Settings a resumed run may change: where it runs, and how long it trains.
RESUMABLE_CHANGES = ("device", "compile", "num_epochs")


class TrainingError(RuntimeError):
    """A training run that cannot start or continue (bad directory, foreign state, ...)."""


def check_same_settings(saved: dict[str, Any], config: TrainConfig, where: Path) -> None:
    """Refuse to resume a run saved with other settings (``saved``: its flat configuration).

    A setting added after the run was saved is absent from its record: the run used the
    setting's default, so it matches exactly when the current value is that default."""
    mine, defaults = config.to_dict(), TrainConfig.defaults()
    differ = {
        k
        for k in mine
        if k not in RESUMABLE_CHANGES
        and (saved[k] != mine[k] if k in saved else mine[k] != defaults[k])
    }
    if differ:
        details = ", ".join(
            f"{k}: saved {saved[k]!r} vs now {mine[k]!r}"
            if k in saved
            else f"{k}: saved run predates it (default {defaults[k]!r}) vs now {mine[k]!r}"
            for k in sorted(differ)
        )
        raise TrainingError(
            f"cannot resume {where}: its run used other settings ({details}); "
            "resume with the same recipe, budget and seed, or choose another --out"
        )


class TornMetricsWarning(UserWarning):
    """A resumed run dropped the torn last line of its ``metrics.jsonl``."""


def _epoch_of(record: dict[str, Any]) -> int:
    epoch = record.get("epoch", 0)
    return epoch if isinstance(epoch, int) else 0


class RunDirectory:
    """The files of one training run in ``out``."""

    def __init__(self, out: Path | str) -> None:
        self.out = Path(out)
        self.state = self.out / TRAIN_STATE
        self.best = self.out / BEST
        self.metrics = self.out / METRICS

    def stage_best(self, stage: int) -> Path:
        return self.out / STAGE_BEST.format(stage)

    def open(self, config: TrainConfig, resume: bool) -> dict[str, Any] | None:
        """The saved state to resume from (checked against ``config``), or ``None`` for a fresh
        run; refuses to overwrite a run without ``resume`` and to resume nothing."""
        if self.state.exists():
            if not resume:
                raise TrainingError(
                    f"{self.out} already holds a training run ({TRAIN_STATE}); pass --resume to "
                    "continue it, or choose another --out"
                )
            state = load_training_state(self.state)
            if state.get("format") != STATE_FORMAT:
                raise TrainingError(f"{self.state} is not an l2o training state")
            check_same_settings(json.loads(state["config"]), config, self.out)
            return state
        if resume and self.out.exists() and any(self.out.iterdir()):
            raise TrainingError(f"--resume: no {TRAIN_STATE} in {self.out}; nothing to resume")
        return None

    def start(self, config: TrainConfig) -> None:
        """Create the directory and write ``config.json``."""
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / CONFIG, config.to_dict())

    def save_state(self, state: dict[str, Any]) -> None:
        save_training_state(self.state, {"format": STATE_FORMAT, **state})

    def log(self, record: dict[str, Any]) -> None:
        append_jsonl(self.metrics, record)

    def truncate_metrics(self, epoch: int) -> None:
        """Drop metric lines of epochs after ``epoch`` (the saved state's: work lost to a kill),
        and a last line torn by a kill during its append (with a :class:`TornMetricsWarning`).
        A bad line before the last is a ``TrainingError`` naming the file and line."""
        if not self.metrics.exists():
            return
        try:
            records, torn = read_jsonl_torn_tail(self.metrics)
        except ValueError as err:
            raise TrainingError(
                f"cannot resume: {err} (or move {self.metrics} aside to resume without the old "
                "lines)"
            ) from None
        if torn is not None:
            warnings.warn(
                f"{self.metrics}: dropped a torn last line (a kill during its write): "
                f"{torn[:40]!r}",
                TornMetricsWarning,
                stacklevel=2,
            )
        write_jsonl(self.metrics, [r for r in records if _epoch_of(r) <= epoch])


def capture_state(trainer) -> dict[str, Any]:
    """Everything a resumed run needs from ``trainer`` (an :class:`~l2o.training.Trainer`)."""
    separate = trainer.imitation_opt is not trainer.meta_opt
    return {
        "config": json.dumps(trainer.config.to_dict()),
        "rule": {k: v.detach().cpu() for k, v in trainer.rule.state_dict().items()},
        "meta_optimizer": trainer.meta_opt.state_dict(),
        "epoch": trainer.epoch,
        "best_score": trainer.best_score,
        "best_epoch": trainer.best_epoch,
        "skipped": trainer.skipped,
        "seconds": trainer.seconds,
        "zeroed": trainer.zeroed,
        "carried_rule_state": trainer.carried_state,
        "curriculum": trainer.stage.to_dict(),
        "imitation_epochs": trainer.imitation_epochs,
        "imitation_optimizer": trainer.imitation_opt.state_dict() if separate else None,
    }


def restore_state(trainer, state: dict[str, Any]) -> None:
    """Put a state written by :func:`capture_state` back into ``trainer`` (entries added in later
    versions default to what runs saved before them did)."""
    trainer.rule.load_state_dict(state["rule"])
    trainer.meta_opt.load_state_dict(state["meta_optimizer"])
    trainer.epoch = state["epoch"]
    trainer.best_score, trainer.best_epoch = state["best_score"], state["best_epoch"]
    trainer.skipped, trainer.seconds = state["skipped"], state["seconds"]
    trainer.zeroed = state.get("zeroed", 0)
    trainer.carried_state = state.get("carried_rule_state")
    if state.get("curriculum"):
        trainer.stage = CurriculumState.from_dict(state["curriculum"])
    trainer.imitation_epochs = state.get("imitation_epochs", 0)
    separate = trainer.imitation_opt is not trainer.meta_opt
    if state.get("imitation_optimizer") is not None and separate:
        trainer.imitation_opt.load_state_dict(state["imitation_optimizer"])


def rule_card(trainer) -> dict[str, Any]:
    """The card saved with the trainer's rule: what it is, how and how long it was trained."""
    c = trainer.config
    curriculum = trainer.curriculum is not None
    card = {
        "recipe": c.recipe,
        "budget": c.budget,
        "task": c.task,
        "task_options": c.task_options,
        "epochs": trainer.epoch,
        "best_epoch": trainer.best_epoch,
        "horizons": c.horizons[: trainer.stage.stage + 1] if curriculum else [c.horizon],
        "validation_score": trainer.best_score,
        "validation_horizon": trainer.validation_horizon,
        "training_seconds": round(trainer.seconds, 1),
        "package_version": __version__,
        "config": c.to_dict(),
    }
    if c.recipe in RECIPES:
        card["deviations"] = RECIPES[c.recipe].deviations(c)
    if curriculum:
        card["curriculum_stage"] = trainer.stage.stage
    if c.imitation.enabled:
        card["imitation_epochs"] = trainer.imitation_epochs
    return card


@dataclass
class TrainSummary:
    """What a finished (or interrupted) run reports."""

    out_dir: str
    epochs_done: int
    best_score: float | None
    best_epoch: int | None
    skipped_meta_steps: int
    seconds: float
    interrupted: bool
    best_path: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def summarize(trainer, saved_epoch: int, interrupted: bool) -> TrainSummary:
    """The :class:`TrainSummary` of ``trainer``'s run; ``saved_epoch`` is the last epoch in the
    training state (where a resume starts)."""
    c = trainer.config
    extra: dict[str, Any] = {}
    if c.meta.nonfinite is NonFinite.ZERO:
        extra["zeroed_meta_steps"] = trainer.zeroed
    if trainer.curriculum is not None:
        extra.update(stage=trainer.stage.stage, horizon=trainer.horizon)
        extra["curriculum_end"] = trainer.stage.reason
    if c.imitation.enabled:
        extra["imitation_epochs"] = trainer.imitation_epochs
    best = trainer.run_dir.best
    return TrainSummary(
        out_dir=str(trainer.out),
        epochs_done=saved_epoch,
        best_score=trainer.best_score,
        best_epoch=trainer.best_epoch,
        skipped_meta_steps=trainer.skipped,
        seconds=trainer.seconds,
        interrupted=interrupted,
        best_path=str(best) if best.exists() else None,
        extra=extra,
    )
