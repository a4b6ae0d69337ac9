"""Ctrl-C (SIGINT) and a polite kill (SIGTERM) during a training validation: the run stops
cleanly, logs no score of the cut validation, and ``--resume`` redoes that validation, ending with
the weights and metrics of a run that was never stopped (issue 15; docs/reliability.md).

Real ``l2o train`` processes (``l2o_child.py``: the package's ``main`` with marks to aim at), the
validation made long (300 runs) so the signal lands inside it.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from procs import Child, assert_same_weights, best_weights, final_weights, metrics, run

ENV = {"L2O_TINY_VALIDATION_RUNS": "1000"}
ARGS = ["train", "tiny", "--task", "quadratic", "--epochs", "4", "--evaluation-period", "2"]
ARGS += ["--no-compile"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run, never stopped."""
    where = tmp_path_factory.mktemp("reference")
    code, out = run([*ARGS, "--out", "run"], where, where / "marks", **ENV)
    assert code == 0, out
    return where / "run"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_validation_stops_without_a_score_and_resume_redoes_it(
    tmp_path: Path, reference: Path, sig: signal.Signals
) -> None:
    child = Child([*ARGS, "--out", "run"], tmp_path, tmp_path / "marks", **ENV)
    assert child.wait_for("validate", count=2), child.finish()[1]  # the epoch-4 validation
    time.sleep(0.1)
    assert "validated" in child.lines() and child.lines().count("validated") == 1
    child.proc.send_signal(sig)
    code, out = child.finish()
    assert child.lines().count("validated") == 1, "the validation ran to its end: signal too late"
    assert code == 130, out
    assert "interrupted after 3 epochs" in out and "--resume" in out, out
    assert "Traceback" not in out
    run_dir = tmp_path / "run"
    records = metrics(run_dir)
    assert [r["epoch"] for r in records if r["type"] == "validation"] == [2]  # no cut score
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2, 3]
    assert (
        json.loads((run_dir / "best.safetensors").with_suffix(".json").read_text())["best_epoch"]
        == 2
    )

    code, out = run([*ARGS, "--out", "run", "--resume"], tmp_path, tmp_path / "marks2", **ENV)
    assert code == 0, out
    assert "resuming at epoch 3" in out
    assert metrics(run_dir) == metrics(reference)
    assert_same_weights(final_weights(run_dir), final_weights(reference))
    assert_same_weights(best_weights(run_dir), best_weights(reference))
