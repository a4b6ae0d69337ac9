"""kill -9 at random points of ``l2o train``, ``l2o evaluate`` and ``l2o reproduce``, then the same
command again (``--resume`` for training): the result is the one of a run never killed
(issue 15; counted in docs/reliability.md).

Real processes (``l2o_child.py``: the package's ``main`` with marks to aim at and, where asked,
the atomic writes held a moment so a kill lands inside them). The kill points are seeded: a kill
while ``train_state.pt`` is half written, one between its write and its rename, one at a seeded
random moment of a validation; the output folder's lock (``fcntl.flock``) dies with the killed
process, so every re-run starts at once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import Child, assert_same_weights, best_weights, final_weights, metrics, run

TRAIN = ["train", "tiny", "--task", "quadratic", "--epochs", "6", "--evaluation-period", "2"]
TRAIN += ["--no-compile", "--out", "run"]
SEED = 15  # the kill points' random delays
#: Summary entries that are wall-clock measurements (the only ones allowed to differ).
TIMING = {"seconds", "steps_per_second"}


def _kill(child: Child) -> None:
    child.proc.send_signal(signal.SIGKILL)
    code, _ = child.finish()
    assert code == -signal.SIGKILL


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("reference")
    code, out = run(TRAIN, where, where / "marks")
    assert code == 0, out
    return where / "run"


def test_train_killed_at_random_points_resumes_to_the_same_weights_and_metrics(
    tmp_path: Path, reference: Path
) -> None:
    rng = random.Random(SEED)
    held = {"L2O_HOLD_STATE": "0.5"}
    run_dir = tmp_path / "run"

    # 1. while train_state.pt is half written (after epoch 2: the previous state stays)
    child = Child(TRAIN, tmp_path, tmp_path / "m1", **held)
    assert child.wait_for("state-write", count=2)
    time.sleep(rng.uniform(0.0, 0.3))
    _kill(child)
    assert len([r for r in metrics(run_dir) if r["type"] == "epoch"]) in (1, 2)

    # 2. resumed, then killed between the state's write and its rename
    child = Child([*TRAIN, "--resume"], tmp_path, tmp_path / "m2", **held)
    assert child.wait_for("state-rename", count=2)
    time.sleep(rng.uniform(0.0, 0.3))
    _kill(child)

    # 3. resumed, then killed at a random moment of a validation, and the kill tears the
    # metrics line being appended (as a kill inside that write would)
    child = Child([*TRAIN, "--resume"], tmp_path, tmp_path / "m3")
    assert child.wait_for("validate")
    time.sleep(rng.uniform(0.0, 0.2))
    _kill(child)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"type": "epoch", "epoch": 9, "mea')

    # 4. resumed to the end
    code, out = run([*TRAIN, "--resume"], tmp_path, tmp_path / "m4")
    assert code == 0, out
    assert "warning:" in out and "metrics.jsonl: dropped a torn last line" in out, out
    assert "Traceback" not in out
    assert metrics(run_dir) == metrics(reference)
    assert_same_weights(final_weights(run_dir), final_weights(reference))
    assert_same_weights(best_weights(run_dir), best_weights(reference))


def test_resume_names_a_corrupt_metrics_line_before_the_last(tmp_path: Path, reference) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("train_state.pt", "config.json", "metrics.jsonl"):
        (run_dir / name).write_bytes((reference / name).read_bytes())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:20]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    code, out = run([*TRAIN, "--resume"], tmp_path, tmp_path / "m")
    assert code == 2, out
    assert "run/metrics.jsonl:2: not a line of JSON" in out, out
    assert "Traceback" not in out and len(out.strip().splitlines()) <= 3, out


EVAL = ["evaluate", "adam", "--task", "quadratic", "--steps", "4000", "--seeds", "3"]
EVAL += ["--no-compile", "--out", "ev"]


def _summary(folder: Path) -> dict:
    s = json.loads((folder / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in TIMING}


def test_evaluate_killed_leaves_nothing_compare_reads_and_a_rerun_gives_the_same_summary(
    tmp_path: Path,
) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    code, out = run(EVAL, ref, ref / "m")
    assert code == 0, out

    # killed between the result's files: new losses.npz in place, the summary not yet
    work = tmp_path / "work"
    work.mkdir()
    child = Child(EVAL, work, work / "m", L2O_HOLD_RENAME="1")
    assert child.wait_for("rename curves.png")
    _kill(child)
    assert (work / "ev" / "losses.npz").exists() and not (work / "ev" / "summary.json").exists()
    compare = subprocess.run(
        [sys.executable, "-m", "l2o.cli", "compare", "ev", "--out", "cmp"],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert compare.returncode == 2, compare.stdout + compare.stderr
    assert "summary.json is missing" in compare.stderr and "Traceback" not in compare.stderr

    # killed at seeded random moments (during the run or while saving), then run again
    rng = random.Random(SEED)
    for _ in range(2):
        child = Child(EVAL, work, work / "m", L2O_HOLD_RENAME="0.2")
        time.sleep(rng.uniform(0.5, 4.0))
        _kill(child) if child.proc.poll() is None else child.finish()
    code, out = run(EVAL, work, work / "m")
    if code == 2 and "--force" in out:  # a kill came after the end: the result is finished
        code, out = run([*EVAL, "--force"], work, work / "m")
    assert code == 0, out
    assert _summary(work / "ev") == _summary(ref / "ev")


@pytest.mark.requires_full_data("mnist")  # its jobs run in worker processes: no sample
def test_reproduce_killed_then_rerun_reports_the_same_numbers(tmp_path: Path) -> None:
    args = ["reproduce", "fig5", "--weights", "paper", "--budget", "demo", "--steps", "20"]
    args += ["--seeds", "2", "--tasks", "mlp-orig", "--out", "rep"]
    ref = tmp_path / "ref"
    ref.mkdir()
    code, out = run(args, ref, ref / "m", timeout=300)
    assert code == 0, out
    work = tmp_path / "work"
    work.mkdir()
    child = Child(args, work, work / "m", L2O_HOLD_RENAME="0.2")
    time.sleep(random.Random(SEED).uniform(4.0, 8.0))
    os.killpg(child.proc.pid, signal.SIGKILL)  # the command and its workers, as a crash would
    child.finish()
    code, out = run(args, work, work / "m", timeout=300)
    assert code == 0, out
    numbers = [
        line.split("|")[1:4]
        for line in (ref / "rep" / "fig5.md").read_text().splitlines()
        if line.startswith("|")
    ]
    again = [
        line.split("|")[1:4]
        for line in (work / "rep" / "fig5.md").read_text().splitlines()
        if line.startswith("|")
    ]
    assert again == numbers
