"""Throughput of data-parallel meta-training: ``l2o train --nproc 2`` against ``--nproc 1``.

L2O-DM meta-training on ``mlp-orig`` at ``--instances 4`` (eager: ``--no-compile``, so the
numbers do not include compilation): two ranks with one intra-op thread each (two shards of two
instances each), against one process with two threads running today's unsharded path, and one
process with two threads running the same two shards (the cost of sharding itself). The variants
run in turns, ``--rounds`` times each, side by side, and the ratio is one of medians.

Throughput is optimizee instance-steps per second of training, from the ``seconds`` of the run's
``metrics.jsonl`` over the epochs between the first (start-up) and the last (which includes the
validation); the wall time of the whole command (process start, rendezvous) is reported beside it.

    OMP_NUM_THREADS=2 python benchmarks/distributed_throughput.py [--epochs 4] [--rounds 3]
        [--variants nproc2-1thread,nproc1-2threads]

The JSON is rewritten after every round, so an interrupted run still leaves its finished rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import median, write

VARIANTS = {
    "nproc2-1thread": {"nproc": 2, "threads": 2, "shard_size": None},  # split 2 -> 1 each
    "nproc1-2threads": {"nproc": 1, "threads": 2, "shard_size": None},
    "nproc1-2threads-2shards": {"nproc": 1, "threads": 2, "shard_size": 2},
}


def run(name: str, spec: dict, args, tmp: Path) -> dict:
    out = tmp / f"{name}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "l2o.cli", "train", "dm", "--task", "mlp-orig"]
    cmd += ["--budget", "demo", "--epochs", str(args.epochs), "--evaluation-period", "1000"]
    cmd += ["--instances", str(args.instances), "--no-compile", "--out", str(out)]
    cmd += ["--nproc", str(spec["nproc"])]
    if spec["shard_size"]:
        cmd += ["--shard-size", str(spec["shard_size"])]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    wall = time.perf_counter() - start
    epochs = [
        json.loads(line)
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["type"] == "epoch"
    ]
    seconds = epochs[-2]["seconds"] - epochs[0]["seconds"]  # epochs 2 .. E-1
    steps = (len(epochs) - 2) * epochs[0]["horizon"] * args.instances
    return {"instance_steps_per_s": steps / seconds, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()
    results: dict[str, list[dict]] = {name: [] for name in args.variants.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        for done in range(1, args.rounds + 1):
            for name in results:
                results[name].append(run(name, VARIANTS[name], args, Path(tmp)))
                print(name, results[name][-1], file=sys.stderr)
            report(results, args, load_before, done)


def report(results: dict[str, list[dict]], args, load_before, rounds: int) -> None:
    rate = {n: median([r["instance_steps_per_s"] for r in rs]) for n, rs in results.items()}
    ratios = {
        f"{a}/{b}": rate[a] / rate[b] for a in rate for b in rate if a == "nproc2-1thread" != b
    }
    write(
        "distributed_throughput-dm-mlp-orig-cpu",
        {
            "what": "L2O-DM meta-training on mlp-orig, eager, optimizee instance-steps per second",
            "instances": args.instances,
            "epochs": args.epochs,
            "rounds": rounds,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "median_instance_steps_per_s": rate,
            "median_wall_s": {n: median([r["wall_s"] for r in rs]) for n, rs in results.items()},
            "ratios": ratios,
            "runs": results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
