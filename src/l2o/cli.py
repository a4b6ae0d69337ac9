"""The ``l2o`` command: tasks, evaluate, compare, train, reproduce, pretrained, demo."""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table

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


def run_evaluation(
    rule_spec, task_name, steps, seeds, lr, device, task_options, out, label=None, compile=True
):
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

        every = max(50, steps // 10)

        def on_step(t, losses):
            mean = float(losses.mean())
            info = f"ln loss {math.log(mean):+.3f}" if math.isfinite(mean) and mean > 0 else "nan"
            bar.update(job, completed=t, info=info)
            if not console.is_terminal and (t % every == 0 or t == steps):
                console.print(f"{label or rule_spec} on {task_name}: step {t}/{steps}, {info}")

        result = evaluate(
            rule, task, steps, seed_list, device=device, callback=on_step, compile=compile
        )
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
    compile_step: Annotated[
        bool, typer.Option("--compile/--no-compile", help="torch.compile a learned rule's step")
    ] = True,
    label: Annotated[
        str | None, typer.Option(help="name in figures and tables (default: RULE)")
    ] = None,
) -> None:
    """Run RULE on TASK for STEPS steps over SEEDS seeds.

    Writes summary.json, losses.npz and curves.png into --out.
    """
    label = label or (rule if lr is None else f"{rule} (lr {lr:g})")
    safe = rule.replace(":", "-").replace("/", "_")
    out = out or Path("runs") / "eval" / f"{safe}-{task}"
    summary = run_evaluation(
        rule, task, steps, seeds, lr, device, _parse_options(task_option), out, label, compile_step
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
def train(
    recipe: Annotated[str | None, typer.Argument(help="recipe name (see --list)")] = None,
    task: Annotated[str, typer.Option(help="training task")] = "mlp-orig",
    budget: Annotated[str, typer.Option(help="demo | cpu | paper")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="output directory")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out")] = False,
    seed: Annotated[int, typer.Option(help="run seed")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    compile_step: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="torch.compile the rule step")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="override the budget's number of epochs")
    ] = None,
    evaluation_period: Annotated[
        int | None, typer.Option(min=1, help="override the budget's validation cadence (epochs)")
    ] = None,
    list_recipes: Annotated[bool, typer.Option("--list", help="list the recipes and exit")] = False,
    instances: Annotated[
        int | None, typer.Option(min=1, help="optimizee instances per meta-step (default 1)")
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="train several seeds in parallel processes into OUT/seed-S and write "
            "OUT/summary.json: a count (3 = seeds 0,1,2) or a list (0,1,5)"
        ),
    ] = None,
    jobs: Annotated[
        int | None, typer.Option(min=1, help="with --seeds: trainings at a time (default: cores)")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="with --seeds: CPU threads per training")
    ] = None,
) -> None:
    """Meta-train a learned optimizer with a named RECIPE at a budget."""
    from l2o.training import RECIPES, Trainer, TrainingError, get_recipe

    if list_recipes or recipe is None:
        table = Table(
            "recipe",
            "description",
            "model",
            "horizons (paper)",
            "imitation",
            "epochs demo/cpu/paper",
        )
        for r in RECIPES.values():
            epochs = "/".join(str(r.budgets[b][0]) for b in ("demo", "cpu", "paper"))
            paper = r.config("paper")
            horizons = (
                f"CL {paper.curriculum[0]}..{paper.curriculum[-1]} ({len(paper.curriculum)} stages)"
                if paper.curriculum
                else str(paper.horizon)
            )
            imitation = (
                f"{'/'.join(paper.teachers)} p={','.join(f'{x:g}' for x in paper.imitation_ratios)}"
                if paper.imitation_ratios
                else "-"
            )
            table.add_row(r.name, r.description, paper.model, horizons, imitation, epochs)
        Console().print(table)
        if recipe is None and not list_recipes:
            raise typer.Exit(2)
        return
    overrides = dict(
        task=task,
        device=device,
        compile=compile_step,
        num_epochs=epochs,
        evaluation_period=evaluation_period,
        instances=instances,
    )
    if seeds is not None:  # several trainings, one process each (l2o.multiseed)
        from l2o.multiseed import train_command

        if seed != 0:
            _fail("--seed and --seeds do not go together; list the seeds, e.g. --seeds 4,5,6")

        out = out or Path("runs") / f"{recipe}-{budget}"
        args = (recipe, budget, out, seeds, resume, jobs, threads, overrides, console, _progress)
        raise typer.Exit(train_command(*args))
    try:
        config = get_recipe(recipe).config(budget, seed=seed, **overrides)
        out = out or Path("runs") / f"{recipe}-{budget}"
        trainer = Trainer(config, out, resume=resume)
    except (ValueError, TrainingError) as err:
        _fail(str(err))
    period = (
        "/".join(str(x) for x in config.stage_evaluation_periods) + " (per stage)"
        if config.curriculum and config.stage_evaluation_periods
        else str(config.evaluation_period)
    )
    horizons = (
        f"curriculum {'/'.join(str(h) for h in config.curriculum)} steps (at most "
        f"{config.num_epochs} epochs)"
        if config.curriculum
        else f"{config.num_epochs} epochs of {config.horizon} steps"
    )
    console.print(
        f"training [bold]{recipe}[/] ({config.model}) on {task}, budget {budget}: {horizons}, "
        f"validation every {period} epochs on {config.evaluation_epochs} runs"
        + (
            f", imitation of {'/'.join(config.teachers)} with p="
            f"{','.join(f'{x:g}' for x in config.imitation_ratios)}"
            if config.imitation_ratios
            else ""
        )
        + f" -> {out}"
        + (f" (resuming at epoch {trainer.epoch})" if trainer.epoch else "")
    )
    start_epoch, start_seconds = trainer.epoch, trainer.seconds
    with _progress() as bar:
        job = bar.add_task(recipe, total=config.num_epochs, completed=trainer.epoch, info="")
        last = {"val": "-"}

        plain = not console.is_terminal  # logs and pipes get periodic plain lines instead
        every = max(1, config.num_epochs // 20)

        def on_event(event):
            if event["type"] == "stage":
                console.print(
                    f"epoch {event['epoch']}: curriculum stage {event['stage']}: training horizon "
                    f"{event['horizon']}, validation on {event['validation_horizon']} steps; "
                    f"score to beat {event['baseline']:.4f}"
                )
                return
            if event["type"] == "end":
                console.print(f"epoch {event['epoch']}: curriculum ended: {event['reason']}")
                return
            if event["type"] == "validation":
                last["val"] = f"{event['score']:.3f}" + (" *" if event["improved"] else "")
                if plain or "stage" in event:
                    best = event.get("best")
                    console.print(
                        f"epoch {event['epoch']}: validation on {event['horizon']} steps: score "
                        f"{event['score']:.4f}"
                        + (f" (best {best:.4f})" if best is not None else "")
                        + (" improved" if event["improved"] else "")
                    )
                return
            stage = f"stage {event['stage']} " if "stage" in event else ""
            kind = f"IL({event['teacher']}) " if event.get("imitation") else ""
            loss = (
                f"imitation-loss {event['imitation_loss']:.3g}"
                if event.get("imitation")
                else f"meta-loss {event['meta_loss']:.3f}"
            )
            info = f"{stage}H {event['horizon']} {kind}{loss} val {last['val']}"
            bar.update(job, completed=event["epoch"], info=info)
            if plain and event["epoch"] % every == 0:
                done = event["epoch"] - start_epoch
                eta = event["seconds"] - start_seconds
                eta = eta / done * (config.num_epochs - event["epoch"]) if done else 0
                console.print(
                    f"epoch {event['epoch']}/{config.num_epochs} {info} "
                    f"[{event['seconds']:.0f} s, ETA {eta:.0f} s]"
                )

        summary = trainer.run(on_event)
    state = "interrupted" if summary.interrupted else "finished"
    console.print(
        f"{state} after {summary.epochs_done} epochs in {summary.seconds:.0f} s; best validation "
        f"score {summary.best_score} at epoch {summary.best_epoch}; skipped meta-steps "
        f"{summary.skipped_meta_steps}; best checkpoint: {summary.best_path}"
    )
    if "stage" in summary.extra:
        console.print(
            f"curriculum: stage {summary.extra['stage']} (horizon {summary.extra['horizon']}); "
            + (summary.extra["curriculum_end"] or "stopped at the epoch limit")
        )
    if "imitation_epochs" in summary.extra:
        console.print(f"imitation epochs: {summary.extra['imitation_epochs']}")
    if summary.interrupted:
        console.print(f"resume with: l2o train {recipe} --budget {budget} --out {out} --resume")
        raise typer.Exit(130)
    console.print(f"evaluate with: l2o evaluate {summary.best_path} --task {task}")


@app.command()
def reproduce(
    figure: Annotated[str, typer.Argument(help="fig2 | fig3 | fig5 | fig6 | all")],
    budget: Annotated[str, typer.Option(help="demo | cpu | paper")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="output directory")] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="evaluation seeds")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="evaluation steps")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="jobs run in parallel")] = 2,
    weights: Annotated[
        str, typer.Option(help="ours (meta-train) | paper (the authors' weights where published)")
    ] = "ours",
    tasks: Annotated[
        str | None, typer.Option(help="only these of the figure's tasks, comma-separated")
    ] = None,
    plan_only: Annotated[bool, typer.Option("--plan", help="print the plan and exit")] = False,
    backend: Annotated[
        str, typer.Option(help="local (process pool) | ray (pip install 'l2o[ray]')")
    ] = "local",
    address: Annotated[
        str | None, typer.Option(help="with --backend ray: a cluster address, e.g. auto")
    ] = None,
    max_retries: Annotated[
        int, typer.Option(min=0, help="with --backend ray: retries of a failed job")
    ] = 2,
    device: Annotated[str, typer.Option(help="cpu or cuda (one GPU per job)")] = "cpu",
) -> None:
    """Reproduce a figure of the paper: meta-train what it needs on mlp-orig, evaluate every
    optimizer on the figure's tasks beside grid-tuned Adam, RMSprop, SGD and NAG, and write the
    figure (PNG) and a markdown report. Re-running resumes: finished jobs are kept."""
    import rich.markup

    from l2o.reproduce.runner import check_backend, describe_plan, make_plan, run_plan, write_report

    out = out or Path("runs") / f"reproduce-{budget}"
    try:
        check_backend(backend)
    except ValueError as err:  # the fix names an extra in brackets: no rich markup
        _fail(rich.markup.escape(str(err)))
    try:
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: CUDA is not available; use --device cpu")
        plan = make_plan(
            [figure],
            budget,
            out,
            steps=steps,
            seeds=seeds,
            weights=weights,
            tasks=tasks.split(",") if tasks else None,
        )
    except ValueError as err:
        _fail(str(err))
    for line in describe_plan(plan, jobs):
        console.print(line)
    if plan_only:
        return
    _check_data(plan, out)
    start = time.perf_counter()
    interrupted = False
    options = dict(backend=backend, device=device, address=address, max_retries=max_retries)
    try:
        statuses = run_plan(
            plan, jobs=jobs, log=lambda m: console.print(m, highlight=False), **options
        )
    except KeyboardInterrupt:
        interrupted, statuses = True, {}
    except ValueError as err:  # the backend could not start (e.g. no Ray cluster at --address)
        _fail(rich.markup.escape(str(err)))
    paths = write_report(plan, statuses, time.perf_counter() - start)
    for path in paths:
        console.print(f"wrote {path}")
    if interrupted:
        console.print(
            f"[yellow]interrupted: finished jobs are kept; run the same command to resume "
            f"(l2o reproduce {figure} --budget {budget} --out {out})"
        )
        raise typer.Exit(130)
    failed = [k for k, v in statuses.items() if v["status"] not in ("done", "done (earlier)")]
    if failed:
        console.print(f"[red]{len(failed)} jobs did not finish: {', '.join(failed)}")
        raise typer.Exit(1)


