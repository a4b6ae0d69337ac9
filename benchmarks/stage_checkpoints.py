"""Evaluate every stage checkpoint of curriculum trainings: which stage's rule is best at step N?

A curriculum run keeps each stage's best rule as ``stage-<s>.safetensors`` and releases the last
stage that improved (docs/method.md 4.2). When a CL recipe loses to its baseline, this shows
whether an earlier stage's rule would have won (the validation picked the wrong one) or every
stage is behind (the training itself is). Writes ``--results`` (JSON) and prints a table.

    OMP_NUM_THREADS=1 python benchmarks/stage_checkpoints.py \\
        runs/techniques-cpu/train/dm-cl-il-cpu/seed-0 runs/techniques-cpu/train/dm-cl-cpu/seed-0 \\
        --task mlp-orig --steps 10000 --seeds 10 --results benchmarks/results/stage_checkpoints.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import RESULTS, write
from l2o.checkpoint import read_card
from l2o.evaluation import evaluate
from l2o.registry import load_rule
from l2o.report import save_eval
from l2o.tasks import get_task


def checkpoints(run: Path, only: set[str] | None = None) -> list[Path]:
    """The run's stage checkpoints in stage order, then ``best.safetensors`` unless it is one of
    them (the same stage and epoch: its evaluation would repeat that stage's); ``only`` keeps
    the named ones (file stems, e.g. ``stage-1``)."""
    stages = sorted(run.glob("stage-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))
    best = run / "best.safetensors"
    if best.exists():
        card = read_card(best)
        released = (card.get("curriculum_stage"), card.get("best_epoch"))
        if not any(
            (read_card(p).get("curriculum_stage"), read_card(p).get("best_epoch")) == released
            for p in stages
        ):
            stages.append(best)
    return [p for p in stages if only is None or p.stem in only]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training folders")
    parser.add_argument("--task", default="mlp-orig")
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--results", type=Path, default=RESULTS / "stage_checkpoints.json")
    parser.add_argument("--only", default=None, help="only these checkpoints, e.g. stage-1,stage-2")
    args = parser.parse_args()
    only = None if args.only is None else set(args.only.split(","))
    torch.set_flush_denormal(True)
    rows = []
    for run in args.runs:
        for path in checkpoints(run, only):
            card = read_card(path)
            out = run / "stage-evals" / f"{path.stem}-{args.task}-{args.seeds}x{args.steps}"
            if not (out / "summary.json").exists():
                result = evaluate(
                    load_rule(str(path)),
                    get_task(args.task),
                    args.steps,
                    list(range(args.seeds)),
                    compile=args.steps >= 2000,
                )
                if result.interrupted:
                    raise KeyboardInterrupt
                save_eval(result, out, label=f"{run.name} {path.stem}")
            summary = json.loads((out / "summary.json").read_text())
            rows.append(
                {
                    "run": str(run),
                    "checkpoint": path.name,
                    "stage": card.get("curriculum_stage"),
                    "epoch": card.get("best_epoch"),
                    "validation_score": card.get("validation_score"),
                    "validation_horizon": card.get("validation_horizon"),
                    "final_ln_loss": summary["final_ln_loss"]["mean"],
                    "diverged_seeds": len(summary["diverged_seeds"]),
                }
            )
            r = rows[-1]
            print(
                f"{run.name:>10} {path.name:<24} stage {r['stage']} epoch {r['epoch']} "
                f"val {r['validation_score']} (H {r['validation_horizon']}) -> "
                f"{r['final_ln_loss']} ({r['diverged_seeds']} diverged)"
            )
    evaluation = {"task": args.task, "steps": args.steps, "seeds": args.seeds}
    write("stage_checkpoints", {"evaluation": evaluation, "rows": rows}, args.results)


if __name__ == "__main__":
    main()
