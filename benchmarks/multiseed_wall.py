"""Wall time of ``l2o train RECIPE --seeds N`` against one seed (``--seeds 1``).

Several training seeds give the error bars over training runs that the paper's comparisons lack
(Chen et al., NeurIPS 2020); ``--seeds`` runs them as parallel processes (``l2o.multiseed``). This
script runs the one-seed command and the N-seed command one after the other, as the user would
(``python -m l2o.cli``, so each process compiles and sets its threads as the ``l2o`` command
does), and records both wall times, their ratio, the per-seed training seconds and the machine's
load average before and after each run (the development machine is shared).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/multiseed_wall.py --recipe rnnprop \
        --budget demo --seeds 3 [--epochs 20]
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

from common import write


def run(recipe: str, budget: str, seeds: int, extra: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "l2o.cli", "train", recipe, "--budget", budget]
    cmd += ["--seeds", str(seeds), "--out", str(out), *extra]
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "command": " ".join(["l2o", *cmd[3:]]),
        "wall_seconds": round(wall, 1),
        "jobs": summary["jobs"],
        "threads_per_job": summary["threads"],
        "training_seconds_per_seed": [s["seconds"] for s in summary["seeds"]],
        "best_score_per_seed": [s["best_score"] for s in summary["seeds"]],
        "median_best_score": summary["median_best_score"],
        "loadavg_1min_before": round(load_before[0], 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="rnnprop")
    parser.add_argument("--budget", default="demo")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="cut the budget's epochs")
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    args = parser.parse_args()
    extra = ["--epochs", str(args.epochs)] if args.epochs else []
    with tempfile.TemporaryDirectory(prefix="l2o-multiseed-") as tmp:
        one = run(args.recipe, args.budget, 1, extra, Path(tmp) / "one")
        many = run(args.recipe, args.budget, args.seeds, extra, Path(tmp) / "many")
    name = f"multiseed_wall-{args.recipe}-{args.budget}"
    if args.epochs:
        name += f"-{args.epochs}ep"
    write(
        name,
        {
            "recipe": args.recipe,
            "budget": args.budget,
            "epochs_override": args.epochs,
            "one_seed": one,
            f"{args.seeds}_seeds": many,
            "wall_ratio_many_over_one": round(many["wall_seconds"] / one["wall_seconds"], 2),
            "speedup_over_sequential": round(
                args.seeds * one["wall_seconds"] / many["wall_seconds"], 2
            ),
            "note": "run one after the other on a machine shared with other processes; see the "
            "load averages",
        },
        args.out,
    )


if __name__ == "__main__":
    main()
