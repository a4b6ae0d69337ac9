"""``l2o reproduce``: meta-train what a figure needs, evaluate it beside tuned analytic baselines,
and write the figure and a report next to each other.

The work is a small graph of *jobs* (train a recipe; grid-search an analytic optimizer's learning
rate on a task; evaluate one optimizer on one task), each writing its result into its own folder
under the output directory. A job whose result is already there is skipped, so an interrupted run
resumes where it stopped (training jobs resume mid-run). Independent jobs run in parallel worker
processes, one CPU thread each by default: on small CPUs, two single-thread jobs do about twice the
work of one two-thread job (docs/performance.md). The same jobs run on a Ray cluster with
``backend="ray"`` (``pip install 'l2o[ray]'``, docs/distributed.md): one Ray task per job, retried
when a worker dies, one GPU each on CUDA.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from l2o.reproduce.claims import Verdict, judge, verdict_rows
from l2o.reproduce.paper import FIGURES, PAPER_NOTES, PAPER_STEPS, PAPER_VALUES, Figure

#: ``(steps, seeds)`` of the evaluations per budget (``--steps`` / ``--seeds`` override them).
EVAL_SIZES = {"demo": (300, 2), "cpu": (3_000, 3), "paper": (PAPER_STEPS, 10)}
#: ``(steps, seeds)`` of each learning-rate grid point per budget.
GRID_SIZES = {"demo": (100, 1), "cpu": (300, 2), "paper": (1_000, 3)}
#: The analytic baselines and their learning-rate grids.
LR_GRIDS: dict[str, tuple[float, ...]] = {
    "adam": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    "rmsprop": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    "sgd": (1e-2, 3e-2, 0.1, 0.3, 1.0),
    "nag": (3e-3, 1e-2, 3e-2, 0.1, 0.3),
}
#: Learned rules are compiled for evaluations at least this long (compiling takes ~10-20 s).
COMPILE_FROM_STEPS = 2_000
BASELINE_LABELS = {"adam": "Adam", "rmsprop": "RMSprop", "sgd": "SGD", "nag": "NAG"}
#: The arguments of each kind of job that decide its result; a finished job records them in its
#: ``done.json`` so that a later run with other settings into the same folder is refused instead of
#: reporting the old result under the new settings.
RESULT_ARGS = {
    "train": ("recipe", "budget", "seed"),
    "grid": ("rule", "task", "lrs", "steps", "seeds"),
    "eval": ("rule", "task", "steps", "seeds"),
}


def result_settings(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a ``kind`` job that decide its result (:data:`RESULT_ARGS`)."""
    return {k: args[k] for k in RESULT_ARGS[kind] if k in args}


@dataclass
class Job:
    """One unit of work; ``deps`` must be done first. ``out`` holds its result."""

    key: str
    kind: str  # "train" | "grid" | "eval"
    out: Path
    args: dict[str, Any]
    deps: list[str] = field(default_factory=list)

    def done(self) -> bool:
        return (self.out / "done.json").exists()

    def settings(self) -> dict[str, Any]:
        """The arguments that decide this job's result (not its label or the paths it reads)."""
        return result_settings(self.kind, self.args)

    def recorded_settings(self) -> dict[str, Any] | None:
        """The settings the finished result in ``out`` was made with; ``None`` if it is not
        finished or did not record them. Evaluations finished before settings were recorded are
        read from their ``summary.json``."""
        path = self.out / "done.json"
        if not path.exists():
            return None
        done = json.loads(path.read_text())
        if "settings" in done:
            return done["settings"]
        summary = self.out / "summary.json"
        if self.kind == "eval" and summary.exists():
            s = json.loads(summary.read_text())
            return {
                "task": s["task"],
                "steps": s.get("steps_requested", s["steps"]),
                "seeds": len(s["seeds"]),
            }
        return None

    def conflict(self) -> str | None:
        """What differs between the finished result in ``out`` and what this job asks for
        (``None``: nothing, or nothing finished)."""
        recorded, wanted = self.recorded_settings(), self.settings()
        if recorded is None:
            return None
        differ = [k for k in wanted if k in recorded and recorded[k] != wanted[k]]
        if not differ:
            return None
        then = ", ".join(f"{k}={recorded[k]}" for k in differ)
        now = ", ".join(f"{k}={wanted[k]}" for k in differ)
        return f"{self.out} was made with {then}, this run asks for {now}"


# -- what runs in a worker ----------------------------------------------------------------------
def _run_job(
    kind: str, out: str, args: dict[str, Any], threads: int, device: str = "cpu"
) -> dict[str, Any]:
    """Execute one job in a worker process (or a Ray task); returns ``{"status": ...}``."""
    global _JOB_RUNNING
    import torch
    import torch._dynamo

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    # A worker runs many jobs. torch.compile caches per code object (e.g. ``DMRule.step``) across
    # them, and each new task shape or rule instance is one more recompilation; past dynamo's
    # limit (8) it silently falls back to eager for the rest of the worker's life. Each job starts
    # with a clean cache instead (seen in a fig5 cpu run: the 8th job ran eager).
    torch._dynamo.reset()
    out_dir = Path(out)
    start = time.perf_counter()
    try:
        _JOB_RUNNING = True
        if _INTERRUPTED:  # stopped while idle: the run is ending, start nothing new
            raise KeyboardInterrupt
        if kind == "train":
            status = _train(out_dir, args, device)
        elif kind == "grid":
            status = _grid(out_dir, args, device)
        else:
            status = _eval(out_dir, args, device)
    except KeyboardInterrupt:
        status = {"status": "interrupted"}
    finally:
        _JOB_RUNNING = False
    status["seconds"] = round(time.perf_counter() - start, 1)
    if status["status"] == "done":
        from l2o.io import atomic_write_json

        status["settings"] = result_settings(kind, args)
        atomic_write_json(out_dir / "done.json", status)
    return status


