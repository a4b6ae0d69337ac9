"""Figures and tables of evaluation results, and their files on disk.

An evaluation directory holds ``summary.json`` (see :meth:`EvalResult.summary`), ``losses.npz``
(``losses`` ``[seeds, steps]``, ``seeds``) and ``curves.png``, updated all or nothing by
:func:`save_eval`: ``summary.json`` marks a finished result, and a folder without it is
unfinished (:func:`load_eval` says so, and ``l2o evaluate`` re-runs into it without ``--force``).

The figure is styled like the paper's: x = iterations, y = natural log of the training loss, one
line per optimizer at ln(mean over seeds), with a min-max band over seeds. Lines are averaged over
bins of steps (about 200 points per curve), as the paper plots a point every ~100 iterations
(docs/method.md 6.4).
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l2o.evaluation import EvalResult, diverged_mask

# The package's atomic writers, re-exported under the names this module has always offered.
from l2o.io import atomic_write_bytes, atomic_write_json, umask  # noqa: F401


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported on first use: ``import l2o``
    (training, checkpoints, the optimizer) never loads a plotting library."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Curve:
    """One line of a figure: a label and the ``[seeds, steps]`` losses.

    ``groups`` (one integer per row, optional) marks rows that belong together, e.g. the
    evaluation seeds of one *training* seed: the line is then the median over groups of each
    group's ln mean loss and the band spans the groups (the spread over training seeds)."""

    label: str
    losses: np.ndarray
    groups: np.ndarray | None = None


