"""Threads of the `l2o` command (issue 16 item 3): the choice, the registry of running jobs that
divides the cores, and the OpenMP wait policy set before PyTorch loads (a real process)."""

import os
import subprocess
import sys

import pytest

import l2o.threads as threads


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A private registry folder, seen by this process and by children (TMPDIR)."""
    folder = tmp_path / f"l2o-running-{os.getuid()}"
    monkeypatch.setattr(threads, "_registry_dir", lambda: folder)
    monkeypatch.setattr(threads, "REGISTRATION", threads.Registration())
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return tmp_path


def test_an_explicit_choice_wins(registry, monkeypatch):
    assert threads.choose_threads(3) == (3, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.choose_threads(None) == (1, "OMP_NUM_THREADS")


def test_cores_are_divided_among_running_jobs_and_a_killed_job_stops_counting(registry):
    assert threads.choose_threads(None)[0] == 2
    code = (
        "import sys, time, l2o.threads as t; t.REGISTRATION.register(2); "
        "print('registered', flush=True); time.sleep(60)"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, TMPDIR=str(registry)),
    )
    try:
        assert other.stdout.readline().strip() == "registered"
        n, why = threads.choose_threads(None)
        assert n == 1 and "shared with 1 other" in why
    finally:
        other.kill()
        other.wait()
    assert threads.choose_threads(None)[0] == 2  # its lock went with it; the entry is removed
    assert not list((registry / f"l2o-running-{os.getuid()}").glob("*.threads"))


def test_registering_twice_in_one_process_does_not_block(registry):
    threads.REGISTRATION.register(1)
    threads.REGISTRATION.register(2)
    assert threads.REGISTRATION.path.read_text().strip() == "2"


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
