"""Threads of the `l2o` command (issue 16 item 3): the choice (one per process unless told) and
the OpenMP wait policy set before PyTorch loads (a real process)."""

import os
import subprocess
import sys

import l2o.threads as threads


def test_an_explicit_choice_wins_and_the_default_is_one_thread(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.choose_threads(3) == (3, "--threads")
    n, why = threads.choose_threads(None)
    assert n == 1 and "one per process: the same results on every machine" in why
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads(None) == (2, "OMP_NUM_THREADS")


def test_a_long_job_sets_the_wait_policy_before_torch_and_says_its_threads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    env["TMPDIR"] = str(tmp_path)
    args = ["evaluate", "adam", "--task", "quadratic", "--steps", "5", "--seeds", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "l2o.cli", *args, "--threads", "1", "--out", str(tmp_path / "e")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "threads: 1 (--threads; OpenMP wait policy passive" in done.stderr
    env["L2O_THREADS"] = "torch"
    done = subprocess.run(
        [sys.executable, "-m", "l2o.cli", *args, "--out", str(tmp_path / "f")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "PyTorch's default, L2O_THREADS=torch" in done.stderr
