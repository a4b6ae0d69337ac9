"""Property-based fuzzing of the command line (hypothesis): every command, with random flags and
values (valid ones, wrong types, unknown flags, negative, NaN, huge numbers, odd paths), ends in a
one-line message or a result, never a traceback: exit status 0 or 2 (issue 15; counted in
docs/reliability.md).

The commands' argument checks and setup run for real (tasks, rules, checkpoints, output folders
and their locks); only the long work itself (an evaluation's trajectories, a training run, a
reproduction's jobs) is replaced by an immediate successful exit once every check has passed,
so an example takes milliseconds. Derandomized: CI sees the same examples every run.
"""

from __future__ import annotations

import pytest
import torch
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from l2o.cli import app

NUMBERS = ["0", "1", "2", "-1", "-0", "3.5", "1e9", "1e400", "99999999999999999999", "nan"]
NUMBERS += ["inf", "-inf", "abc", "", "0x10", " 5"]
PATHS = ["out", "", "/", "/proc/none/x", "a\x00b", "..", "deep/er/dir", "/dev/null", "~", "ü"]
TASKS = ["quadratic", "nope", "", "QUADRATIC", "mlp-orig"]
TASK_OPTIONS = ["dim=3", "dim=0", "dim=-2", "dim=abc", "dim=1e12", "init_std=nan", "nope=1"]
TASK_OPTIONS += ["batch_size=0", "x", "=", "dim=", "dim=[1]", "sampling=epoch"]
RULES = ["adam", "sgd", "rmsprop", "nag", "nope", "paper:dm", "paper:nope", "/none.safetensors"]
RULES += ["", "l2o-dm", "out"]
UNKNOWN = ["--bogus", "-x", "--", "--help", "--debugg"]

# command -> {flag: values}; a value of None is a flag without a value
FLAGS: dict[str, dict[str, list[str] | None]] = {
    "tasks": {"--json": None, "--wide": None},
    "pretrained": {"--task": TASKS, "--json": None, "--wide": None},
    "evaluate": {
        "--task": TASKS,
        "--steps": NUMBERS,
        "--seeds": NUMBERS,
        "--lr": NUMBERS,
        "--out": PATHS,
        "--device": ["cpu", "cuda", "cuda:7", "tpu", "", "meta"],
        "--task-option": TASK_OPTIONS,
        "--no-compile": None,
        "--label": ["x", "", "[red]y[/red]"],
        "--force": None,
        "--threads": NUMBERS,
        "--json": None,
    },
    "compare": {"--out": PATHS, "--json": None, "--wide": None},
    "train": {
        "--task": TASKS,
        "--budget": ["demo", "cpu", "paper", "huge", ""],
        "--out": PATHS,
        "--resume": None,
        "--seed": NUMBERS,
        "--device": ["cpu", "cuda", "tpu"],
        "--epochs": NUMBERS,
        "--evaluation-period": NUMBERS,
        "--instances": NUMBERS,
        "--shard-size": NUMBERS,
        "--nproc": NUMBERS,
        "--threads": NUMBERS,
        "--list": None,
        "--json": None,
    },
    "reproduce": {
        "--budget": ["demo", "cpu", "paper", "huge"],
        "--out": PATHS,
        "--seeds": NUMBERS,
        "--steps": NUMBERS,
        "--jobs": NUMBERS,
        "--weights": ["ours", "paper", "theirs"],
        "--tasks": ["mlp-orig", "nope", "", "mlp-orig,mlp-orig"],
        "--plan": None,
        "--threads": NUMBERS,
        "--json": None,
    },
    "demo": {"--out": PATHS, "--steps": NUMBERS, "--seeds": NUMBERS, "--jobs": NUMBERS},
}
POSITIONAL = {
    "evaluate": RULES,
    "compare": PATHS,
    "train": ["dm", "rnnprop", "scale", "nope", ""],
    "reproduce": ["fig2", "fig5", "all", "fig4", ""],
}


@st.composite
def command_lines(draw) -> list[str]:
    command = draw(st.sampled_from(sorted(FLAGS)))
    args = [command]
    if command in POSITIONAL and draw(st.integers(0, 9)) > 0:
        args += [draw(st.sampled_from(POSITIONAL[command]))]
    flags = FLAGS[command]
    for _ in range(draw(st.integers(0, 4))):
        flag = draw(st.sampled_from(sorted(flags)))
        values = flags[flag]
        args += [flag] if values is None else [flag, draw(st.sampled_from(values))]
    if draw(st.integers(0, 9)) == 0:
        args.insert(draw(st.integers(1, len(args))), draw(st.sampled_from(UNKNOWN)))
    return args


#: How the examples ended (a fuzzer that only ever hits usage errors tests little).
SEEN: dict[str, int] = {}


def _reached_work(*args, **kwargs):
    """Every check passed and the long work would start: stop here, successfully."""
    SEEN["work"] = SEEN.get("work", 0) + 1
    raise typer.Exit(0)


@pytest.fixture
def bounded(monkeypatch: pytest.MonkeyPatch, tmp_path, sample_data):
    import l2o.evaluation
    import l2o.reproduce.runner
    import l2o.training.distributed
    import l2o.training.trainer

    monkeypatch.setattr(l2o.evaluation, "evaluate", _reached_work)
    monkeypatch.setattr(l2o.training.trainer.Trainer, "run", _reached_work)
    monkeypatch.setattr(l2o.reproduce.runner, "run_plan", _reached_work)
    monkeypatch.setattr(l2o.training.distributed, "launch", _reached_work)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@settings(
    max_examples=1000,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(args=command_lines())
def test_no_command_line_prints_a_traceback(bounded, args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    text = result.output
    key = f"{args[0]} exit {result.exit_code}"
    SEEN[key] = SEEN.get(key, 0) + 1
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args}: {type(result.exception).__name__}: {result.exception}\n{text}"
    )
    assert result.exit_code in (0, 2), f"{args}: exit {result.exit_code}\n{text}"
    assert "Traceback" not in text and "please report it" not in text, f"{args}\n{text}"


def test_the_fuzzer_reaches_the_work_of_every_long_command() -> None:
    """Run after the fuzzing (file order): the examples were not all usage errors."""
    if not SEEN:
        pytest.skip("the fuzzing test did not run")
    print(sorted(SEEN.items()))
    assert SEEN.get("work", 0) >= 20
    for command in FLAGS:
        assert SEEN.get(f"{command} exit 0", 0) + SEEN.get(f"{command} exit 2", 0) > 0, command
