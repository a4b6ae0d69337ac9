"""The `l2o` command end to end on short real runs."""

import json
import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from l2o.cli import app

runner = CliRunner()


def test_tasks_lists_all_tasks():
    result = runner.invoke(app, ["tasks"])
    assert result.exit_code == 0
    for name in ("mlp-orig", "conv-cifar", "quadratic", "18,218"):
        assert name in result.output


def test_evaluate_and_compare_write_their_files(tmp_path):
    runs = []
    for rule, lr in (("adam", "0.01"), ("sgd", "0.5")):
        out = tmp_path / rule
        result = runner.invoke(
            app,
            [
                "evaluate",
                rule,
                "--task",
                "mlp-orig",
                "--steps",
                "120",
                "--seeds",
                "2",
                "--lr",
                lr,
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rule"] == rule and summary["steps"] == 120 and summary["seeds"] == [0, 1]
        assert summary["hyperparameters"]["lr"] == float(lr)
        with np.load(out / "losses.npz") as data:
            assert data["losses"].shape == (2, 120)
        assert (out / "curves.png").stat().st_size > 10_000
        runs.append(str(out))
    result = runner.invoke(app, ["compare", *runs, "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "adam (lr 0.01)" in table and "sgd (lr 0.5)" in table
    assert (tmp_path / "cmp" / "comparison.png").is_file()


def test_bad_inputs_give_clear_errors(tmp_path):
    result = runner.invoke(app, ["evaluate", "adam", "--task", "mlp-nope", "--steps", "5"])
    assert result.exit_code == 2 and "choose one of" in result.output
    result = runner.invoke(app, ["evaluate", "adamw", "--steps", "5"])
    assert result.exit_code == 2 and "unknown rule 'adamw'" in result.output
    result = runner.invoke(app, ["compare", str(tmp_path)])
    assert result.exit_code == 2 and "summary.json is missing" in result.output


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "l2o.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "evaluate" in out.stdout
