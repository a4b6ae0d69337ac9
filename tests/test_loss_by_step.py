"""``benchmarks/loss_by_step.py``: a run's saved curves read at every horizon, consistent with the
evaluation's own ``final_ln_loss``."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from l2o.evaluation import summarize_losses

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "loss_by_step.py"


@pytest.fixture(scope="module")
def lbs():
    spec = importlib.util.spec_from_file_location("loss_by_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _losses(rng, seeds=4, steps=1000, turn=None):
    """Falling losses (rising again after ``turn``), with noise."""
    t = np.arange(1, steps + 1)
    base = 2.0 * np.exp(-t / 200)
    if turn:
        base = base + np.where(t > turn, (t - turn) / 500, 0.0)
    return (base + 0.01) * np.exp(rng.normal(0, 0.05, size=(seeds, steps)))


def test_the_last_step_is_the_evaluations_final_ln_loss(lbs):
    rng = np.random.default_rng(0)
    losses = _losses(rng)
    losses[2, 500] = np.nan  # a diverged seed is left out of both
    final = summarize_losses(losses, range(4))["final_ln_loss"]["mean"]
    assert lbs.ln_loss_at(losses, 1000) == pytest.approx(final, abs=1e-6)
    steps, curve = lbs.ln_curve(losses)
    for k in (10, 90, 100, 450, 1000):
        assert curve[list(steps).index(k)] == pytest.approx(lbs.ln_loss_at(losses, k))


def test_a_run_folder_is_profiled_per_training_seed_with_the_climb(lbs, tmp_path):
    rng = np.random.default_rng(1)
    for seed, turn in enumerate((300, 400, 350)):  # a learned rule that turns back up
        out = tmp_path / "eval" / "l2o-dm" / "mlp-orig" / f"seed-{seed}"
        out.mkdir(parents=True)
        np.savez(out / "losses.npz", losses=_losses(rng, turn=turn))
    adam = tmp_path / "eval" / "adam" / "mlp-orig"
    adam.mkdir(parents=True)
    np.savez(adam / "losses.npz", losses=_losses(rng))
    (adam / "summary.json").write_text(json.dumps({"hyperparameters": {"lr": 0.03}}))

    assert lbs.main([str(tmp_path), "--steps", "100,200,500,1000"]) == 0
    results = json.loads((tmp_path / "loss_by_step.json").read_text())["results"]
    dm = results["l2o-dm"]["mlp-orig"]
    assert dm["training_seeds"] == [0, 1, 2]
    assert dm["lowest_step"] == 500 and dm["climb_after_lowest"] > 0.5
    per_seed = [row[1] for row in dm["per_training_seed"].values()]
    assert dm["at"]["200"]["median"] == pytest.approx(np.median(per_seed), abs=1e-4)
    adam_row = results["adam"]["mlp-orig"]
    assert adam_row["name"] == "adam (lr 0.03)" and adam_row["climb_after_lowest"] == 0
    assert "| adam (lr 0.03) | mlp-orig | 1 |" in (tmp_path / "loss_by_step.md").read_text()
    assert (tmp_path / "loss_by_step.png").stat().st_size > 10_000


def test_bad_arguments_name_the_problem(lbs, tmp_path, capsys):
    with pytest.raises(SystemExit):
        lbs.main([str(tmp_path)])
    assert "no evaluation curves" in capsys.readouterr().err
    out = tmp_path / "eval" / "adam" / "mlp-orig"
    out.mkdir(parents=True)
    np.savez(out / "losses.npz", losses=np.ones((2, 200)))
    with pytest.raises(SystemExit):
        lbs.main([str(tmp_path), "--only", "sgd"])
    assert "no evaluations of sgd; the run has adam" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lbs.main([str(tmp_path), "--steps", "100,many"])
    assert "--steps takes whole numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lbs.main([str(tmp_path), "--steps", "0,100"])
    assert "steps of at least 1" in capsys.readouterr().err
