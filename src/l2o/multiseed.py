"""``l2o train RECIPE --seeds 0,1,2``: several independent meta-training runs as one command.

The paper's comparisons (Chen et al., NeurIPS 2020, Figures 2-6) are between optimizers that were
each meta-trained once; how much a result moves from one training run to the next is what error
bars over *training* seeds show, and evaluation seeds alone do not. This module runs one training
per seed in its own local process (``spawn``ed, at most ``jobs`` at a time, each with its share of
the CPU threads), each writing ``OUT/seed-S/`` exactly as ``l2o train --seed S --out OUT/seed-S``
would, and then ``OUT/summary.json`` with every seed's best validation score and their median.

A seed that fails is reported with its error and the others go on (the exit status says so);
Ctrl-C stops every child after its last completed epoch, which the trainer has saved, and
``--resume`` continues all of them.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import queue
import signal
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
#: Seconds an interrupted parent waits for its children to save and report before it forwards
#: the interrupt itself (a terminal's Ctrl-C reaches them already; a SIGTERM of the parent does
#: not), and then before it kills them.
INTERRUPT_GRACE_S = 2.0
KILL_AFTER_S = 60.0


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> ``[0, 1, 2]`` (a count); ``"0,1,5"`` -> ``[0, 1, 5]`` (a list; ``"5,"`` is seed
    5 alone). Raises ``ValueError`` with the expected forms on anything else."""
    form = "expected a count such as 3 (seeds 0,1,2) or a comma-separated list such as 0,1,5"
    text = text.strip()
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) == 1:
            count = int(parts[0])
            if count < 1:
                raise ValueError(f"--seeds {text!r}: the count must be at least 1; {form}")
            return list(range(count))
        seeds = [int(p) for p in parts if p]
    except ValueError as err:
        if str(err).startswith("--seeds"):
            raise
        raise ValueError(f"--seeds {text!r} is not a seed list; {form}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"--seeds {text!r}: seeds must be non-negative integers; {form}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r} names a seed twice; each seed trains once")
    return seeds


def seed_dir(out: Path, seed: int) -> Path:
    """Where seed ``seed`` of a multi-seed run writes: ``OUT/seed-S``."""
    return Path(out) / f"seed-{seed}"


@dataclass
class SeedResult:
    """What one seed's training reported (``status``: finished | interrupted | failed)."""

    seed: int
    status: str
    best_score: float | None = None
    best_epoch: int | None = None
    epochs: int | None = None
    seconds: float | None = None
    best_path: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None or k == "best_score"}
        if out.get("best_score") is not None and not math.isfinite(out["best_score"]):
            out["best_score"] = None  # JSON has no inf: a run that never validated finitely
        return out


