"""The authors' seven checkpoints on the five tasks: one markdown table from evaluation folders.

Every cell is read from an ``l2o evaluate`` output folder named ``paper-NAME-TASK[-SUFFIX]``
under ``--evals`` (e.g. ``runs/eval/paper-dm-cl-mlp-relu-s3``); where several exist the one
with the most seed-steps wins. The cell shows our ``final_ln_loss`` mean [min, max], the run's
size, and the paper's value at 10,000 steps (docs/method.md section 7). Missing cells say so.

    python benchmarks/paper_grid_table.py --evals runs/eval > /tmp/grid.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from l2o.reproduce.paper import TASKS, paper_value_of_weights

NAMES = ["dm", "dm-aug", "dm-il", "dm-cl", "dm-cl-il", "rnnprop", "rnnprop-cl-il"]


def best_summary(evals: Path, name: str, task: str) -> dict | None:
    """The largest finished evaluation of ``paper:name`` on ``task`` under ``evals``."""
    found = []
    for folder in evals.glob(f"paper-{name}-{task}*"):
        rest = folder.name[len(f"paper-{name}-{task}") :]
        if rest and not rest.startswith("-"):
            continue  # e.g. paper-dm-cl-il-... when looking for paper-dm-cl
        path = folder / "summary.json"
        if not path.exists():
            continue
        s = json.loads(path.read_text())
        if s.get("interrupted") or s.get("hyperparameters", {}).get("weights") != f"paper:{name}":
            continue
        found.append((s["steps"] * len(s["seeds"]), s))
    return max(found, key=lambda p: p[0])[1] if found else None


def cell(s: dict | None, paper: float | None) -> str:
    ref = f" / paper {paper:.2f}" if paper is not None else ""
    if s is None:
        return "not measured" + ref
    f = s["final_ln_loss"]
    size = f"{len(s['seeds'])}x{s['steps'] // 1000}k"
    if f["mean"] is None:
        return f"diverged ({size}){ref}"
    div = f", {len(s['diverged_seeds'])} diverged" if s["diverged_seeds"] else ""
    return f"{f['mean']:.2f} [{f['min']:.2f}, {f['max']:.2f}] ({size}{div}){ref}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--evals", type=Path, default=Path("runs/eval"))
    args = ap.parse_args()
    print("| checkpoint | " + " | ".join(TASKS) + " |")
    print("|---" * (len(TASKS) + 1) + "|")
    for name in NAMES:
        cells = [
            cell(best_summary(args.evals, name, t), paper_value_of_weights(f"paper:{name}", t))
            for t in TASKS
        ]
        print(f"| `paper:{name}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
