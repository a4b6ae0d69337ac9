"""Runs ``l2o`` (its real ``main``) in a child process that a fault test signals or kills.

Usage: ``python l2o_child.py MARKS_FILE l2o-args...``. Before ``main`` runs it

* registers the recipe ``tiny``: L2O-DM on the 20-step quadratic problem, validated on
  ``L2O_TINY_VALIDATION_RUNS`` (default 8) runs of ``L2O_TINY_VALIDATION_HORIZON`` steps, so a
  training run takes seconds (or validation is made long on purpose);
* appends a line to ``MARKS_FILE`` when something a test waits for begins or ends: ``validate``
  and ``validated`` (each validation), ``state-write`` and ``state-rename`` (the two phases of
  writing ``train_state.pt``, each held ``L2O_HOLD_STATE`` seconds, default 0, so a kill can land
  inside them), ``rename NAME`` (before each file of an evaluation result is renamed into place,
  held ``L2O_HOLD_RENAME`` seconds, default 0).

Nothing else changes: the signal handling, the locking and the files are the package's own.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

MARKS = sys.argv[1] if __name__ == "__main__" else ""


def mark(text: str) -> None:
    with open(MARKS, "a") as f:
        f.write(text + "\n")
        f.flush()


def _tiny_recipe() -> None:
    from l2o.training import recipes

    runs = int(os.environ.get("L2O_TINY_VALIDATION_RUNS", "8"))
    horizon = int(os.environ.get("L2O_TINY_HORIZON", "20"))
    recipes.RECIPES["tiny"] = dataclasses.replace(
        recipes.RECIPES["dm"],
        name="tiny",
        settings={"model": "dm", "horizon": horizon, "evaluation_epochs": runs},
        budgets={"demo": (6, 2), "cpu": (6, 2), "paper": (6, 2)},
    )


def _marked_validation() -> None:
    import l2o.training.trainer as trainer_module

    real = trainer_module.validate

    def validate(*args, **kwargs):
        mark("validate")
        score = real(*args, **kwargs)
        mark("validated")
        return score

    trainer_module.validate = validate


def _held_writes() -> None:
    """Mark (and hold) the phases of the atomic writes the tests aim kills at."""
    import l2o.io as io_module

    hold_state = float(os.environ.get("L2O_HOLD_STATE", "0"))
    hold_rename = float(os.environ.get("L2O_HOLD_RENAME", "0"))
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        name = Path(dst).name
        if name == "train_state.pt":
            mark("state-rename")
            time.sleep(hold_state)
        elif name in ("losses.npz", "curves.png", "summary.json"):
            mark(f"rename {name}")
            time.sleep(hold_rename)
        return real_replace(src, dst, *args, **kwargs)

    real_atomic_write = io_module.atomic_write

    def atomic_write(path, write, verify=None):
        if Path(path).name != "train_state.pt":
            return real_atomic_write(path, write, verify)

        def slow_write(out):
            return write(_HeldFile(out, hold_state))

        return real_atomic_write(path, slow_write, verify)

    os.replace = replace
    io_module.atomic_write = atomic_write


class _HeldFile:
    """Writes the first half of the first write, marks ``state-write`` and holds, then the rest:
    a kill while held leaves a half-written temp file."""

    def __init__(self, out, hold: float) -> None:
        self.out, self.hold, self.held = out, hold, False

    def write(self, data):
        if self.held:
            return self.out.write(data)
        self.held = True
        half = len(data) // 2
        self.out.write(data[:half])
        self.out.flush()
        mark("state-write")
        time.sleep(self.hold)
        return half + self.out.write(data[half:])

    def __getattr__(self, name):
        return getattr(self.out, name)


if __name__ == "__main__":
    _tiny_recipe()
    _marked_validation()
    _held_writes()
    from l2o.cli import main

    sys.argv = ["l2o", *sys.argv[2:]]
    main()
