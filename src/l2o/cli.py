"""The ``l2o`` command: tasks, evaluate, compare, train, reproduce, pretrained, demo.

Conventions (issues 15 and 16): tables go to stdout through :mod:`l2o.console` (aligned at a
terminal, one row per line in a pipe, ``--json`` for scripts); messages and progress go to stderr,
printed without markup so ``[min, max]`` survives; every failure is one or two lines naming the
problem and the fix, with exit status 2 and no traceback (``l2o --debug COMMAND`` shows it);
settings are checked before any work; an output folder is checked writable and locked
(``fcntl.flock``) so a second run into it stops at once; the long jobs choose their CPU threads
(:mod:`l2o.threads`) and say so.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import shlex
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from l2o.console import Col, env_flag, json_print, plain_print, print_table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: wraps at word boundaries, never cuts an option name
    help="l2o: train and evaluate learned optimizers (Chen et al., NeurIPS 2020).",
)
console = Console(stderr=True, soft_wrap=True)
#: Messages: no markup (square brackets are text), wrapped at word boundaries at a terminal only.
messages = Console(stderr=True, markup=False, highlight=False)

#: Commands that run long enough to set threads and the OpenMP wait policy for.
LONG_COMMANDS = ("train", "evaluate", "reproduce", "demo")
LOCK_NAME = ".l2o.lock"

_STATE: dict[str, Any] = {"debug": False, "stack": None}

JsonOpt = Annotated[bool, typer.Option("--json", help="print the data as JSON (for scripts)")]
WideOpt = Annotated[
    bool, typer.Option("--wide", "-w", help="every column on one line, however wide")
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="CPU threads (default: OMP_NUM_THREADS if set, else 1: the same results on every "
        "machine and no slowdown beside other jobs; on an otherwise idle machine N threads are "
        "faster, 1.5-1.7x with 2)",
    ),
]


def _say(message: str, style: str | None = None) -> None:
    """A message on stderr, as plain text (no markup)."""
    messages.print(message, style=style, soft_wrap=not messages.is_terminal)


def _fail(message: str, code: int = 2) -> None:
    messages.print(
        Text.assemble(("error: ", "bold red"), message), soft_wrap=not messages.is_terminal
    )
    raise typer.Exit(code)


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="show the full traceback when a command fails")
    ] = False,
) -> None:
    """l2o: train and evaluate learned optimizers (Chen et al., NeurIPS 2020)."""
    _STATE["debug"] = debug or env_flag("L2O_DEBUG")


def _describe(err: BaseException) -> str:
    """One or two lines for a failure: the library's errors already name the problem and the fix;
    anything else is unexpected and says how to see the traceback."""
    from l2o.checkpoint import CheckpointError
    from l2o.data import DataError

    text = str(err).strip() or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None:
        text = f"{err.filename}: {err.strerror or text}"
    expected = (ValueError, FileNotFoundError, OSError, CheckpointError, DataError)
    if isinstance(err, MemoryError):
        return "out of memory; run fewer seeds (--seeds) or a smaller task"
    if isinstance(err, expected) and not isinstance(err, (KeyError, IndexError)):
        return text
    return (
        f"{type(err).__name__}: {text}\n"
        "(unexpected; `l2o --debug COMMAND ...` shows the traceback; please report it)"
    )


def _guarded(command):
    """Run a command so that any failure is a short message with exit status 2 (``--debug``: the
    traceback), and release what the command held (locks on output folders) when it ends."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        with contextlib.ExitStack() as stack:
            _STATE["stack"] = stack
            try:
                return command(*args, **kwargs)
            except (typer.Exit, typer.Abort, KeyboardInterrupt):
                raise
            except BrokenPipeError:  # the reader went away (`l2o ... | head`): end quietly
                with contextlib.suppress(OSError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise typer.Exit(0) from None
            except Exception as err:
                if type(err).__module__.startswith("typer") or _STATE["debug"]:
                    raise
                _fail(_describe(err))
            finally:
                _STATE["stack"] = None

    return wrapper


# -- checks made before any work ----------------------------------------------------------------
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


#: Task options whose value is one of a few words.
OPTION_CHOICES = {"sampling": ("replacement", "epoch")}


@functools.cache
def settable_task_options(task: str) -> dict[str, Any]:
    """``{key: default}`` of the options ``--task-option`` may set on ``task`` (the options its
    factory does not fix itself, e.g. not ``stride`` of the conv nets)."""
    from l2o.tasks import TASKS

    defaults = TASKS[task]().options()
    settable = {}
    for key, value in defaults.items():
        try:
            TASKS[task](**{key: value})
        except TypeError:
            continue
        settable[key] = value
    return settable


def _check_task_options(task: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate ``options`` for ``task`` by name, type and range (before any data is loaded)."""
    from l2o.tasks import TASKS

    if task not in TASKS:
        _fail(f"unknown task {task!r}; choose one of: {', '.join(TASKS)} (`l2o tasks`)")
    valid = settable_task_options(task)
    keys = ", ".join(valid) or "none"
    for key, value in options.items():
        if key not in valid:
            _fail(f"--task-option {key}: {task} has no such option; valid keys: {keys}")
        default, what = valid[key], f"--task-option {key}={json.dumps(value)}"
        if key in OPTION_CHOICES:
            if value not in OPTION_CHOICES[key]:
                _fail(f"{what}: choose one of {', '.join(OPTION_CHOICES[key])}")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                _fail(f"{what}: expected true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(f"{what}: expected a whole number of at least 1 (default {default})")
        elif isinstance(default, float):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                _fail(f"{what}: expected a finite number >= 0 (default {default})")
            options[key] = float(value)
    return options


def _check_lr(rule: str, lr: float | None) -> None:
    """``--lr`` is the learning rate of an analytic rule: finite and positive. A learned rule sets
    its own step size, so ``--lr`` with one is an error rather than silently ignored."""
    from l2o.rules.analytic import ANALYTIC_RULES

    if lr is None:
        return
    if not math.isfinite(lr) or lr <= 0:
        _fail(f"--lr must be a finite number > 0, got {lr:g}")
    if rule not in ANALYTIC_RULES:
        _fail(
            f"--lr applies to the analytic rules ({', '.join(ANALYTIC_RULES)}) only; the learned "
            f"rule {rule!r} sets its own step size: drop --lr"
        )


def _check_device(device: str) -> None:
    """The device exists here (``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        _fail(f"--device {device!r} is not a device name; use cpu or cuda (cuda:N)")
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            _fail(
                f"--device {device}: no CUDA device is available on this machine; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            _fail(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
        return
    if dev.type == "mps" and torch.backends.mps.is_available():
        return
    _fail(f"--device {device}: not available here; use --device cpu or cuda")


def _check_card(spec: str) -> None:
    """A checkpoint path given as RULE: its card must be an l2o card (a JSON object with a model
    name and hyperparameters), not merely valid JSON."""
    path = Path(spec)
    if spec.startswith("paper:") or not path.is_file():
        return
    from l2o.checkpoint import read_card

    card = read_card(path)  # refuses a card that is not an object naming the model
    if not isinstance(card.get("hyperparameters"), (dict, type(None))):
        _fail(
            f"{path} is not a usable l2o checkpoint: its card's 'hyperparameters' is not an "
            "object; re-create it with `l2o train`"
        )


def available_memory(device: str) -> int | None:
    """Bytes this process can still allocate on ``device`` (CPU: MemAvailable and the cgroup's
    limit; CUDA: free device memory); ``None`` when unknown."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit.isdigit():
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def population_bytes_per_seed(rule, task, steps: int) -> int:
    """A lower estimate of the memory one seed of an evaluation needs: the parameters, gradient
    and the rule's per-coordinate state (counted on one instance), a minibatch with the
    activations it makes (counted as 3 copies of the batch), and the loss record (float64, kept
    twice while it is saved)."""
    from torch.utils._pytree import tree_flatten

    from l2o.evaluation import init_rule_state

    x = task.init([0])
    coords = x.numel()
    leaves, _ = tree_flatten(init_rule_state(rule, x, task, [0]))
    state = sum(t.numel() for t in leaves if isinstance(t, torch.Tensor))
    if state < 2 * coords:  # analytic rules keep their moments inside a torch.optim object
        state = 4 * coords
    batch_leaves, _ = tree_flatten(task.stream([0]).next())
    batch = sum(t.numel() for t in batch_leaves if isinstance(t, torch.Tensor))
    return 4 * (3 * coords + state + 3 * batch) + 16 * steps


def _check_memory(rule, task, steps: int, seeds: int, device: str) -> None:
    """Refuse a population that cannot fit (issue 15), naming the largest that can."""
    available = available_memory(device)
    if available is None:
        return
    per_seed = population_bytes_per_seed(rule, task, steps)
    usable = int(available * 0.8)
    if per_seed * seeds > usable:
        fits = usable // per_seed
        _fail(
            f"--seeds {seeds} x --steps {steps} needs at least {per_seed * seeds / 2**30:.1f} GiB "
            f"on {device} ({per_seed / 2**20:.2f} MiB per seed); {available / 2**30:.1f} GiB is "
            f"available. The largest population that fits is --seeds {fits}"
            + ("" if fits else " (none: use fewer --steps)")
            + "; run the other seeds as separate evaluations"
        )


def _remove_if_unused(out: Path) -> None:
    """Remove ``out`` if it holds nothing but this command's lock file."""
    with contextlib.suppress(OSError):
        if {p.name for p in out.iterdir()} <= {LOCK_NAME}:
            (out / LOCK_NAME).unlink(missing_ok=True)
            out.rmdir()


def _hold_out(out: Path, done: Path | None = None, force: bool = False) -> None:
    """Claim the output folder for this command: create it and check it is writable, lock it
    (a second run into it stops at once; the lock goes with the process, even on kill -9), and
    refuse to overwrite a finished result (``done``) without ``--force``."""
    out = Path(out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".l2o-write-test-"):
            pass
        handle = open(out / LOCK_NAME, "a+")  # noqa: SIM115 (held until the command ends)
    except OSError as err:
        _fail(
            f"cannot write to the output folder {out} ({err.strerror or err}); choose a "
            "writable folder with --out DIR"
        )
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        _fail(
            f"another l2o run (pid {holder}) is writing to {out}; wait for it to finish, or "
            "choose another --out"
        )
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    stack = _STATE["stack"]
    if stack is not None:
        if created:  # runs last: a command that failed before writing anything leaves no folder
            stack.callback(_remove_if_unused, out)
        stack.callback(handle.close)  # closing drops the lock
    if done is not None and done.exists() and not force:
        _fail(
            f"{out} already holds a finished result ({done.name}); pass --force to overwrite "
            "it, or choose another --out"
        )


def _threads(threads: int | None) -> None:
    """Set this job's CPU threads (:mod:`l2o.threads`) and say which."""
    from l2o.threads import apply_threads

    _say(apply_threads(threads))


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}", markup=False, style="bold"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def run_evaluation(
    rule_spec,
    task_name,
    steps,
    seeds,
    lr,
    device,
    task_options,
    out,
    label=None,
    compile=True,
    threads=None,
):
    """Evaluate one rule on one task with a progress bar; write the result files into ``out``.
    The settings are checked first; then the CPU threads are set (``threads``) and printed."""
    from l2o.evaluation import evaluate
    from l2o.registry import load_rule
    from l2o.report import save_eval
    from l2o.tasks import get_task

    _check_device(device)
    _check_card(rule_spec)
    try:
        task = get_task(task_name, **task_options)
        rule = load_rule(rule_spec, lr=lr)
    except TypeError as err:  # a card's hyperparameters the model does not take
        _fail(
            f"{rule_spec}: cannot build the rule ({err}); re-create the checkpoint with l2o train"
        )
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    _check_memory(rule, task, steps, seeds, device)
    _threads(threads)
    seed_list = list(range(seeds))
    with _progress() as bar:
        job = bar.add_task(f"{label or rule_spec} on {task_name}", total=steps, info="")

        every = max(50, steps // 10)

        def on_step(t, losses):
            mean = float(losses.mean())
            info = f"ln loss {math.log(mean):+.3f}" if math.isfinite(mean) and mean > 0 else "nan"
            bar.update(job, completed=t, info=info)
            if not console.is_terminal and (t % every == 0 or t == steps):
                _say(f"{label or rule_spec} on {task_name}: step {t}/{steps}, {info}")

        result = evaluate(
            rule, task, steps, seed_list, device=device, callback=on_step, compile=compile
        )
    summary = save_eval(result, Path(out), label=label)
    if result.interrupted:
        _say(f"interrupted after {result.steps} steps; partial results in {out}", style="yellow")
        raise typer.Exit(130)
    return summary


# -- commands ---------------------------------------------------------------------------------
@app.command(short_help="List the optimizee tasks and their options.")
@_guarded
def tasks(as_json: JsonOpt = False, wide: WideOpt = False) -> None:
    """List the optimizee tasks: parameter count, description, and the keys --task-option sets."""
    from l2o.tasks import TASKS

    rows = []
    for name, factory in TASKS.items():
        task = factory()
        rows.append(
            {
                "task": name,
                "parameters": task.num_params,
                "description": task.description,
                "options": settable_task_options(name),
            }
        )
    cols = [
        Col("task", "task"),
        Col("parameters", "parameters", right=True, fmt=lambda v: f"{v:,}"),
        Col("description", "description", long=True),
        Col(
            "options",
            "--task-option keys",
            long=True,
            fmt=lambda v: ", ".join(f"{k}={json.dumps(x)}" for k, x in v.items()),
        ),
    ]
    print_table(rows, cols, as_json=as_json, wide=wide)


def default_eval_out(rule, task, steps, seeds, lr, options, device) -> Path:
    """``runs/eval/<rule>-<task>-<seeds>x<steps>[-lr..][-options][-device]``: every setting that
    changes the result is in the name, so a second evaluation never lands on the first."""
    safe = rule.replace(":", "-").replace("/", "_").replace("\\", "_").strip("._-") or "rule"
    name = f"{safe}-{task}-{seeds}x{steps}"
    if lr is not None:
        name += f"-lr{lr:g}"
    for key, value in sorted(options.items()):
        text = json.dumps(value).replace(" ", "").strip('"')
        name += f"-{key}{text}"
    if device != "cpu":
        name += f"-{device.replace(':', '')}"
    return Path("runs") / "eval" / name


def _summary_rows(summary: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    f, at = summary["final_ln_loss"], summary.get("ln_mean_loss_at", {})

    def num(v):
        return "n/a" if v is None else f"{v:.3f}"

    return [
        {"what": "rule", "value": summary.get("label") or summary["rule"]},
        {"what": "task", "value": f"{summary['task']} ({summary['split']} split)"},
        {"what": "run", "value": f"{len(summary['seeds'])} seeds x {summary['steps']} steps"},
        {
            "what": "final ln loss",
            "value": f"{num(f['mean'])} [min {num(f['min'])}, max {num(f['max'])}]",
        },
        {
            "what": "ln mean loss at",
            "value": ", ".join(f"@{k} {num(v)}" for k, v in at.items()) or "-",
        },
        {
            "what": "diverged seeds",
            "value": ", ".join(map(str, summary["diverged_seeds"])) or "none",
        },
        {
            "what": "speed",
            "value": f"{summary.get('steps_per_second')} steps/s ({summary.get('seconds')} s)",
        },
        {"what": "files", "value": str(out)},
    ]


@app.command("evaluate", short_help="Run a rule on a task over many seeds; write a summary.")
@_guarded
def evaluate_cmd(
    rule: Annotated[
        str,
        typer.Argument(help="adam | rmsprop | sgd | nag | paper:<name> | bundled name | path"),
    ],
    task: Annotated[str, typer.Option(help="task name (see `l2o tasks`)")] = "mlp-orig",
    steps: Annotated[int, typer.Option(min=1, help="optimizee steps")] = 10_000,
    seeds: Annotated[
        int, typer.Option(min=1, help="number of seeds (0..S-1), run as one population")
    ] = 10,
    lr: Annotated[
        float | None,
        typer.Option(help="learning rate of an analytic rule (an error with a learned rule)"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="output directory (default: under runs/eval, named by every setting)"),
    ] = None,
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
    force: Annotated[
        bool, typer.Option("--force", help="overwrite a finished evaluation in --out")
    ] = False,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run RULE on TASK for STEPS steps over SEEDS seeds, as one batched population.

    Writes summary.json, losses.npz and curves.png into --out. The default --out names every
    setting that changes the result; an existing finished result is kept unless --force.
    """
    options = _check_task_options(task, _parse_options(task_option))
    _check_lr(rule, lr)
    _check_device(device)
    label = label or (rule if lr is None else f"{rule} (lr {lr:g})")
    out = out or default_eval_out(rule, task, steps, seeds, lr, options, device)
    _hold_out(out, done=Path(out) / "summary.json", force=force)
    summary = run_evaluation(
        rule, task, steps, seeds, lr, device, options, out, label, compile_step, threads
    )
    if as_json:
        json_print(summary)
    else:
        print_table(_summary_rows(summary, out), [Col("what", "result"), Col("value", "")])


def _load_run(run: Path):
    """``(summary, losses)`` of an evaluation folder, checked to be one."""
    from l2o.report import load_eval

    summary, losses = load_eval(run)
    need = {"rule": str, "task": str, "steps": int, "seeds": list, "final_ln_loss": dict}
    if not isinstance(summary, dict):
        _fail(f"{run}/summary.json is not an l2o evaluation summary (a JSON object); re-run it")
    for key, kind in need.items():
        if not isinstance(summary.get(key), kind):
            _fail(
                f"{run}/summary.json is not an l2o evaluation summary ({key!r} is missing or "
                "not a " + kind.__name__ + "); re-run `l2o evaluate ... --out " + f"{run}`"
            )
    summary.setdefault("diverged_seeds", [])
    return summary, losses


@app.command(short_help="Lay several evaluations on one figure and one table.")
@_guarded
def compare(
    runs: Annotated[list[Path], typer.Argument(help="evaluation directories")],
    out: Annotated[
        Path, typer.Option(help="output directory for comparison.png and comparison.md")
    ] = Path("runs/compare"),
    as_json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """Lay several evaluations on one figure (comparison.png) and one markdown table
    (comparison.md), and print the table."""
    from l2o.report import Curve, atomic_write_bytes, markdown_table, plot_curves

    loaded = [_load_run(run) for run in runs]
    _hold_out(out)
    tasks_seen = sorted({s["task"] for s, _ in loaded})
    title = " / ".join(tasks_seen)
    curves = [
        Curve(s.get("label") or s["rule"] + (f" ({s['task']})" if len(tasks_seen) > 1 else ""), ls)
        for s, ls in loaded
    ]
    plot_curves(curves, Path(out) / "comparison.png", title)
    table = markdown_table([s for s, _ in loaded])
    atomic_write_bytes(Path(out) / "comparison.md", f"# Comparison: {title}\n\n{table}".encode())
    rows = []
    for (s, _), run in zip(loaded, runs, strict=True):
        f = s["final_ln_loss"]
        rows.append(
            {
                "optimizer": s.get("label") or s["rule"],
                "task": s["task"],
                "seeds": len(s["seeds"]),
                "steps": s["steps"],
                "final_ln_loss": f.get("mean"),
                "min": f.get("min"),
                "max": f.get("max"),
                "ln_loss_at_1000": s.get("ln_mean_loss_at", {}).get("1000"),
                "diverged": len(s["diverged_seeds"]),
                "steps_per_second": s.get("steps_per_second"),
                "dir": str(run),
            }
        )

    def num(v):
        return "n/a" if v is None else f"{v:.3f}"

    cols = [
        Col("optimizer", "optimizer"),
        Col("task", "task"),
        Col("seeds", "seeds", right=True),
        Col("steps", "steps", right=True),
        Col("final_ln_loss", "final ln loss", right=True, fmt=num),
        Col("min", "[min", right=True, fmt=lambda v: "[" + num(v)),
        Col("max", "max]", right=True, fmt=lambda v: num(v) + "]"),
        Col("diverged", "diverged", right=True),
        Col("ln_loss_at_1000", "@1000", long=True, fmt=num),
        Col("steps_per_second", "steps/s", long=True),
    ]
    print_table(rows, cols, as_json=as_json, wide=wide)
    _say(f"wrote {out}/comparison.png and {out}/comparison.md")


def _ratios(ratios) -> str:
    values = [f"{x:g}" for x in ratios]
    return values[0] if len(set(values)) == 1 else f"{values[0]}..{values[-1]}"


def _recipe_rows(budget: str = "cpu") -> list[dict[str, Any]]:
    from l2o.training import RECIPES

    rows = []
    for r in RECIPES.values():
        paper = r.config("paper")
        rows.append(
            {
                "recipe": r.name,
                "model": paper.model,
                "horizon": (
                    f"CL {paper.curriculum[0]}-{paper.curriculum[-1]}, "
                    f"{len(paper.curriculum)} stages"
                    if paper.curriculum
                    else str(paper.horizon)
                ),
                "imitation": (
                    f"{'/'.join(paper.teachers)} {_ratios(paper.imitation_ratios)}"
                    if paper.imitation_ratios
                    else "-"
                ),
                "epochs": {b: r.budgets[b][0] for b in ("demo", "cpu", "paper")},
                "description": r.description,
                "deviations": "; ".join(r.deviations(budget)) or "none",
            }
        )
    return rows


def default_train_out(recipe, budget, task, seed, epochs, evaluation_period) -> Path:
    """``runs/<recipe>-<budget>`` plus every setting that differs from the recipe's defaults."""
    name = f"{recipe}-{budget}"
    if task != "mlp-orig":
        name += f"-{task}"
    if seed != 0:
        name += f"-seed{seed}"
    if epochs is not None:
        name += f"-{epochs}epochs"
    if evaluation_period is not None:
        name += f"-val{evaluation_period}"
    return Path("runs") / name


@app.command(short_help="Meta-train a learned optimizer with a named recipe.")
@_guarded
def train(
    recipe: Annotated[str | None, typer.Argument(help="recipe name (see --list)")] = None,
    task: Annotated[str, typer.Option(help="training task")] = "mlp-orig",
    budget: Annotated[str, typer.Option(help="demo | cpu | paper")] = "cpu",
    out: Annotated[
        Path | None,
        typer.Option(help="output directory (default: runs/RECIPE-BUDGET plus changed settings)"),
    ] = None,
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
    shard_size: Annotated[
        int | None,
        typer.Option(min=1, help="instances per shard of a meta-step (data parallelism)"),
    ] = None,
    nproc: Annotated[
        int, typer.Option(min=1, help="local processes of data-parallel meta-training")
    ] = 1,
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
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """Meta-train a learned optimizer with a named RECIPE at a budget (demo, cpu or paper).

    `l2o train --list` lists the recipes with their settings. A run writes its checkpoints and
    metrics into --out and resumes with --resume. --nproc N trains data-parallel on N local
    processes (docs/distributed.md)."""
    from l2o.training import Trainer, TrainingError, distributed, get_recipe

    if list_recipes or recipe is None:
        cols = [
            Col("recipe", "recipe"),
            Col("model", "model"),
            Col("horizon", "horizon (paper)"),
            Col("imitation", "imitation (p)"),
            Col(
                "epochs",
                "epochs demo/cpu/paper",
                fmt=lambda e: f"{e['demo']}/{e['cpu']}/{e['paper']}",
            ),
            Col("description", "description", long=True),
            Col("deviations", f"differs from the paper at --budget {budget}", long=True),
        ]
        print_table(_recipe_rows(budget), cols, as_json=as_json, wide=wide)
        if recipe is None and not list_recipes:
            raise typer.Exit(2)
        return
    _check_device(device)
    overrides = dict(
        task=task,
        device=device,
        compile=compile_step,
        num_epochs=epochs,
        evaluation_period=evaluation_period,
        instances=instances,
        shard_size=shard_size,
    )
    if seeds is not None:  # several trainings, one process each (l2o.multiseed)
        from l2o.multiseed import train_command

        if seed != 0:
            _fail("--seed and --seeds do not go together; list the seeds, e.g. --seeds 4,5,6")
        if nproc > 1:
            _fail("--seeds and --nproc do not go together; train the seeds one --nproc run each")
        out = out or default_train_out(recipe, budget, task, seed, epochs, evaluation_period)
        _hold_out(out)
        args = (recipe, budget, out, seeds, resume, jobs, threads, overrides, console, _progress)
        raise typer.Exit(train_command(*args))
    try:
        config = get_recipe(recipe).config(budget, seed=seed, **overrides)
        out = out or default_train_out(recipe, budget, task, seed, epochs, evaluation_period)
        again = f"continue from the last saved epoch with the same command and --resume ({out})"
        if nproc > 1:  # start the ranks (torch's elastic agent), each running this command
            if distributed.started_by_torchrun():
                _fail("--nproc starts its own processes: under torchrun, leave it out")
            distributed.resolve_shard_size(config.meta.shard_size, config.instances, nproc)
            args = ["train", recipe, "--task", task, "--budget", budget, "--out", str(out)]
            args += ["--seed", str(seed), "--device", device]
            for flag, value in (
                ("--epochs", epochs),
                ("--evaluation-period", evaluation_period),
                ("--instances", instances),
                ("--shard-size", shard_size),
            ):
                args += [flag, str(value)] if value is not None else []
            args += (
                [] if compile_step is None else ["--compile" if compile_step else "--no-compile"]
            )
            args += ["--resume"] if resume else []
            try:
                distributed.launch(args, nproc, device)
            except distributed.RankFailure as err:
                _fail(f"{err}; {again}", code=1)
            return
        ranks = distributed.join_from_environment(device)
        if ranks.main:  # rank 0 owns the folder (it alone writes there)
            _hold_out(out)
        trainer = Trainer(config, out, resume=resume)
    except (ValueError, TrainingError) as err:
        _fail(str(err))
    _threads(threads)
    if not ranks.main:  # rank 0 reports; the others only train
        try:
            trainer.run()
        except distributed.RankFailure as err:
            _fail(f"{err}; {again}", code=1)
        distributed.end_rank(0)
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
    _say(
        f"training {recipe} ({config.model}) on {task}, budget {budget}: {horizons}, "
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
                _say(
                    f"epoch {event['epoch']}: curriculum stage {event['stage']}: training horizon "
                    f"{event['horizon']}, validation on {event['validation_horizon']} steps; "
                    f"score to beat {event['baseline']:.4f}"
                )
                return
            if event["type"] == "end":
                _say(f"epoch {event['epoch']}: curriculum ended: {event['reason']}")
                return
            if event["type"] == "validation":
                last["val"] = f"{event['score']:.3f}" + (" *" if event["improved"] else "")
                if plain or "stage" in event:
                    best = event.get("best")
                    _say(
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
                _say(
                    f"epoch {event['epoch']}/{config.num_epochs} {info} "
                    f"[{event['seconds']:.0f} s, ETA {eta:.0f} s]"
                )

        try:
            summary = trainer.run(on_event)
        except distributed.RankFailure as err:
            _fail(f"{err}; {again}", code=1)
    distributed.leave()
    state = "interrupted" if summary.interrupted else "finished"
    _say(
        f"{state} after {summary.epochs_done} epochs in {summary.seconds:.0f} s; best validation "
        f"score {summary.best_score} at epoch {summary.best_epoch}; skipped meta-steps "
        f"{summary.skipped_meta_steps}; best checkpoint: {summary.best_path}"
    )
    if "stage" in summary.extra:
        _say(
            f"curriculum: stage {summary.extra['stage']} (horizon {summary.extra['horizon']}); "
            + (
                summary.extra["curriculum_end"]
                or (
                    "interrupted in this stage"
                    if summary.interrupted
                    else "stopped at the epoch limit"
                )
            )
        )
    if "imitation_epochs" in summary.extra:
        _say(f"imitation epochs: {summary.extra['imitation_epochs']}")
    if summary.interrupted:
        _say(f"resume with: l2o train {recipe} --budget {budget} --out {out} --resume")
    else:
        _say(f"evaluate with: l2o evaluate {summary.best_path} --task {task}")
    code = 130 if summary.interrupted else 0
    if ranks.world > 1:  # a torchrun rank: everything is saved, skip the gloo teardown
        distributed.end_rank(code)
    if code:
        raise typer.Exit(code)


def _plan_rows(plan) -> list[dict[str, Any]]:
    return [
        {
            "job": key,
            "kind": job.kind,
            "state": "done" if job.done() else "to run",
            "needs": list(job.deps),
            "out": str(job.out),
        }
        for key, job in plan.jobs.items()
    ]


@app.command(short_help="Reproduce a figure of the paper end to end (resumable).")
@_guarded
def reproduce(
    figure: Annotated[str, typer.Argument(help="fig2 | fig3 | fig5 | fig6 | techniques | all")],
    budget: Annotated[str, typer.Option(help="demo | cpu | paper")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="output directory")] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="evaluation seeds")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="evaluation steps")] = None,
    train_seeds: Annotated[
        int,
        typer.Option(
            min=1, help="training seeds per meta-trained optimizer (the spread over them is shown)"
        ),
    ] = 1,
    jobs: Annotated[int, typer.Option(min=1, help="jobs run in parallel")] = 2,
    weights: Annotated[
        str, typer.Option(help="ours (meta-train) | paper (the authors' weights where published)")
    ] = "ours",
    tasks: Annotated[
        str | None, typer.Option(help="only these of the figure's tasks, comma-separated")
    ] = None,
    recipes: Annotated[
        str | None,
        typer.Option(help="only the learned curves of these recipes, comma-separated"),
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
    results_first: Annotated[
        bool,
        typer.Option(
            "--results-first",
            help="evaluate finished trainings before starting new ones (for a machine held for "
            "a few hours); default: trainings first, the shortest total time",
        ),
    ] = False,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """Reproduce a figure of the paper: meta-train what it needs on mlp-orig, evaluate every
    optimizer on the figure's tasks beside grid-tuned Adam, RMSprop, SGD and NAG, and write the
    figure (PNG) and a markdown report. Re-running resumes: finished jobs are kept.

    --threads is the total for all --jobs (each job gets an equal share)."""
    from l2o.reproduce.runner import check_backend, describe_plan, make_plan, run_plan, write_report

    out = out or Path("runs") / f"reproduce-{budget}"
    try:
        check_backend(backend)
    except ValueError as err:
        _fail(str(err))
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
            train_seeds=train_seeds,
            recipes=recipes.split(",") if recipes else None,
        )
    except ValueError as err:
        _fail(str(err))
    lines = describe_plan(plan, jobs, backend)
    if plan_only:
        cols = [
            Col("job", "job"),
            Col("kind", "kind"),
            Col("state", "state"),
            Col("needs", "needs", long=True, fmt=lambda v: ", ".join(v) or "-"),
        ]
        if as_json:
            json_print({"summary": lines, "jobs": _plan_rows(plan)})
            return
        for line in lines:
            plain_print(line, stream=sys.stdout)
        print_table(_plan_rows(plan), cols, wide=wide)
        return
    for line in lines:
        _say(line)
    _hold_out(out)
    _threads(threads)
    _check_data(plan, out)
    start = time.perf_counter()
    interrupted = False
    options = dict(
        backend=backend,
        device=device,
        address=address,
        max_retries=max_retries,
        order="results" if results_first else "trainings",
    )
    try:
        statuses = run_plan(plan, jobs=jobs, log=_say, **options)
    except KeyboardInterrupt:
        interrupted, statuses = True, {}
    except ValueError as err:  # the backend could not start (e.g. no Ray cluster at --address)
        _fail(str(err))
    paths = write_report(plan, statuses, time.perf_counter() - start)
    for path in paths:
        _say(f"wrote {path}")
    if interrupted:
        _say(
            f"interrupted: finished jobs are kept; run the same command to resume "
            f"({_same_command(out)})",
            style="yellow",
        )
        raise typer.Exit(130)
    failed = [k for k, v in statuses.items() if v["status"] not in ("done", "done (earlier)")]
    if failed:
        _say(f"{len(failed)} jobs did not finish: {', '.join(failed)}", style="red")
        raise typer.Exit(1)


def _same_command(out: Path) -> str:
    """This invocation's command line, with ``--out`` made explicit (the default depends on
    other options), for a message that says how to resume it."""
    args = sys.argv[1:]
    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args = [*args, "--out", str(out)]
    return "l2o " + " ".join(shlex.quote(a) for a in args)


def _check_data(plan, out: Path) -> None:
    """Stop before anything runs if a data set the plan needs is missing or corrupt."""
    from l2o.data import DataError
    from l2o.reproduce.runner import check_data

    try:
        check_data(plan)
    except DataError as err:
        _fail(f"{err}\nNothing has run; the jobs already done in {out} are kept.")


def _fmt2(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


PRETRAINED_NOTES = (
    "here: final ln loss on TASK in this package's harness, mean over seeds and [min, max] (per "
    "seed: ln of the mean loss over the last 100 steps; lower is better); paper:* as measured in "
    "docs/results.md, ours from the checkpoint's card. run: seeds x steps of that measurement. "
    "paper: the paper's value at step 10,000 (docs/method.md 7) of the figure curve the file was "
    "published for (ours: the curve of the same recipe). Adam: Adam in the same harness "
    "(paper:* rows: lr 0.01, 10 seeds x 10,000 steps; ours: the card's Adam run, same size). "
    "'not measured': no run yet; 'diverged': every seed diverged.",
)


def _pretrained_rows(task: str) -> list[dict[str, Any]]:
    from l2o.bundled import bundled_cards
    from l2o.measured import ADAM_MLP_ORIG, PAPER_WEIGHTS_MEASURED
    from l2o.reproduce.paper import paper_value_of_weights
    from l2o.rules.paper import PAPER_CHECKPOINTS

    rows = []
    for name, card in bundled_cards().items():
        cell = (card.get("evaluation") or {}).get(task) or {}
        adam = cell.get("adam") or {}
        rows.append(
            {
                "name": name,
                "model": card.get("model", "?"),
                "trained": f"ours ({card.get('budget')})",
                "measured": bool(cell),
                "here": cell.get("final_ln_loss"),
                "min": cell.get("final_ln_loss_min"),
                "max": cell.get("final_ln_loss_max"),
                "seeds": cell.get("seeds"),
                "steps": cell.get("steps"),
                "paper": paper_value_of_weights(f"paper:{name}", task),
                "adam": adam.get("final_ln_loss"),
            }
        )
    for name, (kind, _file) in PAPER_CHECKPOINTS.items():
        m = PAPER_WEIGHTS_MEASURED.get(name, {}).get(task)
        adam = ADAM_MLP_ORIG if task == "mlp-orig" and m and m.steps == 10000 else None
        rows.append(
            {
                "name": name,
                "model": kind,
                "trained": "the authors",
                "measured": m is not None,
                "here": m.mean if m else None,
                "min": m.min if m else None,
                "max": m.max if m else None,
                "seeds": m.seeds if m else None,
                "steps": m.steps if m else None,
                "paper": paper_value_of_weights(name, task),
                "adam": adam.mean if adam else None,
            }
        )
    return rows


def _here(row: dict[str, Any]) -> str:
    if not row["measured"]:
        return "not measured"
    return "diverged" if row["here"] is None else f"{row['here']:.2f}"


def _range(row: dict[str, Any]) -> str:
    return "-" if row["here"] is None else f"[{_fmt2(row['min'])}, {_fmt2(row['max'])}]"


def _run(row: dict[str, Any]) -> str:
    if not row["seeds"]:
        return "-"
    steps = row["steps"]
    return f"{row['seeds']}x{steps // 1000}k" if steps % 1000 == 0 else f"{row['seeds']}x{steps}"


@app.command(short_help="List the optimizers that load by name, with measured values.")
@_guarded
def pretrained(
    task: Annotated[str, typer.Option(help="the task whose values are shown")] = "mlp-orig",
    as_json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """List the optimizers that load by name: ours (bundled) and the paper's own trained weights
    (paper:*), each with the value it reaches in this package's harness beside the paper's."""
    from l2o.rules.paper import paper_checkpoint_dir
    from l2o.tasks import TASKS

    if task not in TASKS:
        _fail(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    rows = []
    for row in _pretrained_rows(task):
        rows.append(
            {**row, "task": task, "here_text": _here(row), "range": _range(row), "run": _run(row)}
        )
    cols = [
        Col("name", "name"),
        Col("model", "model", long=True),
        Col("trained", "trained by"),
        Col("here_text", f"here ({task})", right=True),
        Col("range", "[min, max]", long=True),
        Col("run", "run"),
        Col("paper", "paper", right=True, fmt=_fmt2),
        Col("adam", "Adam", right=True, fmt=_fmt2),
    ]
    notes = [
        PRETRAINED_NOTES[0].replace("TASK", task),
        f"paper:* are the trained weights of Chen et al. (NeurIPS 2020), "
        f"VITA-Group/L2O-Training-Techniques, MIT licence, in {paper_checkpoint_dir()}. "
        "`l2o evaluate NAME --task TASK` runs any of them; --task here shows another task.",
    ]
    json_rows = [{k: v for k, v in r.items() if k not in ("here_text", "range")} for r in rows]
    if as_json:
        print_table(json_rows, cols, as_json=True, notes=notes)
        return
    print_table(rows, cols, wide=wide, notes=notes)


@app.command(short_help="The main job of `make demo`: train, evaluate, compare.")
@_guarded
def demo(
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/demo"),
    steps: Annotated[int, typer.Option(min=1, help="evaluation steps")] = 2000,
    seeds: Annotated[int, typer.Option(min=1, help="evaluation seeds")] = 3,
    jobs: Annotated[int, typer.Option(min=1, help="jobs run in parallel")] = 2,
    threads: ThreadsOpt = None,
) -> None:
    """The main job: meta-train L2O-DM with and without the paper's curriculum + imitation, and
    RNNprop-CL-IL (demo budget, in parallel), evaluate them beside grid-tuned Adam on mlp-orig
    and mlp-relu, and write the figure and report. Re-running resumes what is done."""
    from l2o.io import atomic_write_text
    from l2o.reproduce.paper import DEMO
    from l2o.reproduce.runner import describe_plan, make_plan, run_plan, write_report

    plan = make_plan([DEMO], "demo", out, steps=steps, seeds=seeds)
    _hold_out(out)
    _threads(threads)
    for line in describe_plan(plan, jobs):
        _say(line)
    _check_data(plan, out)
    start = time.perf_counter()
    try:
        statuses = run_plan(plan, jobs=jobs, log=_say)
    except KeyboardInterrupt:
        write_report(plan, {}, time.perf_counter() - start)
        _say("interrupted: run `make demo` again to resume", style="yellow")
        raise typer.Exit(130) from None
    written = write_report(plan, statuses, time.perf_counter() - start)
    verdict = demo_verdict(out)
    report = out / "report.md"
    atomic_write_text(report, report.read_text() + "\n## Verdict\n\n" + verdict + "\n")
    plain_print(written.tables[DEMO.name], stream=sys.stdout, wrap=False)
    _say(verdict, style="bold")
    for path in written.paths:
        _say(f"wrote {path}")
    failed = [k for k, v in statuses.items() if v["status"] not in ("done", "done (earlier)")]
    if failed:
        _say(f"{len(failed)} jobs did not finish: {', '.join(failed)}", style="red")
        raise typer.Exit(1)


def demo_verdict(out: Path) -> str:
    """The demo's two answers, task by task, in words: does L2O-DM-CL-IL beat L2O-DM (the
    paper's claim), and does the best optimizer the demo meta-trained beat grid-tuned Adam (and
    by how much it wins or falls short)."""
    from l2o.reproduce.paper import DEMO, DM, DM_CL_IL
    from l2o.reproduce.runner import Plan

    def final(label: str, task: str) -> tuple[float | None, dict[str, Any]]:
        path = Path(out) / Plan.eval_key(label, task) / "summary.json"
        if not path.exists():
            return None, {}
        summary = json.loads(path.read_text())
        return summary["final_ln_loss"]["mean"], summary

    claims, against_adam = [], []
    for task in DEMO.tasks:
        plain, both = final(DM.label, task)[0], final(DM_CL_IL.label, task)[0]
        if plain is None or both is None:
            claims.append(f"{task}: not comparable (a run is missing or diverged everywhere)")
        elif both < plain:
            margin = plain - both
            claims.append(f"{task}: CL+IL beats the plain baseline by {margin:.2f} in ln loss")
        else:
            claims.append(
                f"{task}: at this budget CL+IL does NOT beat the plain baseline "
                f"({both:.2f} vs {plain:.2f})"
            )
        adam, summary = final("adam", task)
        learned = [(v, c.label) for c in DEMO.curves if (v := final(c.label, task)[0]) is not None]
        if adam is None or not learned:
            against_adam.append(f"{task}: not comparable with Adam (a run is missing)")
            continue
        value, name = min(learned)
        lr = summary.get("hyperparameters", {}).get("lr")
        adam_text = f"grid-tuned Adam (lr {lr:g}, {adam:.2f})" if lr else f"Adam ({adam:.2f})"
        if value < adam:
            against_adam.append(
                f"{task}: {name} ({value:.2f}) beats {adam_text} by {adam - value:.2f}"
            )
        else:
            against_adam.append(
                f"{task}: the best learned optimizer, {name} ({value:.2f}), falls short of "
                f"{adam_text} by {value - adam:.2f}"
            )
    return (
        "; ".join(claims)
        + ".\n\nMeta-trained here against Adam, in ln loss: "
        + "; ".join(against_adam)
        + "."
    )


def _reexec_with_thread_policy() -> None:
    """Re-run this command once with the OpenMP wait policy set (:mod:`l2o.threads`): the OpenMP
    runtime reads it when PyTorch loads, which has happened by the time this module runs. Only
    the long jobs pay for the second start (about a second)."""
    from l2o.threads import policy_env

    env = policy_env()
    words = [a for a in sys.argv[1:] if not a.startswith("-")]
    if not env or not words or words[0] not in LONG_COMMANDS:
        return
    os.environ.update(env)
    script = sys.argv[0]
    argv = (
        [script, *sys.argv[1:]]
        if os.access(script, os.X_OK) and not script.endswith(".py")
        else [sys.executable, "-m", "l2o.cli", *sys.argv[1:]]
    )
    with contextlib.suppress(OSError):  # carry on without the policy rather than fail
        os.execv(argv[0], argv)


def main() -> None:
    """Entry point of the ``l2o`` console script."""
    _reexec_with_thread_policy()
    # Tiny (denormal) floats make the LSTMs' sigmoids several times slower on CPUs.
    torch.set_flush_denormal(True)
    # A polite kill (SIGTERM, e.g. from a job scheduler) stops like Ctrl-C: results are saved.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # A warning (e.g. a torn metrics line dropped on --resume) is one line, like the errors.
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    try:
        app(prog_name="l2o")
    except KeyboardInterrupt:
        _say("interrupted", style="yellow")
        sys.exit(130)


if __name__ == "__main__":
    main()