def _check_data(plan, out: Path) -> None:
    """Stop before anything runs if a data set the plan needs is missing or corrupt."""
    from l2o.data import DataError
    from l2o.reproduce.runner import check_data

    try:
        check_data(plan)
    except DataError as err:
        _fail(f"{err}\nNothing has run; the jobs already done in {out} are kept.")


@app.command()
def pretrained() -> None:
    """List the optimizers that load by name: ours (bundled) and the paper's own trained weights."""
    from l2o.bundled import bundled_cards
    from l2o.reproduce.paper import paper_value_of_weights
    from l2o.rules.paper import PAPER_CHECKPOINTS, paper_checkpoint_dir

    table = Table(
        Column("name", no_wrap=True),
        "model",
        "trained",
        Column("mlp-orig final ln loss", no_wrap=True),
        "tasks",
    )
    for name, card in bundled_cards().items():
        evaluation = card.get("evaluation", {})
        orig = evaluation.get("mlp-orig", {})
        final, adam = orig.get("final_ln_loss"), orig.get("adam", {}).get("final_ln_loss")
        ours = f"{final:.2f}" if final is not None else ("diverged" if orig else "-")
        if orig and adam is not None:
            ours += f" (Adam {adam:.2f})"
        table.add_row(
            name,
            card.get("model", "?"),
            f"ours ({card.get('budget')})",
            ours,
            str(len(evaluation)),
        )
    for name, (kind, _file) in PAPER_CHECKPOINTS.items():
        value = paper_value_of_weights(name, "mlp-orig")
        shown = f"paper: {value:.2f}" if value is not None else "-"
        table.add_row(name, kind, "the authors", shown, "-")
    Console().print(table)
    console.print(
        "paper:* are the trained weights of Chen et al. (NeurIPS 2020), "
        f"VITA-Group/L2O-Training-Techniques, MIT licence, in {paper_checkpoint_dir()}. "
        "Values at 10,000 steps. Each bundled card holds its evaluation on every task it was run "
        "on and where it is known to fail. `l2o evaluate NAME --task TASK` runs any of them."
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/demo"),
    steps: Annotated[int, typer.Option(min=1, help="evaluation steps")] = 2000,
    seeds: Annotated[int, typer.Option(min=1, help="evaluation seeds")] = 3,
    jobs: Annotated[int, typer.Option(min=1, help="jobs run in parallel")] = 2,
) -> None:
    """The main job: meta-train L2O-DM with and without the paper's curriculum + imitation (demo
    budget, in parallel), evaluate both beside grid-tuned Adam on mlp-orig and mlp-relu, and
    write the figure and report. Re-running resumes what is done."""
    from l2o.reproduce.paper import DEMO
    from l2o.reproduce.runner import describe_plan, make_plan, run_plan, write_report

    plan = make_plan([DEMO], "demo", out, steps=steps, seeds=seeds)
    for line in describe_plan(plan, jobs):
        console.print(line)
    _check_data(plan, out)
    start = time.perf_counter()
    try:
        statuses = run_plan(plan, jobs=jobs, log=lambda m: console.print(m, highlight=False))
    except KeyboardInterrupt:
        write_report(plan, {}, time.perf_counter() - start)
        console.print("[yellow]interrupted: run `make demo` again to resume")
        raise typer.Exit(130) from None
    paths = write_report(plan, statuses, time.perf_counter() - start)
    verdict = demo_verdict(out)
    report = out / "report.md"
    report.write_text(report.read_text() + "\n## Verdict\n\n" + verdict + "\n")
    console.print(
        (out / "demo.md").read_text().split("Deviations")[0].split("analytic baselines.")[-1]
    )
    console.print(f"[bold]{verdict}")
    for path in paths:
        console.print(f"wrote {path}")
    failed = [k for k, v in statuses.items() if v["status"] not in ("done", "done (earlier)")]
    if failed:
        console.print(f"[red]{len(failed)} jobs did not finish: {', '.join(failed)}")
        raise typer.Exit(1)