def binned_ln_curve(losses: np.ndarray, points: int = 200):
    """``(steps, ln mean-over-seeds, ln per-seed min, ln per-seed max)`` averaged in bins.

    Diverged seeds are left out of the line (they are listed in the summary)."""
    ok = losses[~diverged_mask(losses)] if losses.shape[0] > 1 else losses
    if ok.size == 0:
        ok = np.nan_to_num(losses, nan=np.inf)
    steps = ok.shape[1]
    width = max(1, steps // points)
    usable = (steps // width) * width
    bins = ok[:, :usable].reshape(ok.shape[0], -1, width).mean(axis=2)
    x = (np.arange(bins.shape[1]) + 1) * width
    with np.errstate(divide="ignore", invalid="ignore"):
        return x, np.log(bins.mean(0)), np.log(bins.min(0)), np.log(bins.max(0))


def grouped_ln_curve(losses: np.ndarray, groups: np.ndarray, points: int = 200):
    """``(steps, median over groups, min over groups, max over groups)`` of each group's
    :func:`binned_ln_curve` line (ln of the mean over that group's seeds)."""
    lines = [binned_ln_curve(losses[groups == g], points) for g in np.unique(groups)]
    x = lines[0][0]
    stack = np.stack([line[1] for line in lines])
    with np.errstate(invalid="ignore"):
        return x, np.median(stack, 0), stack.min(0), stack.max(0)


def _draw(ax, curve: Curve, color: str, lw: float, alpha: float) -> None:
    """One curve: ln(mean over seeds) with a min-max band over seeds (or, with ``groups``, the
    median over groups with a band over groups)."""
    if curve.groups is not None:
        x, mean, lo, hi = grouped_ln_curve(curve.losses, curve.groups)
        spread = len(np.unique(curve.groups)) > 1
    else:
        x, mean, lo, hi = binned_ln_curve(curve.losses)
        spread = curve.losses.shape[0] > 1
    ax.plot(x, mean, color=color, lw=lw, label=curve.label)
    if spread:
        ax.fill_between(x, lo, hi, color=color, alpha=alpha, lw=0)


def _style(ax) -> None:
    ax.set_xlabel("Iterations")
    ax.set_ylabel("Training Loss (log)")
    ax.grid(alpha=0.3)


def _png(fig) -> bytes:
    """Lay out ``fig``, render it as PNG bytes and close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    return buf.getvalue()


def _save_figure(fig, path: Path) -> Path:
    """Lay out, write atomically (:func:`l2o.io.atomic_write_bytes`) and close ``fig``."""
    atomic_write_bytes(Path(path), _png(fig))
    return Path(path)


def _curves_figure(curves: Sequence[Curve], title: str = ""):
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.4), dpi=120)
    for i, curve in enumerate(curves):
        _draw(ax, curve, f"C{i % 10}", lw=1.4, alpha=0.15)
    _style(ax)
    if title:
        ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_curves(curves: Sequence[Curve], path: Path, title: str = "") -> Path:
    """Draw curves in the paper's style and save a PNG."""
    return _save_figure(_curves_figure(curves, title), path)


def plot_grid(panels: dict[str, Sequence[Curve]], path: Path, title: str = "") -> Path:
    """One panel per task (``{task: curves}``), side by side, in the paper's style; a label keeps
    its colour in every panel."""
    names = list(panels)
    cols = min(len(names), 3)
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = _pyplot().subplots(
        rows, cols, figsize=(5.0 * cols, 3.8 * rows), dpi=110, squeeze=False
    )
    colors: dict[str, str] = {}
    for ax, task in zip(axes.flat, names, strict=False):
        for curve in panels[task]:
            color = colors.setdefault(curve.label.split(" (lr")[0], f"C{len(colors) % 10}")
            _draw(ax, curve, color, lw=1.3, alpha=0.12)
        _style(ax)
        ax.set_title(task)
        if panels[task]:
            ax.legend(loc="best", fontsize=6)
        else:
            ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


#: The files of an evaluation directory, in the order :func:`save_eval` puts them in place
#: (``summary.json``, the mark of a finished result, last).
EVAL_FILES = ("losses.npz", "curves.png", "summary.json")


def save_eval(result: EvalResult, out_dir: Path, label: str | None = None) -> dict[str, Any]:
    """Write ``summary.json``, ``losses.npz`` and ``curves.png`` into ``out_dir``, all or nothing.

    All three are rendered and written to temp files first, so a disk that fills on any of them
    leaves the previous result as it was. Then the old ``summary.json`` is removed (from here the
    folder reads as unfinished), the new files are renamed into place and the new summary last.
    If a rename fails, the previous files (kept as hard links until the end) are put back; a
    process killed between the renames leaves no ``summary.json``: an unfinished folder that
    readers refuse and a re-run replaces, never new losses beside an old summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    if label:
        summary["label"] = label
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        losses=result.losses.astype(np.float32),
        seeds=np.asarray(result.seeds),
        initial_losses=result.initial_losses,
    )
    title = f"{result.task} ({len(result.seeds)} seeds, {result.steps} steps)"
    png = _png(_curves_figure([Curve(label or result.rule, result.losses)], title))
    contents = {
        "losses.npz": buf.getvalue(),
        "curves.png": png,
        "summary.json": (json.dumps(summary, indent=2) + "\n").encode("utf-8"),
    }
    _replace_all(out_dir, contents)
    return summary


def _replace_all(folder: Path, contents: dict[str, bytes]) -> None:
    """Put ``contents`` (``{name: bytes}``, the marker file last) in ``folder`` all or nothing
    (see :func:`save_eval`)."""
    names = list(contents)
    temps: dict[str, Path] = {}
    backups: dict[str, Path] = {}
    for name in names:  # left by a process killed while saving
        for stale in folder.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
    try:
        for name in names:  # 1. every byte on disk before anything changes
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            temps[name] = Path(tmp)
            with os.fdopen(fd, "wb") as out:
                out.write(contents[name])
            os.chmod(tmp, 0o666 & ~umask())
        for name in names:  # 2. the previous files kept (hard links: no data written)
            if (folder / name).exists():
                backups[name] = folder / f".{name}.previous"
                backups[name].unlink(missing_ok=True)
                os.link(folder / name, backups[name])
    except BaseException:
        for path in [*temps.values(), *backups.values()]:
            path.unlink(missing_ok=True)
        raise
    try:
        (folder / names[-1]).unlink(missing_ok=True)  # 3. unfinished from here ...
        for name in names:
            os.replace(temps[name], folder / name)  # ... finished at the last one
    except BaseException:
        # 4. put the previous files back, the marker last (links: no space needed)
        for name in names:
            (folder / name).unlink(missing_ok=True)
            if name in backups:
                os.link(backups[name], folder / name)
        raise
    finally:
        for path in [*temps.values(), *backups.values()]:
            path.unlink(missing_ok=True)


def load_eval(run_dir: Path) -> tuple[dict[str, Any], np.ndarray]:
    """``(summary, losses)`` of an evaluation directory, with a clear error when incomplete."""
    run_dir = Path(run_dir)
    summary_path, losses_path = run_dir / "summary.json", run_dir / "losses.npz"
    for p in (summary_path, losses_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} is missing: {run_dir} is not a finished evaluation directory "
                "(run `l2o evaluate ... --out DIR` first)"
            )
    try:
        summary = json.loads(summary_path.read_text())
        with np.load(losses_path) as data:
            losses = data["losses"]
    except (json.JSONDecodeError, ValueError, KeyError, OSError) as err:
        raise ValueError(
            f"{run_dir}: corrupt evaluation files ({err}); re-run the evaluation"
        ) from err
    return summary, losses


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    """One row per evaluation: final ln loss mean [min, max], checkpoints, divergence, speed."""
    lines = [
        "| optimizer | task | steps | seeds | final ln loss mean [min, max] | ln loss @1000 "
        "| diverged | steps/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        f = s["final_ln_loss"]
        at = s.get("ln_mean_loss_at", {})
        lines.append(
            f"| {s.get('label') or s['rule']} | {s['task']} | {s['steps']} | {len(s['seeds'])} "
            f"| {_fmt(f['mean'])} [{_fmt(f['min'])}, {_fmt(f['max'])}] | {_fmt(at.get('1000'))} "
            f"| {len(s['diverged_seeds'])} | {_fmt(s.get('steps_per_second'))} |"
        )
    return "\n".join(lines) + "\n"