#: In a pool worker: whether a job is running (a stop signal then interrupts it), and whether a
#: stop signal has arrived (a job handed over afterwards is not started).
_JOB_RUNNING = False
_INTERRUPTED = False


def _on_stop_signal(signum, frame) -> None:
    """A pool worker's Ctrl-C / SIGTERM: interrupt the running job (it saves what it has and
    returns ``interrupted``); an idle worker only notes it and waits for the pool to shut down,
    instead of dying with a traceback while it waits for work."""
    global _INTERRUPTED
    _INTERRUPTED = True
    if _JOB_RUNNING:
        raise KeyboardInterrupt


def _worker_init() -> None:
    """A worker stops on SIGTERM as on Ctrl-C (:func:`_on_stop_signal`): :func:`run_plan` passes
    a SIGTERM sent to the command on to its workers, and a terminal's Ctrl-C reaches them all."""
    signal.signal(signal.SIGINT, _on_stop_signal)
    signal.signal(signal.SIGTERM, _on_stop_signal)


def _pass_sigterm_to(pool: ProcessPoolExecutor):
    """While the pool runs, SIGTERM to this process (a job scheduler's polite kill) stops it as
    Ctrl-C does, and is passed on to the workers: a terminal's Ctrl-C reaches the whole process
    group, a SIGTERM only the process it was sent to. Returns the handler to put back."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_term(signum, frame):
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                process.terminate()
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, on_term)


PROGRESS = "progress.txt"


def _progress(out_dir: Path, text: str) -> None:
    """The job's latest progress line (the main process shows it while the job runs)."""
    (out_dir / PROGRESS).write_text(text + "\n")


