"""The `l2o` command end to end on short real runs."""

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from l2o.cli import app

runner = CliRunner()


def test_tasks_lists_all_tasks():
    result = runner.invoke(app, ["tasks"])
    assert result.exit_code == 0
    for name in ("mlp-orig", "conv-cifar", "quadratic", "18,218"):
        assert name in result.output


@pytest.mark.usefixtures("sample_data")
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


def test_train_then_resume_then_evaluate_from_the_command_line(tmp_path):
    out = tmp_path / "dm"
    args = [
        "train",
        "dm",
        "--task",
        "quadratic",
        "--budget",
        "demo",
        "--epochs",
        "2",
        "--evaluation-period",
        "1",
        "--no-compile",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "finished after 2 epochs" in result.output
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in lines].count("validation") == 2
    card = json.loads((out / "best.json").read_text())
    assert card["recipe"] == "dm" and card["budget"] == "demo" and card["task"] == "quadratic"
    # the same command again refuses to overwrite; --resume with more epochs is a different run
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "pass --resume" in result.output
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0 and "finished after 2 epochs" in result.output
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(out / "best.safetensors"),
            "--task",
            "quadratic",
            "--steps",
            "20",
            "--seeds",
            "2",
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert result.exit_code == 0, result.output


def test_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    result = runner.invoke(app, ["evaluate", str(bad), "--steps", "5"])
    assert result.exit_code == 2 and "not a readable safetensors checkpoint" in result.output
    import torch
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    result = runner.invoke(app, ["evaluate", str(foreign), "--steps", "5"])
    assert result.exit_code == 2 and "not an l2o checkpoint" in result.output


def test_corrupt_training_state_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_state.pt").write_bytes(b"garbage, not a torch file")
    result = runner.invoke(
        app,
        [
            "train",
            "dm",
            "--task",
            "quadratic",
            "--epochs",
            "1",
            "--no-compile",
            "--out",
            str(out),
            "--resume",
        ],
    )
    assert result.exit_code == 2 and "not a readable l2o training state" in result.output
    assert "delete it" in result.output


def test_demo_verdict_names_the_claim_and_the_margin_against_adam(tmp_path):
    from l2o.cli import demo_verdict

    def put(folder, task, value, lr=None):
        path = tmp_path / "eval" / folder / task
        path.mkdir(parents=True)
        summary = {"final_ln_loss": {"mean": value}, "hyperparameters": {"lr": lr} if lr else {}}
        (path / "summary.json").write_text(json.dumps(summary))

    put("l2o-dm", "mlp-orig", 0.83)
    put("l2o-dm-cl-il", "mlp-orig", -2.38)
    put("rnnprop-cl-il", "mlp-orig", -3.80)
    put("adam", "mlp-orig", -2.90, lr=0.03)
    put("l2o-dm", "mlp-relu", 1.60)
    put("l2o-dm-cl-il", "mlp-relu", 1.70)
    put("rnnprop-cl-il", "mlp-relu", -1.00)
    put("adam", "mlp-relu", -2.79, lr=0.03)
    text = demo_verdict(tmp_path)
    assert "mlp-orig: CL+IL beats the plain baseline by 3.21" in text
    assert "mlp-relu: at this budget CL+IL does NOT beat the plain baseline (1.70 vs 1.60)" in text
    assert "mlp-orig: RNNprop-CL-IL (-3.80) beats grid-tuned Adam (lr 0.03, -2.90) by 0.90" in text
    assert (
        "mlp-relu: the best learned optimizer, RNNprop-CL-IL (-1.00), falls short of grid-tuned "
        "Adam (lr 0.03, -2.79) by 1.79"
    ) in text
    (tmp_path / "eval" / "adam" / "mlp-relu" / "summary.json").unlink()
    assert "mlp-relu: not comparable with Adam (a run is missing)" in demo_verdict(tmp_path)
