"""Where the time goes: ``torch.profiler`` over one compiled L2O-DM meta-training epoch and one
evaluation of 10 seeds (both on ``mlp-orig``), top operators by self CPU time.

Usage: OMP_NUM_THREADS=1 python benchmarks/profile_fused.py [--part train,eval] [--rows 25]
       [--eval-steps 50]

Prints the tables and writes ``benchmarks/results/profile_fused-cpu.json`` (the top operators'
self CPU seconds and shares). Used to choose what issue 12's fused kernels should cover.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write


def top(prof, rows: int) -> list[dict]:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_s": e.self_cpu_time_total / 1e6,
            "share": e.self_cpu_time_total / total,
        }
        for e in events[:rows]
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", default="train,eval")
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--eval-steps", type=int, default=50)
    a = p.parse_args()
    parts = a.part.split(",")
    torch.manual_seed(0)
    result: dict = {"note": "shared 2-core machine; shares of self CPU time"}
    if "train" in parts:
        from l2o.training import Trainer, get_recipe

        cfg = get_recipe("dm").config("demo", task="mlp-orig", compile=True, instances=1)
        trainer = Trainer(cfg, tempfile.mkdtemp(prefix="l2o-prof-"))
        trainer.train_epoch()  # compile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.train_epoch()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))
        result["train_dm_epoch"] = top(prof, a.rows)
    if "eval" in parts:
        from l2o import evaluate
        from l2o.rules.dm import DMRule
        from l2o.tasks import get_task

        rule, task = DMRule(), get_task("mlp-orig")
        evaluate(rule, task, 5, list(range(10)), compile=True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            evaluate(rule, task, a.eval_steps, list(range(10)), compile=True)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))
        result["eval_dm_10_seeds"] = top(prof, a.rows)
    write("profile_fused-cpu", result)


if __name__ == "__main__":
    main()