# -- what runs in a child -----------------------------------------------------------------------
def _child(seed: int, config: dict[str, Any], out: str, resume: bool, threads: int, events) -> None:
    """One seed's training, in a fresh process: the same Trainer as ``l2o train`` runs, with the
    same process settings as the ``l2o`` command (flush denormals, SIGTERM stops like Ctrl-C)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    # Ctrl-C / SIGTERM raise KeyboardInterrupt (the trainer stops after its last saved epoch;
    # one that lands in a validation stops it too, l2o.training.validation), but never inside
    # ``events.put`` (it could leave the queue's lock held): there it is deferred to just after.
    putting = {"now": False, "pending": False}

    def interrupt(signum, frame):
        putting["pending"] = True
        if not putting["now"]:
            raise KeyboardInterrupt

    def send(message) -> None:
        putting["now"] = True
        try:
            events.put(message)
        finally:
            putting["now"] = False
        if putting["pending"]:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        import torch

        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        from l2o.training import TrainConfig, Trainer

        trainer = Trainer(TrainConfig.from_dict(config), Path(out), resume=resume)
        send(("start", seed, {"epoch": trainer.epoch, "seconds": trainer.seconds}))
        summary = trainer.run(lambda event: send(("event", seed, event)))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        events.put(("result", seed, {"status": "interrupted"}))
        return
    except Exception as err:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        detail = traceback.format_exc(limit=-3)
        events.put(("result", seed, {"status": "failed", "error": f"{err}", "trace": detail}))
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the result must get out whole
    events.put(
        (
            "result",
            seed,
            {
                "status": "interrupted" if summary.interrupted else "finished",
                "best_score": summary.best_score,
                "best_epoch": summary.best_epoch,
                "epochs": summary.epochs_done,
                "seconds": round(summary.seconds, 1),
                "best_path": summary.best_path,
            },
        )
    )


@contextmanager
def _thread_env(threads: int) -> Iterator[None]:
    """The children inherit ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` from the environment at their
    start, before they import torch; the parent's own environment is restored afterwards."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({n: str(threads) for n in names})
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


# -- the parent ---------------------------------------------------------------------------------
def summarize(results: list[SeedResult], wall_seconds: float, **info: Any) -> dict[str, Any]:
    """``summary.json``: each seed's result, the median best validation score over the seeds that
    finished (lower is better) and which seed is best."""
    scored = [
        r
        for r in results
        if r.status == "finished" and r.best_score is not None and math.isfinite(r.best_score)
    ]
    best = min(scored, key=lambda r: r.best_score) if scored else None
    return {
        **info,
        "seeds": [r.to_dict() for r in results],
        "finished": sum(r.status == "finished" for r in results),
        "median_best_score": statistics.median(r.best_score for r in scored) if scored else None,
        "best_seed": best.seed if best else None,
        "best_checkpoint": best.best_path if best else None,
        "wall_seconds": round(wall_seconds, 1),
    }


def run_seeds(
    configs: dict[int, dict[str, Any]],
    out: Path,
    resume: bool = False,
    jobs: int | None = None,
    threads: int | None = None,
    on_message: Callable[[str, int, dict[str, Any]], None] | None = None,
    poll_s: float = 0.5,
) -> tuple[list[SeedResult], bool]:
    """Train each seed's config (``TrainConfig.to_dict()``) in its own process into
    ``out/seed-S``, ``jobs`` at a time (default: one per core, at most one per seed), each with
    ``threads`` CPU threads (default: the cores shared out between the jobs).

    ``on_message(kind, seed, payload)`` sees the children's messages (``start``, ``event``: the
    trainer's events, ``result``). Returns the results in seed order and whether the run was
    interrupted. A Ctrl-C (``KeyboardInterrupt``) stops every child after its last saved epoch.
    """
    seeds = list(configs)
    cores = os.cpu_count() or 1
    jobs = max(1, min(jobs or min(len(seeds), cores), len(seeds)))
    threads = threads or max(1, cores // jobs)
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    waiting = list(seeds)
    running: dict[int, Any] = {}
    results: dict[int, SeedResult] = {}
    notify = on_message or (lambda kind, seed, payload: None)
    interrupted = False

    def take(message) -> None:
        kind, seed, payload = message
        if kind == "result":
            payload = dict(payload)
            trace = payload.pop("trace", None)
            results[seed] = SeedResult(seed=seed, **payload)
            if trace:
                payload["trace"] = trace
        notify(kind, seed, payload)

    def drain(timeout: float) -> None:
        try:
            take(events.get(timeout=timeout))
            while True:
                take(events.get_nowait())
        except queue.Empty:
            pass

    def reap() -> None:
        for seed, proc in list(running.items()):
            if proc.is_alive():
                continue
            proc.join()
            drain(0.05)  # a result put just before the exit
            del running[seed]
            if seed not in results:  # killed (out of memory, a signal) before it could report
                results[seed] = SeedResult(
                    seed, "failed", error=f"the process died (exit code {proc.exitcode})"
                )
                notify("result", seed, results[seed].to_dict())

    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                seed = waiting.pop(0)
                args = (seed, configs[seed], str(seed_dir(out, seed)), resume, threads, events)
                proc = ctx.Process(target=_child, args=args, name=f"l2o-seed-{seed}")
                with _thread_env(threads):
                    proc.start()
                running[seed] = proc
            drain(poll_s)
            reap()
    except KeyboardInterrupt:
        interrupted = True
        _stop(running, drain, reap)
    for seed in waiting:
        results[seed] = SeedResult(seed, "interrupted", error="not started")
    return [results[s] for s in seeds if s in results], interrupted


def _stop(running: dict[int, Any], drain, reap) -> None:
    """Let the children save and report: a terminal's Ctrl-C reached them already; otherwise
    (SIGTERM of the parent, ``kill -INT``) forward it; kill what still runs after a minute.
    A second Ctrl-C skips the waiting."""
    try:
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        while running and time.monotonic() < deadline:
            drain(0.1)
            reap()
        for proc in running.values():
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + KILL_AFTER_S
        while running and time.monotonic() < deadline:
            drain(0.1)
            reap()
    except KeyboardInterrupt:
        pass
    for proc in running.values():
        if proc.is_alive():
            proc.kill()
    for proc in running.values():
        proc.join()
    with suppress(KeyboardInterrupt):
        reap()


# -- the command --------------------------------------------------------------------------------
def train_command(
    recipe: str,
    budget: str,
    out: Path,
    seeds_text: str,
    resume: bool,
    jobs: int | None,
    threads: int | None,
    overrides: dict[str, Any],
    console,
    progress: Callable[[], Any],
) -> int:
    """What ``l2o train RECIPE --seeds ...`` does; returns the exit status (0: every seed
    finished; 1: a seed failed; 130: interrupted; 2: bad input, before anything ran)."""
    from rich.markup import escape

    from l2o.report import atomic_write_json
    from l2o.training import get_recipe
    from l2o.training.persistence import TRAIN_STATE

    try:
        seeds = parse_seeds(seeds_text)
        configs = {s: get_recipe(recipe).config(budget, seed=s, **overrides) for s in seeds}
    except ValueError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}")
        return 2
    first = configs[seeds[0]]
    if first.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            console.print("[bold red]error:[/] --device cuda: CUDA is not available; use cpu")
            return 2
    started = [s for s in seeds if (seed_dir(out, s) / TRAIN_STATE).exists()]
    if started and not resume:
        console.print(
            f"[bold red]error:[/] {out} already holds training runs of seeds "
            f"{', '.join(map(str, started))}; pass --resume to continue them, or choose "
            "another --out"
        )
        return 2
    cores = os.cpu_count() or 1
    jobs = max(1, min(jobs or min(len(seeds), cores), len(seeds)))
    threads = threads or max(1, cores // jobs)
    console.print(
        f"training [bold]{recipe}[/] ({first.model}) on {first.task}, budget {budget}, seeds "
        f"{', '.join(map(str, seeds))}: {jobs} at a time, {threads} thread"
        f"{'s' if threads != 1 else ''} each ({cores} cores) -> {out}/seed-S"
    )
    plain = not console.is_terminal
    every = max(1, first.num_epochs // 10)
    start = time.perf_counter()
    with progress() as bar:
        rows = {
            s: bar.add_task(f"seed {s}", total=configs[s].num_epochs, info="waiting") for s in seeds
        }
        best: dict[int, str] = {}

        def on_message(kind: str, seed: int, payload: dict[str, Any]) -> None:
            row = rows[seed]
            if kind == "start":
                note = f" (resuming at epoch {payload['epoch']})" if payload["epoch"] else ""
                bar.update(row, completed=payload["epoch"], info="started" + note)
                if plain:
                    console.print(f"seed {seed}: started{note}")
            elif kind == "event" and payload["type"] == "validation":
                if payload["improved"]:
                    best[seed] = f"{payload['score']:.4f}"
            elif kind == "event" and payload["type"] == "epoch":
                info = f"H {payload['horizon']} best val {best.get(seed, '-')}"
                bar.update(row, completed=payload["epoch"], info=info)
                if plain and payload["epoch"] % every == 0:
                    console.print(
                        f"seed {seed}: epoch {payload['epoch']}/{configs[seed].num_epochs} {info} "
                        f"[{payload['seconds']:.0f} s]"
                    )
            elif kind == "result":
                text = payload["status"] + (
                    f": {payload['error']}"
                    if payload.get("error")
                    else f", best {payload.get('best_score')} at epoch {payload.get('best_epoch')}"
                )
                bar.update(row, info=escape(text))
                console.print(f"seed {seed}: {escape(text)}")
                if payload.get("trace"):
                    console.print(payload["trace"], markup=False, highlight=False)

        results, interrupted = run_seeds(
            {s: c.to_dict() for s, c in configs.items()},
            out,
            resume=resume,
            jobs=jobs,
            threads=threads,
            on_message=on_message,
        )
    wall = time.perf_counter() - start
    summary = summarize(
        results, wall, recipe=recipe, budget=budget, task=first.task, jobs=jobs, threads=threads
    )
    atomic_write_json(Path(out) / SUMMARY, summary)
    median = summary["median_best_score"]
    console.print(
        f"{summary['finished']}/{len(seeds)} seeds finished in {wall:.0f} s; median best "
        f"validation score {median if median is None else f'{median:.4f}'}"
        + (f"; best: seed {summary['best_seed']} ({summary['best_checkpoint']})" if median else "")
        + f"; wrote {Path(out) / SUMMARY}"
    )
    if interrupted or any(r.status == "interrupted" for r in results):
        console.print(
            f"resume with: l2o train {recipe} --budget {budget} --seeds {seeds_text} --out {out} "
            "--resume"
        )
        return 130
    failed = [r.seed for r in results if r.status != "finished"]
    if failed:
        console.print(f"[red]seeds {', '.join(map(str, failed))} failed (see above)")
        return 1
    return 0
