"""Real ``l2o`` processes for the fault tests: start one (through ``l2o_child.py``), wait for a
mark it writes, signal or kill it, and read what it left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

CHILD = Path(__file__).with_name("l2o_child.py")
#: One thread per process, and the OpenMP wait policy already set (so ``main`` does not re-exec
#: itself, which would drop the child's marks).
BASE_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "KMP_BLOCKTIME": "0",
    "COLUMNS": "200",
}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Child:
    """One ``l2o`` command in a child process, with its marks file."""

    def __init__(self, args: list[str], cwd: Path, marks: Path, **env: str) -> None:
        self.marks = marks
        marks.write_text("")
        full_env = {**os.environ, **BASE_ENV, **env}
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(marks), *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: a test can kill it with its workers
            # Ctrl-C as at a terminal, even when the suite itself runs in the background (which
            # starts every child with SIGINT ignored, so Python would install no handler)
            preexec_fn=_default_sigint,
        )

    def lines(self) -> list[str]:
        return self.marks.read_text().splitlines()

    def wait_for(self, text: str, count: int = 1, timeout: float = 60.0) -> bool:
        """Wait until ``text`` has been marked ``count`` times; False if the process ended first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.lines().count(text) >= count:
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.01)
        raise TimeoutError(f"no mark {text!r} after {timeout} s; marks: {self.lines()}")

    def finish(self, timeout: float = 120.0) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out


def run(args: list[str], cwd: Path, marks: Path, timeout: float = 120.0, **env: str):
    """Run an ``l2o`` command to its end: ``(exit status, output)``."""
    return Child(args, cwd, marks, **env).finish(timeout)


def metrics(out: Path) -> list[dict[str, Any]]:
    """The run's metric records without their wall-clock times."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines if x]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "train_state.pt", weights_only=True)["rule"]


def best_weights(out: Path) -> dict[str, torch.Tensor]:
    from l2o.checkpoint import load_rule_checkpoint

    return load_rule_checkpoint(out / "best.safetensors").state_dict()


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
