"""Every failure of the `l2o` command is a short message with exit status 2, never a traceback
(issue 15 item 3), and results are never lost (issue 15 item 2): end to end on small real runs."""

import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from l2o.cli import app, default_eval_out

runner = CliRunner()
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
QUICK = ["--task", "quadratic", "--steps", "20", "--seeds", "2"]


def fails_clearly(args, *needles, lines=2):
    """Run the command; assert exit 2, at most ``lines`` lines, no traceback, and the needles."""
    result = runner.invoke(app, args)
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out
    assert len([x for x in out.strip().splitlines() if x.strip()]) <= lines, out
    for needle in needles:
        assert needle in out, out
    return out


def test_learning_rate_is_checked_before_work(tmp_path):
    fails_clearly(["evaluate", "adam", "--lr", "nan", *QUICK], "finite number > 0")
    fails_clearly(["evaluate", "adam", "--lr", "-1", *QUICK], "finite number > 0")
    fails_clearly(["evaluate", "adam", "--lr", "inf", *QUICK], "finite number > 0")
    out = fails_clearly(["evaluate", "paper:dm-cl-il", "--lr", "0.1", *QUICK], "drop --lr")
    assert "analytic rules" in out
    assert not (tmp_path / "runs").exists()


def test_task_options_are_checked_by_name_type_and_range():
    fails_clearly(["evaluate", "adam", "--task-option", "batch_size=0"], "batch_size", "at least 1")
    fails_clearly(["evaluate", "adam", "--task-option", "batch_size=abc"], "batch_size")
    fails_clearly(["evaluate", "adam", "--task-option", "init_std=-1"], "init_std", ">= 0")
    fails_clearly(["evaluate", "adam", "--task-option", "sampling=random"], "replacement, epoch")
    out = fails_clearly(["evaluate", "adam", "--task-option", "nope=1"], "valid keys")
    assert "init_std, batch_size, sampling" in out
    # a key the task's factory fixes itself is not settable
    fails_clearly(["evaluate", "adam", "--task", "conv-mnist", "--task-option", "stride=2"])
    fails_clearly(["evaluate", "adam", "--task-option", "batch_size"], "KEY=VALUE")


def test_devices_are_checked():
    fails_clearly(["evaluate", "adam", "--device", "banana", *QUICK], "not a device name")
    if not torch.cuda.is_available():
        fails_clearly(["evaluate", "adam", "--device", "cuda", *QUICK], "no CUDA device")
        fails_clearly(["train", "dm", "--device", "cuda"], "no CUDA device")


def test_a_population_that_cannot_fit_is_refused_with_the_largest_that_can():
    out = fails_clearly(
        ["evaluate", "adam", "--task", "quadratic", "--steps", "10000", "--seeds", "1000000000"],
        "largest population that fits is --seeds",
        lines=3,
    )
    fits = int(out.split("--seeds ")[-1].split()[0].rstrip(";"))
    assert 0 < fits < 1_000_000_000


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present")
def test_the_issues_population_is_refused_before_allocating():
    fails_clearly(["evaluate", "adam", "--seeds", "100000"], "largest population", lines=3)


def _checkpoint_with_card(path, card):
    save_file({"w": torch.zeros(3)}, str(path), metadata={"l2o_card": json.dumps(card)})
    return str(path)


def test_a_card_of_the_wrong_shape_is_a_clear_error(tmp_path):
    bad = _checkpoint_with_card(tmp_path / "list.safetensors", [1, 2])
    fails_clearly(
        ["evaluate", bad, *QUICK], "card is not a JSON object naming the model", "re-create"
    )
    bad = _checkpoint_with_card(tmp_path / "nomodel.safetensors", {"model": 5})
    fails_clearly(["evaluate", bad, *QUICK], "not a JSON object naming the model", "nomodel")
    bad = _checkpoint_with_card(tmp_path / "hp.safetensors", {"model": "dm", "hyperparameters": 3})
    fails_clearly(["evaluate", bad, *QUICK], "'hyperparameters' is not an object")


def test_a_card_the_model_cannot_take_is_a_clear_error(tmp_path, monkeypatch):
    card = {"model": "dm", "hyperparameters": {"no_such_setting": 1}}
    bad = _checkpoint_with_card(tmp_path / "odd.safetensors", card)
    monkeypatch.chdir(tmp_path)  # the default --out lies under runs/ here
    fails_clearly(["evaluate", bad, *QUICK], "do not build a 'dm' rule", "odd.safetensors")
    # the command failed before writing anything: it leaves no empty output folder behind
    assert not any((tmp_path / "runs" / "eval").iterdir())


