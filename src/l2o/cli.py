"""The ``l2o`` command: list tasks, evaluate and compare optimizers (and, later, train them)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="l2o: train and evaluate learned optimizers (Chen et al., NeurIPS 2020).",
)
console = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def _parse_options(items: list[str] | None) -> dict:
    """``KEY=VALUE`` pairs; values parsed as JSON when possible (numbers, true/false, lists)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            _fail(f"--task-option expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def run_evaluation(rule_spec, task_name, steps, seeds, lr, device, task_options, out, label=None):
    """Evaluate one rule on one task with a progress bar; write the result files into ``out``."""
    from l2o.evaluation import evaluate
    from l2o.registry import load_rule
    from l2o.report import save_eval
    from l2o.tasks import get_task

    try:
        task = get_task(task_name, **task_options)
        rule = load_rule(rule_spec, lr=lr)
    except (ValueError, TypeError, FileNotFoundError) as err:
        _fail(str(err))
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            _fail("--device cuda was asked for but no CUDA device is available; use --device cpu")
    seed_list = list(range(seeds))
    with _progress() as bar:
        job = bar.add_task(f"{label or rule_spec} on {task_name}", total=steps, info="")

        def on_step(t, losses):
            mean = float(losses.mean())
            info = f"ln loss {math.log(mean):+.3f}" if math.isfinite(mean) and mean > 0 else "nan"
            bar.update(job, completed=t, info=info)

        result = evaluate(rule, task, steps, seed_list, device=device, callback=on_step)
    summary = save_eval(result, Path(out), label=label)
    if result.interrupted:
        console.print(f"[yellow]interrupted after {result.steps} steps; partial results in {out}")
        raise typer.Exit(130)
    return summary


@app.command()
def tasks() -> None:
    """List the optimizee tasks."""
    from l2o.tasks import TASKS

    table = Table("task", "parameters", "description")
    for name, factory in TASKS.items():
        task = factory()
        table.add_row(name, f"{task.num_params:,}", task.description)
    Console().print(table)


@app.command("evaluate")
def evaluate_cmd(
    rule: Annotated[
        str, typer.Argument(help="adam | rmsprop | sgd | nag | paper:<name> | checkpoint path")
    ],
    task: Annotated[str, typer.Option(help="task name (see `l2o tasks`)")] = "mlp-orig",
    steps: Annotated[int, typer.Option(min=1, help="optimizee steps")] = 10_000,
    seeds: Annotated[
        int, typer.Option(min=1, help="number of seeds (0..S-1), run as one population")
    ] = 10,
    lr: Annotated[float | None, typer.Option(help="learning rate of an analytic rule")] = None,
    out: Annotated[Path | None, typer.Option(help="output directory")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    task_option: Annotated[
        list[str] | None, typer.Option(help="task option KEY=VALUE, e.g. init_std=1.0 (repeatable)")
    ] = None,
) -> None:
    """Run RULE on TASK for STEPS steps over SEEDS seeds.

    Writes summary.json, losses.npz and curves.png into --out.
    """
    label = rule if lr is None else f"{rule} (lr {lr:g})"
    safe = rule.replace(":", "-").replace("/", "_")
    out = out or Path("runs") / "eval" / f"{safe}-{task}"
    summary = run_evaluation(
        rule, task, steps, seeds, lr, device, _parse_options(task_option), out, label
    )
    f = summary["final_ln_loss"]
    console.print(
        f"final ln loss {f['mean']} [min {f['min']}, max {f['max']}], "
        f"diverged seeds {summary['diverged_seeds']}, "
        f"{summary['steps_per_second']} steps/s -> {out}"
    )


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="evaluation directories")],
    out: Annotated[
        Path, typer.Option(help="output directory for comparison.png and comparison.md")
    ] = Path("runs/compare"),
) -> None:
    """Lay several evaluations on one figure and one markdown table."""
    from l2o.report import Curve, atomic_write_bytes, load_eval, markdown_table, plot_curves

    loaded = []
    for run in runs:
        try:
            loaded.append(load_eval(run))
        except (FileNotFoundError, ValueError) as err:
            _fail(str(err))
    tasks_seen = sorted({s["task"] for s, _ in loaded})
    title = " / ".join(tasks_seen)
    curves = [
        Curve(s.get("label") or s["rule"] + (f" ({s['task']})" if len(tasks_seen) > 1 else ""), ls)
        for s, ls in loaded
    ]
    plot_curves(curves, Path(out) / "comparison.png", title)
    table = markdown_table([s for s, _ in loaded])
    atomic_write_bytes(Path(out) / "comparison.md", f"# Comparison: {title}\n\n{table}".encode())
    Console().print(table)
    console.print(f"wrote {out}/comparison.png and {out}/comparison.md")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/demo"),
    steps: Annotated[int, typer.Option(min=1)] = 2000,
    seeds: Annotated[int, typer.Option(min=1)] = 5,
) -> None:
    """The main job: compare the analytic optimizers on MLP-orig (becomes the L2O demo later)."""
    dirs = []
    for rule in ("adam", "rmsprop", "nag", "sgd"):
        lr = {"sgd": 0.5, "nag": 0.1}.get(rule, 0.01)
        d = Path(out) / f"{rule}-mlp-orig"
        run_evaluation(rule, "mlp-orig", steps, seeds, lr, "cpu", {}, d, f"{rule} (lr {lr:g})")
        dirs.append(d)
    compare(dirs, out)


def main() -> None:
    """Entry point of the ``l2o`` console script."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