def _train(out_dir: Path, args: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    from l2o.training import Trainer, get_recipe

    recipe = get_recipe(args["recipe"])
    config = recipe.config(args["budget"], task="mlp-orig", device=device, seed=args.get("seed", 0))
    trainer = Trainer(config, out_dir, resume=(out_dir / "train_state.pt").exists())
    resumed = last_validation(out_dir)  # (Trainer has cut metrics.jsonl to its saved epoch)
    last = {"val": "-" if resumed is None else f"{resumed:.3f}"}

    def on_event(event):
        if event["type"] == "validation":
            last["val"] = f"{event['score']:.3f}"
        elif event["type"] == "epoch":
            stage = f"stage {event['stage']}, " if "stage" in event else ""
            _progress(
                out_dir,
                f"epoch {event['epoch']}/{config.num_epochs} ({stage}horizon {event['horizon']}), "
                f"last validation {last['val']}, {event['seconds']:.0f} s",
            )

    summary = trainer.run(on_event)
    if summary.interrupted:
        return {"status": "interrupted"}
    if summary.best_path is None:
        return {"status": "failed", "error": "training produced no checkpoint"}
    return {
        "status": "done",
        "checkpoint": summary.best_path,
        "epochs": summary.epochs_done,
        "training_seconds": round(summary.seconds, 1),
        **{k: v for k, v in summary.extra.items() if k != "zeroed_meta_steps"},
    }


def _grid(out_dir: Path, args: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    from l2o.evaluation import evaluate
    from l2o.registry import load_rule
    from l2o.tasks import get_task

    task = get_task(args["task"])
    scores = {}
    for lr in args["lrs"]:
        result = evaluate(
            load_rule(args["rule"], lr=lr),
            task,
            args["steps"],
            list(range(args["seeds"])),
            device=device,
        )
        if result.interrupted:
            return {"status": "interrupted"}
        s = result.summary()
        mean = s["final_ln_loss"]["mean"]
        scores[str(lr)] = mean if (mean is not None and not s["diverged_seeds"]) else math.inf
    best = min(scores, key=lambda k: scores[k])
    return {"status": "done", "best_lr": float(best), "scores": scores, **args}


def _trained_checkpoint(train_dir: Path) -> str:
    """The checkpoint a finished training job released. Its ``done.json`` records the path it had
    then; if the output folder has moved since (copied to another machine, committed and cloned),
    the file of that name in the folder as it is now."""
    recorded = Path(json.loads((train_dir / "done.json").read_text())["checkpoint"])
    return str(recorded if recorded.exists() else train_dir / recorded.name)


def _eval(out_dir: Path, args: dict[str, Any], device: str = "cpu") -> dict[str, Any]:
    from l2o.evaluation import evaluate
    from l2o.registry import load_rule
    from l2o.report import save_eval
    from l2o.tasks import get_task

    spec, lr = args["rule"], args.get("lr")
    if args.get("checkpoint_from"):
        spec = _trained_checkpoint(Path(args["checkpoint_from"]))
    if args.get("lr_from"):
        lr = json.loads((Path(args["lr_from"]) / "done.json").read_text())["best_lr"]
    rule = load_rule(spec, lr=lr) if lr is not None else load_rule(spec)

    def on_step(t, losses):
        mean = float(losses.mean())
        ln = f"{math.log(mean):+.3f}" if math.isfinite(mean) and mean > 0 else "nan"
        _progress(out_dir, f"step {t}/{args['steps']}, ln mean loss {ln}")

    result = evaluate(
        rule,
        get_task(args["task"]),
        args["steps"],
        list(range(args["seeds"])),
        device=device,
        compile=args["steps"] >= COMPILE_FROM_STEPS,
        callback=on_step,
        callback_every=max(50, args["steps"] // 20),
    )
    if result.interrupted:
        return {"status": "interrupted"}
    label = args["label"] + (f" (lr {lr:g})" if lr is not None else "")
    save_eval(result, out_dir, label=label)
    return {"status": "done", "rule": spec, "lr": lr, "label": label}


# -- planning -----------------------------------------------------------------------------------
@dataclass
class Plan:
    figures: list[Figure]
    budget: str
    steps: int
    seeds: int
    weights: str  # "ours" | "paper"
    out: Path
    jobs: dict[str, Job] = field(default_factory=dict)
    train_seeds: int = 1  # training seeds per meta-trained curve (0 .. train_seeds - 1)

    def add(self, job: Job) -> str:
        self.jobs.setdefault(job.key, job)
        return job.key

    def curve_source(self, curve) -> tuple[str, str | None]:
        """``(kind, value)``: ``("paper", "paper:dm")``, ``("train", recipe)`` or
        ``("missing", reason)``."""
        if self.weights == "paper" and curve.paper_weights:
            return "paper", curve.paper_weights
        if curve.recipe is None:
            return "missing", curve.reason
        return "train", curve.recipe

    def seeds_of(self, kind: str) -> list[int | None]:
        """The training seeds of a curve of this ``kind``: ``[None]`` (one, unnamed) unless the
        curve is meta-trained here with several training seeds."""
        return list(range(self.train_seeds)) if kind == "train" and self.train_seeds > 1 else [None]

    def train_key(self, recipe: str, seed: int | None = None) -> str:
        key = f"train/{recipe}-{self.budget}"
        return key if seed is None else f"{key}/seed-{seed}"

    @staticmethod
    def eval_key(label: str, task: str, seed: int | None = None) -> str:
        key = f"eval/{_slug(label)}/{task}"
        return key if seed is None else f"{key}/seed-{seed}"

    def baseline_key(self, rule: str, task: str) -> str:
        return f"eval/{rule}/{task}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text.lower()).strip("-")


def make_plan(
    figures: list[str | Figure],
    budget: str,
    out: Path,
    steps: int | None = None,
    seeds: int | None = None,
    weights: str = "ours",
    tasks: list[str] | None = None,
    train_seeds: int = 1,
    recipes: list[str] | None = None,
) -> Plan:
    """Every job the figures need, with their dependencies (``tasks`` restricts the figures to
    some of their tasks; ``train_seeds`` meta-trains every learned curve with that many training
    seeds, each evaluated on its own, for the spread over training seeds; ``recipes`` keeps only
    the learned curves of these recipes, e.g. to run a figure's cheaper half first)."""
    if budget not in EVAL_SIZES:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(EVAL_SIZES)}")
    if train_seeds < 1:
        raise ValueError(f"train_seeds must be at least 1, got {train_seeds}")
    if weights not in ("ours", "paper"):
        raise ValueError(f"weights must be 'ours' or 'paper', got {weights!r}")
    names = list(FIGURES) if "all" in figures else figures
    unknown = [f for f in names if isinstance(f, str) and f not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure {unknown[0]!r}; choose from {', '.join(FIGURES)}, all")
    d_steps, d_seeds = EVAL_SIZES[budget]
    figs = [FIGURES[f] if isinstance(f, str) else f for f in names]
    if tasks:
        known = {t for f in figs for t in f.tasks}
        if not set(tasks) <= known:
            raise ValueError(
                f"task(s) {sorted(set(tasks) - known)} are not in the figure(s); "
                f"choose from {', '.join(sorted(known))}"
            )
        figs = [
            replace(f, tasks=tuple(t for t in f.tasks if t in tasks))
            for f in figs
            if set(f.tasks) & set(tasks)
        ]
    if recipes:
        known = {c.recipe for f in figs for c in f.curves if c.recipe}
        if not set(recipes) <= known:
            raise ValueError(
                f"recipe(s) {sorted(set(recipes) - known)} are not in the figure(s); "
                f"choose from {', '.join(sorted(known))}"
            )
        figs = [replace(f, curves=tuple(c for c in f.curves if c.recipe in recipes)) for f in figs]
    plan = Plan(figs, budget, steps or d_steps, seeds or d_seeds, weights, out, {}, train_seeds)
    g_steps, g_seeds = GRID_SIZES[budget]
    for fig in plan.figures:
        for curve in fig.curves:
            kind, value = plan.curve_source(curve)
            if kind == "missing":
                continue
            for seed in plan.seeds_of(kind):
                train_key = None
                if kind == "train":
                    train_key = plan.train_key(value, seed)
                    args = {"recipe": value, "budget": budget, "seed": seed or 0}
                    plan.add(Job(train_key, "train", out / train_key, args))
                for task in fig.tasks:
                    key = plan.eval_key(curve.label, task, seed)
                    label = f"{curve.label} ({'paper weights' if kind == 'paper' else 'ours'})"
                    args = {
                        "rule": value,
                        "task": task,
                        "steps": plan.steps,
                        "seeds": plan.seeds,
                        "label": label if seed is None else f"{label}, training seed {seed}",
                    }
                    if train_key:
                        args["checkpoint_from"] = str(plan.jobs[train_key].out)
                    plan.add(Job(key, "eval", out / key, args, [train_key] if train_key else []))
        for rule in fig.baselines:
            lrs = LR_GRIDS[rule]
            for task in fig.tasks:
                grid = plan.add(
                    Job(
                        f"grid/{rule}/{task}",
                        "grid",
                        out / "grid" / rule / task,
                        {
                            "rule": rule,
                            "task": task,
                            "lrs": list(lrs),
                            "steps": g_steps,
                            "seeds": g_seeds,
                        },
                    )
                )
                key = plan.baseline_key(rule, task)
                plan.add(
                    Job(
                        key,
                        "eval",
                        out / key,
                        {
                            "rule": rule,
                            "task": task,
                            "steps": plan.steps,
                            "seeds": plan.seeds,
                            "label": BASELINE_LABELS[rule],
                            "lr_from": str(plan.jobs[grid].out),
                        },
                        [grid],
                    )
                )
    conflicts = [c for job in plan.jobs.values() if (c := job.conflict())]
    if conflicts:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise ValueError(
            f"finished results in {out} were made with other settings: {conflicts[0]}{more}; "
            "use another --out, or delete those folders to run them again"
        )
    return plan


#: Rough single-thread throughputs on the 2-core development CPU (docs/performance.md), used
#: only for the plan's time estimate: optimizee steps per second of meta-training per model,
#: and seed-steps per second of evaluation for learned / analytic rules.
_TRAIN_RATE = {"dm": 60.0, "rnnprop": 50.0, "scale": 35.0}
_EVAL_RATE = {"learned": 150.0, "analytic": 2_000.0}


def _last_logged(out_dir: Path, kind: str, field: str, convert: Callable[[Any], Any]) -> Any:
    """``convert`` of ``field`` of the last ``kind`` record (``"epoch"``, ``"validation"``) in a
    training's ``metrics.jsonl``; None if there is none. Lines a kill cut short, and values
    ``convert`` rejects, are skipped."""
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return None
    value = None
    for line in path.read_text().splitlines():
        if f'"type": "{kind}"' in line:
            try:
                value = convert(json.loads(line)[field])
            except (ValueError, KeyError, TypeError):  # a line cut by a kill, or garbage
                continue
    return value


def epochs_done(job: Job) -> int:
    """How many epochs an unfinished training job has already done (0 if it has not started):
    the last epoch in its ``metrics.jsonl``, which the trainer writes with its resumable state."""
    if job.kind != "train" or not (job.out / "train_state.pt").exists():
        return 0
    return _last_logged(job.out, "epoch", "epoch", int) or 0


def last_validation(out_dir: Path) -> float | None:
    """The score of the last validation in a training's ``metrics.jsonl`` (None if it has none):
    a resumed training's progress line shows it until the training validates again."""
    return _last_logged(out_dir, "validation", "score", float)


def _train_config(job: Job):
    from l2o.training import get_recipe

    return get_recipe(job.args["recipe"]).config(job.args["budget"])


def estimate_seconds(job: Job) -> float:
    """A rough single-thread CPU estimate of what is left of a job (an upper bound for curricula:
    every epoch is counted at the mean of the curriculum's horizons)."""
    if job.kind == "train":
        c = _train_config(job)
        horizon = sum(c.horizons) / len(c.horizons)
        left = max(0, c.num_epochs - epochs_done(job))
        return left * horizon / _TRAIN_RATE.get(c.model, 50.0)
    steps = job.args["steps"] * job.args["seeds"]
    if job.kind == "grid":
        return steps * len(job.args["lrs"]) / _EVAL_RATE["analytic"]
    analytic = job.args["rule"] in LR_GRIDS
    rate = _EVAL_RATE["analytic" if analytic else "learned"]
    slow = 4.0 if job.args["task"].startswith("conv") else 1.0
    return steps * slow / rate


def parallel_jobs(jobs: int, backend: str = "local", cores: int | None = None) -> int:
    """The jobs that really run at once: local jobs share this machine's ``cores`` (default: all
    of them; three jobs on two cores run at two jobs' pace); a Ray cluster's are not ours."""
    if backend != "local":
        return max(1, jobs)
    return max(1, min(jobs, cores or os.cpu_count() or 1))


def describe_plan(
    plan: Plan, jobs: int, backend: str = "local", cores: int | None = None
) -> list[str]:
    """The plan in words: what is done, what will run, and a rough time estimate.

    The wall-clock estimate divides the CPU-thread total by the jobs that can really run at once
    (:func:`parallel_jobs`) and is never below the longest single job, which one process runs
    alone (a training cannot be split)."""
    todo = [j for j in plan.jobs.values() if not j.done()]
    trains = sorted({j.args["recipe"] for j in todo if j.kind == "train"})
    lines = [
        f"figures: {', '.join(f.name for f in plan.figures)}; budget {plan.budget}; "
        f"evaluations: {plan.steps} steps x {plan.seeds} seeds; weights: {plan.weights}",
        f"jobs: {len(plan.jobs)} ({len(plan.jobs) - len(todo)} already done); to run: "
        f"{sum(j.kind == 'train' for j in todo)} trainings ({', '.join(trains) or '-'}), "
        f"{sum(j.kind == 'grid' for j in todo)} learning-rate grids, "
        f"{sum(j.kind == 'eval' for j in todo)} evaluations",
    ]
    for j in todo:
        if done := epochs_done(j):
            lines.append(f"resuming {j.key} at epoch {done} of {_train_config(j).num_epochs}")
    seconds = [estimate_seconds(j) for j in todo]
    total = sum(seconds)
    parallel = parallel_jobs(jobs, backend, cores)
    wall = max(total / parallel, max(seconds, default=0.0))
    shared = f", sharing {parallel} core{'s' if parallel != 1 else ''}" if jobs > parallel else ""
    lines.append(
        f"estimated time: about {total / 3600:.1f} CPU-thread hours, so about "
        f"{wall / 3600:.1f} h with {jobs} job{'s' if jobs != 1 else ''} at a time{shared} "
        "on a CPU like the development machine's (a GPU is far faster for --budget paper)"
    )
    return lines


# -- execution ----------------------------------------------------------------------------------
def check_data(plan: Plan) -> list[str]:
    """Load every data set an unfinished job needs, before anything runs, so that a missing or
    corrupt file stops the run in seconds (with :class:`l2o.data.DataError` naming it and the fix)
    rather than failing one job an hour in. Returns the data sets checked."""
    from l2o.data import load_dataset
    from l2o.tasks import get_task

    tasks = {j.args.get("task", "mlp-orig") for j in plan.jobs.values() if not j.done()}
    names = sorted({d for t in tasks if (d := getattr(get_task(t), "dataset", None))})
    for name in names:
        load_dataset(name)
    return names


def remaining_seconds(
    estimates: dict[str, float], spent: dict[str, float], calibrate: set[str] | None = None
) -> float:
    """Thread-seconds left: the a-priori estimates of the unfinished jobs, rescaled by how the
    finished ones compared with theirs (this machine may be faster, slower or busier than the one
    the estimates come from). ``calibrate`` names the jobs whose length is known in advance
    (evaluations, grids; default: all): only they set the scale, because a training can stop
    early (a curriculum that stops improving) or report the seconds of a run it resumed, and
    either would throw the scale off (a curriculum stopped at epoch 600 of 1,000 once made a
    40-minute remainder read 11 minutes)."""
    left = sum(v for k, v in estimates.items() if k not in spent)
    usable = [k for k in spent if k in estimates and (calibrate is None or k in calibrate)]
    done_estimate = sum(estimates[k] for k in usable)
    if done_estimate <= 0:
        return left
    return left * sum(spent[k] for k in usable) / done_estimate


ORDERS = ("trainings", "results")


def ready_jobs(pending: dict[str, Job], running: set[str], order: str = "trainings") -> list[str]:
    """The pending jobs whose dependencies are all finished, in the order they should start.

    ``order="trainings"`` starts trainings first: they are the longest jobs and every evaluation
    waits for one, so this gives the shortest total time. ``order="results"`` starts the jobs that
    finish a result first (evaluations and grids, whose training is done) and a new training only
    when none is ready: a run that is stopped part way (a machine lent for a few hours) then has
    finished results to report instead of many half-trained optimizers. In either order a training
    that a stopped run left part way (``epochs_done``) goes before the trainings not yet started,
    the furthest first: finishing what was begun gives results soonest."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    ready = [
        k for k, j in pending.items() if all(d not in pending and d not in running for d in j.deps)
    ]
    trainings_last = order == "results"
    return sorted(
        ready,
        key=lambda k: ((pending[k].kind == "train") == trainings_last, -epochs_done(pending[k])),
    )


BACKENDS = ("local", "ray")
RAY_INSTALL = "pip install 'l2o[ray]'"


def check_backend(backend: str) -> None:
    """Raise ``ValueError`` naming the fix if ``backend`` is unknown or Ray is not installed."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError(
                f"--backend ray needs Ray, which is not installed: {RAY_INSTALL}"
            ) from None


class LocalBackend:
    """Jobs in a pool of ``jobs`` local worker processes (``spawn``), the cores shared out."""

    name = "local process pool"

    def __init__(self, jobs: int, device: str = "cpu") -> None:
        # the command's thread choice (l2o.threads), shared among the jobs
        budget = os.environ.get("L2O_THREADS", "")
        self.threads = max(1, (int(budget) if budget.isdigit() else os.cpu_count() or 1) // jobs)
        self.device = device
        ctx = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init)

    def submit(self, job: Job) -> Future:
        return self.pool.submit(
            _run_job, job.kind, str(job.out), job.args, self.threads, self.device
        )

    def wait(self, handles: list, timeout: float) -> list:
        return list(wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)[0])

    def result(self, handle: Future) -> dict[str, Any]:
        return handle.result()

    def shutdown(self, handles: list, interrupted: bool) -> None:
        self.pool.shutdown(wait=True, cancel_futures=interrupted)


class RayBackend:
    """Jobs as Ray tasks (https://docs.ray.io): the same ``_run_job`` as the local pool, so the
    results are the same files. Each task asks for ``threads`` CPUs (the cluster's CPUs shared
    out between ``jobs``) and, on CUDA, one GPU; a task whose worker or node dies, or that
    raises, is retried up to ``max_retries`` times (jobs are idempotent: a training resumes from
    its last saved epoch). ``address``: ``None`` starts a local Ray (or joins ``RAY_ADDRESS``),
    ``"auto"`` joins the cluster this machine belongs to. Every node must see the output
    directory and the data (a shared file system; ``L2O_DATA_DIR`` is passed on)."""

    name = "Ray"

    def __init__(
        self, jobs: int, device: str = "cpu", address: str | None = None, max_retries: int = 2
    ) -> None:
        check_backend("ray")
        import ray

        self.ray = ray
        self.owned = not ray.is_initialized()
        if self.owned:
            env = {k: os.environ[k] for k in ("L2O_DATA_DIR", "L2O_CACHE_DIR") if k in os.environ}
            try:
                ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
            except ConnectionError as err:
                raise ValueError(
                    f"--backend ray: cannot reach a Ray cluster at {address!r} ({err}); start one "
                    "with `ray start --head`, or leave --address out for a local one"
                ) from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.threads = max(1, cpus // jobs)
        self.device = device
        self.name = f"Ray ({cpus} CPUs, {self.threads} per job)"
        self.task = ray.remote(_run_job).options(
            num_cpus=self.threads,
            num_gpus=1 if device == "cuda" else 0,
            max_retries=max_retries,
            retry_exceptions=True,
        )

    def submit(self, job: Job):
        return self.task.remote(job.kind, str(job.out), job.args, self.threads, self.device)

    def wait(self, handles: list, timeout: float) -> list:
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        if ready:  # and whatever else has finished meanwhile
            ready, _ = self.ray.wait(handles, num_returns=len(handles), timeout=0)
        return ready

    def result(self, handle) -> dict[str, Any]:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            raise (cause if isinstance(cause, Exception) else err) from None

    def shutdown(self, handles: list, interrupted: bool) -> None:
        if interrupted:  # KeyboardInterrupt in each task: a training saves its state
            for handle in handles:
                self.ray.cancel(handle)
            self.ray.wait(handles, num_returns=len(handles), timeout=60)
        if self.owned:
            self.ray.shutdown()


def run_plan(
    plan: Plan,
    jobs: int = 2,
    log: Callable[[str], None] = print,
    report_every: float = 60.0,
    backend: str = "local",
    device: str = "cpu",
    address: str | None = None,
    max_retries: int = 2,
    order: str = "trainings",
) -> dict[str, Any]:
    """Run every job not yet done, ``jobs`` at a time, in local processes or on Ray
    (``backend``), started in ``order`` (see :func:`ready_jobs`). Returns ``{key: status}``;
    Ctrl-C stops the workers (training saves its state; unfinished evaluations are redone next
    time)."""
    check_backend(backend)
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
    pending = {k: j for k, j in plan.jobs.items() if not j.done()}
    statuses: dict[str, Any] = {
        k: {"status": "done (earlier)"} for k in plan.jobs if k not in pending
    }
    total = len(pending)
    if not total:
        log("every job is already done")
        return statuses
    runner = (
        RayBackend(jobs, device, address, max_retries)
        if backend == "ray"
        else LocalBackend(jobs, device)
    )
    log(
        f"{total} jobs to run ({len(plan.jobs) - total} already done), {jobs} at a time"
        + (f" on {runner.name}" if backend != "local" else "")
    )
    start = time.perf_counter()
    running: dict[Any, str] = {}
    failed: set[str] = set()
    pool = getattr(runner, "pool", None)  # the local backend's workers get SIGTERM passed on
    previous = _pass_sigterm_to(pool) if pool is not None else None
    finished = 0
    estimates = {k: estimate_seconds(j) for k, j in pending.items()}
    fixed_length = {k for k, j in pending.items() if j.kind != "train"}
    parallel = parallel_jobs(jobs, backend)
    spent: dict[str, float] = {}
    try:
        while pending or running:
            ready = ready_jobs(pending, set(running.values()), order)
            for key in ready[: jobs - len(running)]:
                job = pending.pop(key)
                if any(d in failed for d in job.deps):
                    failed.add(key)
                    statuses[key] = {"status": "skipped", "error": "a job it needs failed"}
                    continue
                job.out.mkdir(parents=True, exist_ok=True)
                resumed = epochs_done(job)
                log(f"resume {key} at epoch {resumed}" if resumed else f"start {key}")
                running[runner.submit(job)] = key
            if not running:
                continue
            done = runner.wait(list(running), timeout=report_every)
            if not done:
                for key in running.values():
                    path = plan.jobs[key].out / PROGRESS
                    text = path.read_text().strip() if path.exists() else "starting"
                    log(f"  {key}: {text} [{time.perf_counter() - start:.0f} s elapsed]")
            for fut in done:
                key = running.pop(fut)
                try:
                    status = runner.result(fut)
                except Exception as err:  # a bug or bad input in one job: report, go on
                    status = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
                statuses[key] = status
                finished += 1
                if status["status"] != "done":
                    failed.add(key)
                elapsed = time.perf_counter() - start
                spent[key] = float(status.get("seconds", 0.0))
                eta = remaining_seconds(estimates, spent, fixed_length) / parallel
                log(
                    f"{status['status']} {key} ({status.get('seconds', 0):.0f} s) "
                    f"[{finished}/{total}, {elapsed:.0f} s elapsed, ETA {eta:.0f} s]"
                    + (f": {status['error']}" if "error" in status else "")
                )
                if status["status"] == "interrupted":
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        runner.shutdown(list(running), interrupted=True)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    runner.shutdown([], interrupted=False)
    return statuses


# -- report -------------------------------------------------------------------------------------
def _summary(path: Path) -> dict[str, Any] | None:
    p = path / "summary.json"
    return json.loads(p.read_text()) if (path / "done.json").exists() and p.exists() else None


def _cell(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "not run"
    f = summary["final_ln_loss"]
    if f["mean"] is None:
        return "diverged on every seed"
    text = f"{f['mean']:.2f} [{f['min']:.2f}, {f['max']:.2f}]"
    if summary["diverged_seeds"]:
        text += f", {len(summary['diverged_seeds'])} diverged"
    return text


def _final(summary: dict[str, Any] | None) -> float | None:
    """A finished evaluation's mean final ln loss over its seeds (``None``: not run, or every
    seed diverged)."""
    return None if summary is None else summary["final_ln_loss"]["mean"]


def _seeds_cell(seeds: list[int | None], summaries: list[dict[str, Any] | None]) -> str:
    """The cell of a curve meta-trained with several training seeds: median [min, max] over the
    training seeds of each one's mean final ln loss, then each seed's value."""
    done = [x for x in summaries if x is not None]
    if not done:
        return "not run"
    values = [_final(x) for x in done]
    finite = sorted(v for v in values if v is not None)
    per_seed = ", ".join(
        f"{s}: "
        + ("not run" if x is None else "diverged" if _final(x) is None else f"{_final(x):.2f}")
        for s, x in zip(seeds, summaries, strict=True)
    )
    if not finite:
        return f"diverged on every training seed ({per_seed})"
    median = float(np.median(finite))
    seeds_text = f"{len(done)} training seed" + ("s" if len(done) != 1 else "")
    text = f"median {median:.2f} [{finite[0]:.2f}, {finite[-1]:.2f}] over {seeds_text}"
    return f"{text} ({per_seed})"


def _training_line(label: str, recipe: str, seed: int | None, info: dict[str, Any]) -> str:
    """What a finished training job did, in words, for the report's deviations."""
    name = label if seed is None else f"{label}, training seed {seed}"
    text = f"{name}: recipe `{recipe}`, {info.get('epochs')} epochs, "
    text += f"{info.get('training_seconds')} s of training"
    if "stage" in info:
        text += (
            f", curriculum ended at stage {info['stage']} (horizon {info['horizon']}): "
            f"{info.get('curriculum_end') or 'epoch limit'}"
        )
    return text + "."


def _judge_claims(fig, results: list[dict[str, Any]], train_seeds: int = 1) -> list[Verdict]:
    """The verdict of each of ``fig``'s claims on each of its tasks, from the figure's results
    (a curve's finite value per training seed; a baseline's one value); a meta-trained curve with
    fewer than ``train_seeds`` evaluated training seeds makes the verdict provisional."""
    values: dict[tuple[str, str], list[float]] = {}
    pending: dict[tuple[str, str], int] = {}
    for r in results:
        if r["source"] == "baseline":
            found = [r["final_ln_loss"]]
        else:
            found = list(r.get("training_seeds", {}).values())  # every evaluated seed
            pending[(r["curve"], r["task"])] = max(0, train_seeds - len(found))
        values[(r["curve"], r["task"])] = [v for v in found if v is not None]
    side = lambda label, task: values.get((label, task), [])  # noqa: E731
    to_come = lambda label, task: pending.get((label, task), 0)  # noqa: E731
    return [
        judge(
            claim,
            task,
            side(claim.better, task),
            side(claim.worse, task),
            to_come(claim.better, task) + to_come(claim.worse, task),
        )
        for claim in fig.claims
        for task in fig.tasks
    ]


@dataclass
class WrittenReport:
    """What :func:`write_report` wrote (``paths``; iterating yields them) and each figure's
    results table in markdown (``tables``, by figure name), for callers that show it."""

    paths: list[Path]
    tables: dict[str, str]

    def __iter__(self):
        return iter(self.paths)


def write_report(plan: Plan, statuses: dict[str, Any], seconds: float) -> WrittenReport:
    """One PNG and one markdown section per figure, and ``report.md`` holding them all: the
    plan's figures and those an earlier invocation wrote into the same folder (``<figure>.md``,
    each with its own cells and deviations; the header is this invocation's), in the order of
    :data:`FIGURES`. Reproducing Figure 5 into a folder that holds the techniques figure thus
    keeps both in ``report.md``."""
    from l2o.io import atomic_write_bytes, atomic_write_json
    from l2o.report import Curve, load_eval, plot_grid

    sections = [
        "# Reproducing Chen et al. (2020): our results beside the paper's\n",
        f"Budget `{plan.budget}`; optimizers meta-trained on mlp-orig"
        + (" (the authors' own weights where published)" if plan.weights == "paper" else "")
        + f"; evaluations of {plan.steps} steps on {plan.seeds} seeds (test split), analytic "
        f"baselines at the best learning rate of a grid ({GRID_SIZES[plan.budget][0]} steps, "
        f"{GRID_SIZES[plan.budget][1]} seeds). Cells: final ln loss (ln of the mean loss over "
        "the last 100 steps) mean [min, max] over seeds"
        + (
            f"; a meta-trained curve: over {plan.train_seeds} training seeds, the median "
            "[min, max] of each training seed's mean, then each seed's value"
            if plan.train_seeds > 1
            else ""
        )
        + ". Wall-clock of this invocation: "
        f"{seconds:.0f} s.\n",
    ]
    paths, tables = [], {}
    written: dict[str, str] = {}
    for fig in plan.figures:
        deviations = []
        if plan.steps != PAPER_STEPS:
            deviations.append(
                f"{plan.steps} evaluation steps instead of {PAPER_STEPS}: the paper's values are "
                f"at step {PAPER_STEPS}, ours at step {plan.steps}."
            )
        if plan.seeds != 10:
            deviations.append(f"{plan.seeds} seeds instead of 10.")
        trained = any(plan.curve_source(c)[0] == "train" for c in fig.curves)
        if plan.budget != "paper" and trained:
            deviations.append(
                f"meta-trained at the `{plan.budget}` budget (fewer epochs, a shorter curriculum; "
                "docs/techniques.md), not the paper's."
            )
        if "conv-cifar" in fig.tasks:
            deviations.append("Conv-CIFAR runs on the JPEG-recompressed copy of CIFAR-10.")
        header = "| optimizer | " + " | ".join(fig.tasks) + " |"
        rows = [header, "|---" * (len(fig.tasks) + 1) + "|"]
        panels: dict[str, list] = {t: [] for t in fig.tasks}
        results: list[dict[str, Any]] = []
        not_run = 0
        for curve in fig.curves:
            kind, value = plan.curve_source(curve)
            cells = []
            for task in fig.tasks:
                paper = PAPER_VALUES.get(curve.label, {}).get(task)
                note = PAPER_NOTES.get((curve.label, task))
                paper_text = note or (f"{paper:.2f}" if paper is not None else "n/a")
                if kind == "missing":
                    cells.append(f"not reproduced / paper {paper_text}")
                    continue
                seeds = plan.seeds_of(kind)
                folders = [plan.out / plan.eval_key(curve.label, task, seed) for seed in seeds]
                summaries = [_summary(folder) for folder in folders]
                not_run += sum(x is None for x in summaries)
                done = [f for f, x in zip(folders, summaries, strict=True) if x is not None]
                arrays = [load_eval(p)[1] for p in done]
                if arrays:
                    groups = np.concatenate([np.full(len(a), i) for i, a in enumerate(arrays)])
                    several = len(seeds) > 1
                    panels[task].append(
                        Curve(curve.label, np.concatenate(arrays), groups if several else None)
                    )
                cell = _cell(summaries[0]) if len(seeds) == 1 else _seeds_cell(seeds, summaries)
                cells.append(f"{cell} / paper {paper_text}")
                results.append(
                    {
                        "curve": curve.label,
                        "task": task,
                        "source": kind,
                        "paper": paper,
                        "training_seeds": {
                            str(seed if seed is not None else 0): _final(x)
                            for seed, x in zip(seeds, summaries, strict=True)
                            if x is not None
                        },
                        "diverged_seeds": {
                            str(seed if seed is not None else 0): x["diverged_seeds"]
                            for seed, x in zip(seeds, summaries, strict=True)
                            if x is not None and x["diverged_seeds"]
                        },
                    }
                )
            name = curve.label + (" (paper weights)" if kind == "paper" else "")
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
            if kind == "missing":
                deviations.append(f"{curve.label} not reproduced: {value}.")
            elif kind == "train":
                for seed in plan.seeds_of(kind):
                    key = plan.train_key(value, seed)
                    done_file = plan.out / key / "done.json"
                    if done_file.exists():
                        info = json.loads(done_file.read_text())
                        deviations.append(_training_line(curve.label, value, seed, info))
                    elif key in statuses:
                        deviations.append(f"{curve.label}: training {statuses[key].get('status')}.")
                from l2o.training import get_recipe

                departures = get_recipe(value).deviations(plan.budget)
                if departures:
                    deviations.append(
                        f"{curve.label} (recipe `{value}`, budget `{plan.budget}`) differs from "
                        f"the paper: {'; '.join(departures)}."
                    )
        for rule in fig.baselines:
            label = BASELINE_LABELS[rule]
            cells = []
            for task in fig.tasks:
                path = plan.out / plan.baseline_key(rule, task)
                summary = _summary(path)
                if summary is not None:
                    _, losses = load_eval(path)
                    lr = summary.get("hyperparameters", {}).get("lr")
                    results.append(
                        {
                            "curve": label,
                            "task": task,
                            "source": "baseline",
                            "lr": lr,
                            "final_ln_loss": _final(summary),
                            "diverged_seeds": summary["diverged_seeds"],
                        }
                    )
                    panels[task].append(Curve(f"{label} (lr {lr:g})", losses))
                    cells.append(f"{_cell(summary)} (lr {lr:g})")
                else:
                    not_run += 1
                    cells.append(_cell(None))
            rows.append(f"| {label} (grid-tuned lr) | " + " | ".join(cells) + " |")
        if not_run:
            deviations.insert(
                0,
                f"{not_run} cell{'s' if not_run != 1 else ''} not run: the run was interrupted "
                "or a job failed (the log names it); run the same command again to finish them.",
            )
        tables[fig.name] = "\n".join(rows) + "\n"
        verdicts = _judge_claims(fig, results, plan.train_seeds)
        atomic_write_json(
            plan.out / f"{fig.name}.json",
            {
                "figure": fig.name,
                "budget": plan.budget,
                "evaluation": {"steps": plan.steps, "seeds": plan.seeds},
                "train_seeds": plan.train_seeds,
                "results": results,
                "claims": [v.to_dict() for v in verdicts],
            },
        )
        png = plan.out / f"{fig.name}.png"
        plot_grid(panels, png, f"{fig.title} — ours, budget {plan.budget}")
        paths.append(png)
        section = [
            f"## {fig.title}\n",
            f"![{fig.name}]({fig.name}.png)\n",
            "Cells: ours / the paper's value at 10,000 steps (docs/method.md section 7). The paper "
            "reports no analytic baselines.\n",
            *rows,
            "",
            *(
                [
                    "The paper's ordering, per task (final ln loss, lower is better; with several "
                    "training seeds, the medians over them):\n",
                    *verdict_rows(verdicts),
                    "",
                ]
                if verdicts
                else []
            ),
            "Deviations:\n",
            *(f"* {d}" for d in deviations),
            "",
        ]
        text = "\n".join(section) + "\n"
        atomic_write_bytes(plan.out / f"{fig.name}.md", text.encode())
        written[fig.name] = text
    order = [*FIGURES, *(name for name in written if name not in FIGURES)]
    for name in order:
        if name in written:
            sections.append(written[name])
        elif (earlier := plan.out / f"{name}.md").exists():
            sections.append(earlier.read_text())
    report = plan.out / "report.md"
    atomic_write_bytes(report, "\n".join(sections).encode())
    paths.append(report)
    return WrittenReport(paths, tables)
