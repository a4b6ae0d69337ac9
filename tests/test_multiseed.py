"""``l2o train --seeds`` (several trainings in parallel processes) and ``--instances``."""

import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from l2o.cli import app
from l2o.multiseed import parse_seeds, seed_dir

runner = CliRunner()
# rnnprop on the quadratic task: a real meta-training, seconds per epoch.
BASE = ["train", "rnnprop", "--task", "quadratic", "--budget", "demo", "--no-compile"]
BASE += ["--evaluation-period", "1"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_seed_lists_parse_and_bad_ones_name_the_forms():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("0,1,5") == [0, 1, 5]
    assert parse_seeds("7,") == [7]
    for bad, match in (
        ("0", "at least 1"),
        ("a,b", "not a seed list"),
        ("1,-2", "non-negative"),
        ("1,1", "twice"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_seeds(bad)


def _files(folder):
    """The result files of a run folder (not the hidden lock file of the command holding it)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


@pytest.mark.slow
def test_a_seed_of_a_multi_seed_run_is_bit_identical_to_the_single_seed_command(tmp_path):
    single = tmp_path / "single"
    cmd = [sys.executable, "-m", "l2o.cli", *BASE, "--epochs", "2", "--seed", "1"]
    proc = subprocess.run(
        [*cmd, "--out", str(single)], env=_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr

    multi = tmp_path / "multi"
    args = [*BASE, "--epochs", "2", "--seeds", "0,1", "--threads", "1", "--out", str(multi)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _files(multi) == ["seed-0", "seed-1", "summary.json"]
    ours, theirs = (
        load_file(multi / "seed-1" / "best.safetensors"),
        load_file(single / "best.safetensors"),
    )
    assert ours.keys() == theirs.keys()
    assert all(ours[k].equal(theirs[k]) for k in ours)
    # the same files, and the same records in them up to the timings
    assert _files(multi / "seed-1") == _files(single)

    def records(path):
        rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert records(multi / "seed-1") == records(single)
    # seed 0 is another training: other weights
    zero = load_file(multi / "seed-0" / "best.safetensors")
    assert not all(zero[k].equal(ours[k]) for k in ours)

    summary = json.loads((multi / "summary.json").read_text())
    by_seed = {s["seed"]: s for s in summary["seeds"]}
    assert sorted(by_seed) == [0, 1] and summary["finished"] == 2
    card = json.loads((single / "best.json").read_text())
    assert by_seed[1]["best_score"] == card["validation_score"]
    assert by_seed[1]["best_epoch"] == card["best_epoch"] and by_seed[1]["epochs"] == 2
    scores = [s["best_score"] for s in summary["seeds"]]
    assert summary["median_best_score"] == statistics.median(scores)
    assert by_seed[summary["best_seed"]]["best_score"] == min(scores)
    assert summary["best_checkpoint"] == str(
        seed_dir(multi, summary["best_seed"]) / "best.safetensors"
    )


@pytest.mark.slow
def test_a_failed_seed_is_reported_the_others_finish_and_resume_continues_all(tmp_path):
    out = tmp_path / "runs"
    args = [*BASE, "--epochs", "1", "--seeds", "2", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    # the same command again: one clear error before anything runs
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "pass --resume" in again.output
    # --resume with more epochs continues both seeds, and a third seed whose directory holds
    # something that is not a training run fails alone, with the trainer's error
    (seed_dir(out, 2)).mkdir()
    (seed_dir(out, 2) / "stray.txt").write_text("not a run")
    more = [*BASE, "--epochs", "2", "--seeds", "3", "--out", str(out), "--resume"]
    result = runner.invoke(app, more)
    assert result.exit_code == 1, result.output
    assert "seeds 2 failed" in result.output
    summary = json.loads((out / "summary.json").read_text())
    by_seed = {s["seed"]: s for s in summary["seeds"]}
    assert by_seed[0]["status"] == by_seed[1]["status"] == "finished"
    assert by_seed[0]["epochs"] == by_seed[1]["epochs"] == 2
    assert by_seed[2]["status"] == "failed" and "nothing to resume" in by_seed[2]["error"]
    assert summary["finished"] == 2 and summary["best_seed"] in (0, 1)


@pytest.mark.slow
def test_sigterm_stops_every_seed_after_a_saved_epoch_and_resume_finishes(tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "l2o.cli", *BASE, "--seeds", "2", "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--epochs", "200"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 300
        states = [seed_dir(out, s) / "train_state.pt" for s in (0, 1)]
        while not all(p.exists() for p in states):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # the parent only, as a job scheduler would
        output = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "--resume" in output
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["seeds"]] == ["interrupted", "interrupted"], output
    done = [s["epochs"] for s in summary["seeds"]]
    assert all(1 <= e < 200 for e in done)
    # resume both to a few epochs more than the furthest one got
    target = str(max(done) + 1)
    resumed = subprocess.run(
        [*cmd, "--epochs", target, "--resume"], env=_env(), capture_output=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr.decode()
    summary = json.loads((out / "summary.json").read_text())
    assert [s["epochs"] for s in summary["seeds"]] == [int(target)] * 2


def test_instances_reach_the_config_and_the_card(tmp_path):
    out = tmp_path / "k3"
    result = runner.invoke(app, [*BASE, "--epochs", "1", "--instances", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["instances"] == 3
    assert json.loads((out / "best.json").read_text())["config"]["instances"] == 3
    bad = runner.invoke(app, [*BASE, "--instances", "0", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "instances" in bad.output
    both = runner.invoke(app, [*BASE, "--seed", "4", "--seeds", "2", "--out", str(tmp_path / "y")])
    assert both.exit_code == 2 and "--seeds 4,5,6" in both.output
