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
  ``OMP_NUM_THREADS`` if set, else **one**. Measured on the 2-core machine (docs/performance.md,
  "Threads"): beside other busy processes, two passive threads ran L2O-DM meta-training 2.7x
  slower than one (a parallel region waits for its slowest thread); on an otherwise idle machine,
  since the fused LSTM kernel shares its tiles among the threads, two passive threads run it 1.5x
  (meta-training) and 1.7x (evaluation) faster. One thread is the default because it never
  loses much and gives the same float sums, hence the same results, on every machine; ``--threads
  N`` is for a job that has the machine to itself. More processes use more cores without sharing
  a thread pool (``--nproc``, ``--seeds``, ``reproduce --jobs``).

``L2O_THREADS=torch`` leaves all of this to PyTorch (the old behaviour, kept for measurements such
as ``benchmarks/thread_sharing.py``). A library user (``import l2o``) is never affected: only the
command does this.
"""

from __future__ import annotations

import os

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


#: Intra-op threads of a job unless ``--threads`` or ``OMP_NUM_THREADS`` says otherwise.
DEFAULT_THREADS = 1


def choose_threads(requested: int | None) -> tuple[int, str]:
    """``(threads, why)`` for this process (see the module docstring)."""
    if requested is not None:
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    return DEFAULT_THREADS, "one per process: the same results on every machine"


def apply_threads(requested: int | None) -> str:
    """Set this process's intra-op threads and return the line to print at the start of a job.

    With ``L2O_THREADS=torch`` nothing is changed. The choice is also put in ``L2O_THREADS`` so
    that worker processes (``l2o reproduce --jobs``) divide it among themselves."""
    import torch

    if torch_default_requested():
        return f"threads: {torch.get_num_threads()} (PyTorch's default, L2O_THREADS=torch)"
    threads, why = choose_threads(requested)
    torch.set_num_threads(threads)
    os.environ["L2O_THREADS"] = str(threads)
    policy = os.environ.get("OMP_WAIT_POLICY", "default").lower()
    return f"threads: {threads} ({why}; OpenMP wait policy {policy}; change with --threads N)"