def test_unexpected_failures_are_short_and_debug_shows_the_traceback(monkeypatch, tmp_path):
    import l2o.evaluation

    def broken(*args, **kwargs):  # stands for a bug deep in the library
        raise KeyError("boom")

    monkeypatch.setattr(l2o.evaluation, "evaluate", broken)
    args = ["evaluate", "adam", *QUICK, "--out", str(tmp_path / "e")]
    out = fails_clearly(args, "KeyError", "--debug", lines=4)  # + threads, progress
    assert out.count("error:") == 1
    result = runner.invoke(app, ["--debug", *args])
    assert isinstance(result.exception, KeyError)


def test_compare_on_empty_or_foreign_folders(tmp_path):
    fails_clearly(["compare", str(tmp_path)], "summary.json is missing")
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "losses.npz").write_bytes(b"")
    import numpy as np

    np.savez(tmp_path / "losses.npz", losses=np.zeros((1, 3)))
    fails_clearly(["compare", str(tmp_path)], "not an l2o evaluation summary", "'rule'")
    (tmp_path / "summary.json").write_text("[]")
    fails_clearly(["compare", str(tmp_path)], "not an l2o evaluation summary")


def test_missing_data_without_a_downloader_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path / "nodata"))
    monkeypatch.setenv("L2O_CACHE_DIR", str(tmp_path / "nocache"))
    from l2o.tasks.datasets import split_arrays

    split_arrays.cache_clear()  # the arrays earlier tests loaded from the real folder
    # the message is l2o.data's: it lists every source it tried, then the fix
    out = fails_clearly(["evaluate", "adam", "--steps", "5", "--seeds", "1"], lines=40)
    assert out.count("error:") == 1 and "set L2O_DATA_DIR to a folder that contains mnist" in out


def test_out_is_checked_writable_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    fails_clearly(["evaluate", "adam", *QUICK, "--out", str(blocker)], "cannot write", "--out")
    fails_clearly(
        ["evaluate", "adam", *QUICK, "--out", str(blocker / "sub")], "cannot write", "--out"
    )


def test_a_second_run_into_a_locked_folder_stops_at_once(tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    with open(out / ".l2o.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        fails_clearly(["evaluate", "adam", *QUICK, "--out", str(out)], "another l2o run", "4242")
        fails_clearly(
            ["train", "dm", "--task", "quadratic", "--epochs", "1", "--out", str(out)],
            "another l2o run",
        )
    # released: the run goes through, and a finished result is kept without --force
    assert runner.invoke(app, ["evaluate", "adam", *QUICK, "--out", str(out)]).exit_code == 0
    fails_clearly(["evaluate", "adam", *QUICK, "--out", str(out)], "--force", "finished result")
    assert (
        runner.invoke(app, ["evaluate", "adam", *QUICK, "--out", str(out), "--force"]).exit_code
        == 0
    )


def test_the_lock_goes_with_a_killed_process(tmp_path):
    out = tmp_path / "ev"
    out.mkdir()
    code = (
        "import fcntl,sys,time; f=open(sys.argv[1],'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(out / ".l2o.lock")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    fails_clearly(["evaluate", "adam", *QUICK, "--out", str(out)], "another l2o run")
    proc.kill()
    proc.wait()
    assert runner.invoke(app, ["evaluate", "adam", *QUICK, "--out", str(out)]).exit_code == 0


def test_default_out_names_every_setting_that_changes_the_result():
    a = default_eval_out("adam", "mlp-orig", 100, 2, 0.01, {"batch_size": 64}, "cpu")
    assert str(a) == "runs/eval/adam-mlp-orig-2x100-lr0.01-batch_size64"
    b = default_eval_out("paper:dm-cl-il", "mlp-orig", 10000, 10, None, {}, "cpu")
    assert str(b) == "runs/eval/paper-dm-cl-il-mlp-orig-10x10000"
    variants = {
        default_eval_out("adam", "mlp-orig", s, n, lr, {}, "cpu")
        for s in (100, 200)
        for n in (1, 2)
        for lr in (None, 0.1)
    }
    assert len(variants) == 8


def test_square_brackets_survive_in_messages(tmp_path):
    result = runner.invoke(app, ["evaluate", "adam", *QUICK, "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    assert "[min " in result.output and ", max " in result.output


def test_a_real_process_fails_in_one_line_with_status_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "l2o.cli", "evaluate", "adam", "--lr", "nan", *QUICK],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["error: --lr must be a finite number > 0, got nan"]


@pytest.mark.parametrize("args", [["evaluate"], ["train", "nope"], ["reproduce", "fig99"]])
def test_usage_errors_exit_2_without_traceback(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
