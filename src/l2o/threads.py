"""CPU threads of the ``l2o`` command: several ``l2o`` processes share one machine politely.

PyTorch's default on a CPU is one intra-op thread per core, and its OpenMP workers *spin* while
they wait for the next parallel region. The learned optimizers' work is many small operations
(LSTMs on ~16k coordinates), so the workers spin most of the time: one process keeps every core
busy, and two processes on two cores (a training and an evaluation) slow each other down by tens
of times (issue 16: 0.8 steps/s where 60 is normal). The command therefore

* sets the OpenMP wait policy to passive (``OMP_WAIT_POLICY=PASSIVE``, ``KMP_BLOCKTIME=0``) before
  PyTorch loads its OpenMP runtime, which reads them once at load time (:func:`policy_env`;
  ``l2o.cli.main`` re-executes itself once with them when they are missing), and
* picks its intra-op threads (:func:`choose_threads`): ``--threads N`` if given, else
  ``OMP_NUM_THREADS`` if set, else the cores this process may use divided among the ``l2o``
  processes running now (each long job registers itself, :class:`Registration`).

``L2O_THREADS=torch`` leaves all of this to PyTorch (the old behaviour, kept for measurements such
as ``benchmarks/thread_sharing.py``). A library user (``import l2o``) is never affected: only the
command does this.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

#: Environment set before PyTorch starts its thread pool: idle OpenMP workers sleep at once
#: (GNU libgomp reads OMP_WAIT_POLICY, Intel/LLVM OpenMP reads KMP_BLOCKTIME).
POLICY_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def torch_default_requested() -> bool:
    """``L2O_THREADS=torch``: leave threads and wait policy to PyTorch (for measurements)."""
    return os.environ.get("L2O_THREADS", "").strip().lower() == "torch"


def policy_env() -> dict[str, str]:
    """The variables of :data:`POLICY_ENV` that are not already set (a user's choice wins)."""
    if torch_default_requested():
        return {}
    return {k: v for k, v in POLICY_ENV.items() if k not in os.environ}


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; ``os.cpu_count`` elsewhere)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _registry_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"l2o-running-{os.getuid()}"


class Registration:
    """This process's entry among the running ``l2o`` jobs of this user: a file holding the
    number of threads it uses, locked (``fcntl.flock``) for as long as the process lives, so a
    crashed or killed job never counts (the kernel drops its lock)."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._fd: int | None = None

    def others(self) -> list[int]:
        """Threads used by each other live ``l2o`` job (stale entries are removed)."""
        found = []
        folder = _registry_dir()
        if not folder.is_dir():
            return found
        for entry in folder.glob("*.threads"):
            if self.path is not None and entry == self.path:
                continue
            try:
                fd = os.open(entry, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:  # locked: its process is alive
                try:
                    found.append(max(1, int(os.read(fd, 32).decode().strip() or 1)))
                except ValueError:
                    found.append(1)
            else:  # nobody holds it: a leftover of a killed process
                entry.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return found

    def register(self, threads: int) -> None:
        """Record this process as running with ``threads`` threads (best effort)."""
        try:
            if self._fd is None:  # once per process; a later job of the same process rewrites it
                folder = _registry_dir()
                folder.mkdir(mode=0o700, exist_ok=True)
                path = folder / f"{os.getpid()}.threads"
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise
                self.path, self._fd = path, fd
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{threads}\n".encode(), 0)
        except OSError:
            pass  # best effort: without a registration the others just do not count this job


REGISTRATION = Registration()


def choose_threads(requested: int | None) -> tuple[int, str]:
    """``(threads, why)`` for this process (see the module docstring)."""
    if requested is not None:
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = available_cores()
    others = REGISTRATION.others()
    if not others:
        return cores, f"{cores} cores available"
    free = cores - sum(others)
    share = max(1, min(cores // (len(others) + 1), free) if free > 0 else 1)
    return share, f"{cores} cores shared with {len(others)} other running l2o job(s)"


def apply_threads(requested: int | None, register: bool = True) -> str:
    """Set this process's intra-op threads and return the line to print at the start of a job.

    With ``L2O_THREADS=torch`` nothing is changed. The choice is also put in ``L2O_THREADS`` so
    that worker processes (``l2o reproduce --jobs``) divide it among themselves."""
    import torch

    if torch_default_requested():
        return f"threads: {torch.get_num_threads()} (PyTorch's default, L2O_THREADS=torch)"
    threads, why = choose_threads(requested)
    torch.set_num_threads(threads)
    os.environ["L2O_THREADS"] = str(threads)
    if register:
        REGISTRATION.register(threads)
    policy = os.environ.get("OMP_WAIT_POLICY", "default").lower()
    return f"threads: {threads} ({why}; OpenMP wait policy {policy}; change with --threads N)"
