"""Turn an evaluation grid (``gpu_check.py``'s ``eval_grid.json``) into figures and a table.

Usage: python benchmarks/render_grid.py eval_grid.json --out docs/results

Writes ``grid.md`` (final ln loss mean [min, max] and ln loss at 2,000 steps per optimizer and
task, beside the paper's values of docs/method.md section 7) and one ``<task>.png`` per task
with the curves (ln of the mean over seeds, min-max band), styled like the paper's figures.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

TASKS = ["mlp-orig", "mlp-relu", "mlp-deeper", "conv-mnist", "conv-cifar"]
#: docs/method.md section 7 (read from the paper's figures): ln training loss at 10,000 iterations.
PAPER = {
    "paper:dm": [-0.1, 1.45, 0.05, 1.72, 0.834],
    "paper:dm-aug": [-3.06, -0.87, -0.80, -0.95, 0.83],
    "paper:dm-il": [-3.2, -1.07, -2.9, -2.1, 0.70],
    "paper:dm-cl": [-5.6, -4.0, -3.9, 0.3, 0.765],
    "paper:dm-cl-il": [-10.8, -7.1, -7.2, -4.9, 0.33],
    "paper:rnnprop": [-5.5, -3.6, -4.3, 0.35, 0.834],
    "paper:rnnprop-cl-il": [-10.4, -5.6, -7.1, -6.7, 0.0],
}


def fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.2f}"


def window_ln(curve: dict, step: int) -> float | None:
    """ln of the mean over seeds of the binned losses ending at ``step``."""
    per_seed = np.asarray(curve["per_seed"], dtype=float)
    width = curve["width"]
    k = step // width
    if k < 1 or k > per_seed.shape[1]:
        return None
    span = max(1, 100 // width)
    ok = per_seed[np.isfinite(per_seed).all(1) & (per_seed < 1e6).all(1)]
    if not len(ok):
        return None
    return float(np.log(ok[:, max(0, k - span) : k].mean()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grid")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--title", default="")
    a = p.parse_args()
    grid = [g for g in json.loads(Path(a.grid).read_text()) if "error" not in g]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = []
    for g in grid:
        if g["label"] not in labels:
            labels.append(g["label"])
    by = {(g["label"], g["task"]): g for g in grid}
    lines = [
        "| optimizer | task | ours: final ln loss mean [min, max] | ours @2,000 | paper @10,000 "
        "| diverged | seeds x steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        for i, task in enumerate(TASKS):
            g = by.get((label, task))
            if g is None:
                continue
            f = g["final_ln_loss"]
            paper = PAPER.get(label, [None] * 5)[i]
            lines.append(
                f"| {label} | {task} | {fmt(f['mean'])} [{fmt(f['min'])}, {fmt(f['max'])}] "
                f"| {fmt(window_ln(g['curve'], 2000))} | {fmt(paper)} "
                f"| {len(g['diverged_seeds'])} | {len(g['seeds'])} x {g['steps']} |"
            )
    (out / "grid.md").write_text("\n".join(lines) + "\n")
    for task in TASKS:
        rows = [(label, by[(label, task)]) for label in labels if (label, task) in by]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
        for j, (label, g) in enumerate(rows):
            per_seed = np.asarray(g["curve"]["per_seed"], dtype=float)
            ok = per_seed[np.isfinite(per_seed).all(1) & (per_seed < 1e6).all(1)]
            if not len(ok):
                continue
            x = (np.arange(ok.shape[1]) + 1) * g["curve"]["width"]
            style = "--" if label.startswith("paper:") else "-"
            ax.plot(x, np.log(ok.mean(0)), style, color=f"C{j % 10}", lw=1.3, label=label)
            ax.fill_between(
                x, np.log(ok.min(0)), np.log(ok.max(0)), color=f"C{j % 10}", alpha=0.12, lw=0
            )
        ax.set_xlabel("Iterations")
        ax.set_ylabel("Training Loss (log)")
        ax.set_title(f"{task}{' (CIFAR-10, JPEG copy)' if task == 'conv-cifar' else ''} {a.title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(out / f"{task}.png")
        plt.close(fig)
    print((out / "grid.md").read_text())


if __name__ == "__main__":
    main()
