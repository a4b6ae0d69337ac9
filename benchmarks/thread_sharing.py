"""Two ``l2o`` processes on one machine: each one's throughput beside its speed alone (issue 16).

A meta-training (``l2o train dm --budget demo``, cut to a few epochs) and an evaluation
(``l2o evaluate paper:dm-cl-il --task mlp-orig --steps 300 --seeds 3``) are run alone and then at
the same time, under each thread policy, side by side in one run:

* ``old``: PyTorch's defaults (``L2O_THREADS=torch``: one thread per core, spinning OpenMP
  workers), what ``l2o`` did before;
* ``new``: the command's defaults (:mod:`l2o.threads`: passive OpenMP wait policy, threads
  divided among the running ``l2o`` jobs);
* ``new-1``: the new policy with ``--threads 1`` for both.

Training throughput is epochs per second from its first epoch to its last but one (read from
its ``metrics.jsonl``; the last includes the final validation); evaluation throughput is the
``steps_per_second`` of its ``summary.json``.
Together, the evaluation is run again and again while the training runs, and only evaluations
that began and ended inside the training count. ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` are
removed from the environment of every run (they would override both policies). The load average
of the machine is recorded before and after each phase: on a shared machine, compare the
policies within one run, as ratios.

    python benchmarks/thread_sharing.py [--epochs 20] [--policies old,new,new-1]

Writes ``benchmarks/results/thread_sharing.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, machine

L2O = [sys.executable, "-m", "l2o.cli"]
CLEARED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "L2O_THREADS")


def env_for(policy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    if policy == "old":
        env["L2O_THREADS"] = "torch"
    return env


def threads_args(policy: str) -> list[str]:
    return ["--threads", "1"] if policy == "new-1" else []


def train_cmd(policy: str, out: Path, epochs: int) -> list[str]:
    return [
        *L2O,
        "train",
        "dm",
        "--budget",
        "demo",
        "--epochs",
        str(epochs),
        "--evaluation-period",
        str(10 * epochs),
        "--no-compile",
        "--out",
        str(out),
        *threads_args(policy),
    ]


def eval_cmd(policy: str, out: Path) -> list[str]:
    return [
        *L2O,
        "evaluate",
        "paper:dm-cl-il",
        "--task",
        "mlp-orig",
        "--steps",
        "300",
        "--seeds",
        "3",
        "--no-compile",
        "--force",
        "--out",
        str(out),
        *threads_args(policy),
    ]


def train_speed(out: Path) -> float | None:
    """Epochs per second from the end of the first epoch to the end of the last but one (the
    last epoch includes the final validation)."""
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
    times = [(e["epoch"], e["seconds"]) for e in events if e.get("type") == "epoch"]
    times = times[:-1]
    if len(times) < 2 or times[-1][1] <= times[0][1]:
        return None
    return (times[-1][0] - times[0][0]) / (times[-1][1] - times[0][1])


def threads_line(text: str) -> str:
    return next((x for x in text.splitlines() if x.startswith("threads:")), "")


def run_eval(policy: str, out: Path) -> tuple[float, float, float, str]:
    """``(steps/s, start, end, threads line)`` of one evaluation."""
    start = time.time()
    done = subprocess.run(
        eval_cmd(policy, out), env=env_for(policy), capture_output=True, text=True
    )
    end = time.time()
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    summary = json.loads((out / "summary.json").read_text())
    return summary["steps_per_second"], start, end, threads_line(done.stderr)


def measure(policy: str, epochs: int, work: Path) -> dict:
    res: dict = {"load_before": os.getloadavg()}
    # alone
    out = work / f"{policy}-train-solo"
    done = subprocess.run(
        train_cmd(policy, out, epochs), env=env_for(policy), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    res["train_solo_epochs_per_s"] = train_speed(out)
    res["train_threads"] = threads_line(done.stderr)
    solo = [run_eval(policy, work / f"{policy}-eval-solo") for _ in range(3)]
    res["eval_solo_steps_per_s"] = statistics.median(s[0] for s in solo)
    res["eval_threads_solo"] = solo[0][3]
    # together
    out = work / f"{policy}-train-both"
    log = open(work / f"{policy}-train-both.log", "w")  # noqa: SIM115
    train = subprocess.Popen(
        train_cmd(policy, out, epochs), env=env_for(policy), stdout=log, stderr=log, text=True
    )
    while not (out / "metrics.jsonl").exists() and train.poll() is None:
        time.sleep(0.2)
    together = []
    while train.poll() is None:
        speed, _, _, line = run_eval(policy, work / f"{policy}-eval-both")
        if train.poll() is None:  # began and ended while the training ran
            together.append(speed)
            res["eval_threads_together"] = line
    log.close()
    if train.returncode != 0:
        raise RuntimeError((work / f"{policy}-train-both.log").read_text()[-2000:])
    res["train_together_epochs_per_s"] = train_speed(out)
    res["train_threads_together"] = threads_line((work / f"{policy}-train-both.log").read_text())
    res["eval_together_steps_per_s"] = statistics.median(together) if together else None
    res["eval_together_runs"] = len(together)
    res["load_after"] = os.getloadavg()
    if res["train_together_epochs_per_s"] and res["train_solo_epochs_per_s"]:
        res["train_share"] = round(
            res["train_together_epochs_per_s"] / res["train_solo_epochs_per_s"], 3
        )
    if res["eval_together_steps_per_s"]:
        res["eval_share"] = round(
            res["eval_together_steps_per_s"] / res["eval_solo_steps_per_s"], 3
        )
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--policies", default="old,new,new-1")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="l2o-thread-sharing-"))
    results = {"machine": machine(), "epochs": args.epochs, "policies": {}}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "thread_sharing.json"
    try:
        for policy in args.policies.split(","):
            print(f"policy {policy} ...", flush=True)
            results["policies"][policy] = measure(policy, args.epochs, work)
            print(json.dumps(results["policies"][policy], indent=1), flush=True)
            path.write_text(json.dumps(results, indent=2) + "\n")  # each policy as it ends
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