def demo_verdict(out: Path) -> str:
    """Whether L2O-DM-CL-IL beat L2O-DM in the demo, task by task, in words."""
    parts = []
    from l2o.reproduce.paper import DEMO

    for task in DEMO.tasks:
        means = {}
        for label in ("l2o-dm", "l2o-dm-cl-il"):
            path = Path(out) / "eval" / label / task / "summary.json"
            if path.exists():
                means[label] = json.loads(path.read_text())["final_ln_loss"]["mean"]
        plain, both = means.get("l2o-dm"), means.get("l2o-dm-cl-il")
        if plain is None or both is None:
            parts.append(f"{task}: not comparable (a run is missing or diverged everywhere)")
        elif both < plain:
            parts.append(f"{task}: CL+IL beats the plain baseline by {plain - both:.2f} in ln loss")
        else:
            parts.append(
                f"{task}: at this budget CL+IL does NOT beat the plain baseline "
                f"({both:.2f} vs {plain:.2f})"
            )
    return "; ".join(parts) + "."


def main() -> None:
    """Entry point of the ``l2o`` console script."""
    # Tiny (denormal) floats make the LSTMs' sigmoids several times slower on CPUs.
    torch.set_flush_denormal(True)
    # A polite kill (SIGTERM, e.g. from a job scheduler) stops like Ctrl-C: results are saved.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
