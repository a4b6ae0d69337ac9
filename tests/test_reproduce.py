"""``l2o reproduce``: the plan of a figure, and an end-to-end run on real data that resumes."""

import json

import pytest
from typer.testing import CliRunner

from l2o.cli import app
from l2o.reproduce import FIGURES, PAPER_VALUES, make_plan


def test_plans_train_each_recipe_once_and_evaluate_every_curve_and_baseline(tmp_path):
    plan = make_plan(["fig2", "fig3"], "cpu", tmp_path)
    kinds = {}
    for job in plan.jobs.values():
        kinds.setdefault(job.kind, []).append(job)
    assert sorted(j.args["recipe"] for j in kinds["train"]) == sorted(
        ["dm", "dm-cl-il", "rnnprop", "rnnprop-cl-il", "scale", "scale-cl-il"]
    )
    # 6 distinct learned curves that can be reproduced (L2O-Scale-Meta cannot), 4 baselines,
    # 5 tasks; curves shared by the two figures are evaluated once.
    assert len(kinds["eval"]) == (6 + 4) * 5 and len(kinds["grid"]) == 4 * 5
    ev = plan.jobs["eval/l2o-dm-cl-il/mlp-relu"]
    assert ev.deps == ["train/dm-cl-il-cpu"] and ev.args["steps"] == 3000
    assert plan.jobs["eval/adam/conv-cifar"].deps == ["grid/adam/conv-cifar"]
    assert all(
        label in PAPER_VALUES for f in FIGURES.values() for label in (c.label for c in f.curves)
    )


def test_paper_weights_need_no_training_and_bad_requests_are_named(tmp_path):
    plan = make_plan(["fig5"], "paper", tmp_path, weights="paper", tasks=["mlp-orig"])
    assert not [j for j in plan.jobs.values() if j.kind == "train"]
    assert plan.jobs["eval/l2o-dm-aug/mlp-orig"].args["rule"] == "paper:dm-aug"
    assert plan.steps == 10_000 and plan.seeds == 10
    with pytest.raises(ValueError, match="unknown figure 'fig4'"):
        make_plan(["fig4"], "cpu", tmp_path)
    with pytest.raises(ValueError, match="not in the figure"):
        make_plan(["fig6"], "cpu", tmp_path, tasks=["mlp-orig"])
    with pytest.raises(ValueError, match="unknown budget"):
        make_plan(["fig5"], "huge", tmp_path)


@pytest.mark.requires_full_data("mnist")  # its jobs run in worker processes: no sample
def test_reproduce_runs_end_to_end_writes_report_and_resumes(tmp_path):
    out = tmp_path / "rep"
    args = [
        "reproduce",
        "fig5",
        "--weights",
        "paper",
        "--budget",
        "demo",
        "--steps",
        "20",
        "--seeds",
        "2",
        "--tasks",
        "mlp-orig",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = (out / "fig5.md").read_text()
    for row in ("L2O-DM-AUG (paper weights)", "Adam (grid-tuned lr)", "NAG (grid-tuned lr)"):
        assert row in report
    assert "paper -3.06" in report and "20 evaluation steps instead of 10000" in report
    assert (out / "fig5.png").stat().st_size > 10_000
    grid = json.loads((out / "grid" / "adam" / "mlp-orig" / "done.json").read_text())
    assert grid["best_lr"] in grid["lrs"] and len(grid["scores"]) == 5
    summary = json.loads((out / "eval" / "adam" / "mlp-orig" / "summary.json").read_text())
    assert summary["hyperparameters"]["lr"] == grid["best_lr"] and summary["steps"] == 20

    # A job whose result is gone: the report says so, cell by cell, and how to finish it.
    (out / "eval" / "l2o-dm" / "mlp-orig" / "done.json").unlink()
    from l2o.reproduce.runner import write_report

    plan = make_plan(["fig5"], "demo", out, steps=20, seeds=2, weights="paper", tasks=["mlp-orig"])
    write_report(plan, {}, 1.0)
    report = (out / "fig5.md").read_text()
    assert "| L2O-DM (paper weights) | not run / paper -0.10 |" in report
    assert "1 cell not run:" in report and "run the same command again" in report

    # Another figure reported into the same folder: report.md keeps Figure 5's section beside
    # the new one, in the paper's order; each figure's own file is still there.
    other = make_plan(
        ["techniques"], "demo", out, steps=20, seeds=2, weights="paper", tasks=["mlp-orig"]
    )
    write_report(other, {}, 1.0)
    both = (out / "report.md").read_text()
    assert both.count("# Reproducing Chen et al.") == 1
    assert both.index("## Figure 5") < both.index("## Curriculum (CL) and imitation (IL)")
    assert (out / "fig5.md").read_text() == report

    # Resume: only the job whose result is gone runs again.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "1 jobs to run (11 already done)" in again.output
    assert "start eval/l2o-dm/mlp-orig" in again.output


def test_finished_results_made_with_other_settings_are_refused_not_reused(tmp_path, sample_data):
    """An evaluation folder holds one result: asking the same folder for 3,000 steps must not
    report the 10,000-step result under the new settings."""
    out = tmp_path / "rep"
    plan = make_plan(["fig5"], "demo", out, steps=20, seeds=2, weights="paper", tasks=["mlp-orig"])
    job = plan.jobs["eval/adam/mlp-orig"]
    from l2o.reproduce.runner import _run_job

    args = {k: v for k, v in job.args.items() if k != "lr_from"}  # no grid: a fixed lr
    job.out.mkdir(parents=True)
    status = _run_job("eval", str(job.out), {**args, "lr": 0.01}, 1)
    assert status["status"] == "done"
    recorded = json.loads((job.out / "done.json").read_text())["settings"]
    assert recorded == {"rule": "adam", "task": "mlp-orig", "steps": 20, "seeds": 2}
    # the same settings: reused
    same = make_plan(["fig5"], "demo", out, steps=20, seeds=2, weights="paper", tasks=["mlp-orig"])
    assert same.jobs["eval/adam/mlp-orig"].done()
    with pytest.raises(ValueError) as err:
        make_plan(["fig5"], "demo", out, steps=30, seeds=2, weights="paper", tasks=["mlp-orig"])
    text = str(err.value)
    assert "eval/adam/mlp-orig was made with steps=20, this run asks for steps=30" in text
    assert "use another --out, or delete those folders" in text
    # a result finished before settings were recorded is checked against its summary
    done = json.loads((job.out / "done.json").read_text())
    del done["settings"]
    (job.out / "done.json").write_text(json.dumps(done))
    with pytest.raises(ValueError, match="made with seeds=2, this run asks for seeds=3"):
        make_plan(["fig5"], "demo", out, steps=20, seeds=3, weights="paper", tasks=["mlp-orig"])
    # the CLI says it before running anything
    result = CliRunner().invoke(
        app,
        [
            "reproduce",
            "fig5",
            "--weights",
            "paper",
            "--budget",
            "demo",
            "--steps",
            "30",
            "--seeds",
            "2",
            "--tasks",
            "mlp-orig",
            "--out",
            str(out),
            "--plan",
        ],
    )
    assert result.exit_code == 2 and "made with steps=20" in result.output


def test_plan_names_a_training_it_will_resume_and_counts_only_what_is_left(tmp_path):
    from l2o.reproduce.runner import describe_plan, estimate_seconds

    plan = make_plan(["fig5"], "paper", tmp_path, tasks=["mlp-orig"])
    job = plan.jobs["train/dm-paper"]
    full = estimate_seconds(job)
    assert not any("resuming" in line for line in describe_plan(plan, 1))
    # What a training killed after epoch 2500 leaves behind (the trainer writes both each epoch);
    # the last line was cut by the kill.
    job.out.mkdir(parents=True)
    (job.out / "train_state.pt").write_bytes(b"state")
    lines = [json.dumps({"type": "epoch", "epoch": e, "horizon": 100}) for e in (2499, 2500)]
    (job.out / "metrics.jsonl").write_text("\n".join(lines) + '\n{"type": "epoch", "ep')
    text = "\n".join(describe_plan(plan, 1))
    assert "resuming train/dm-paper at epoch 2500 of 10000" in text
    assert "with 1 job at a time" in text
    assert estimate_seconds(job) == pytest.approx(full * 0.75)


def test_time_estimate_counts_cores_not_jobs_and_the_longest_job(tmp_path):
    import re

    from l2o.reproduce.runner import describe_plan, estimate_seconds

    plan = make_plan(["fig5"], "cpu", tmp_path, tasks=["mlp-orig"])
    seconds = [estimate_seconds(j) for j in plan.jobs.values()]

    def hours(jobs, cores):
        line = next(x for x in describe_plan(plan, jobs, cores=cores) if "estimated" in x)
        return line, float(re.search(r"so about ([0-9.]+) h", line).group(1))

    # Three jobs on two cores run at two jobs' pace, and the line says why.
    line, h = hours(3, 2)
    assert "sharing 2 cores" in line
    assert h == pytest.approx(max(sum(seconds) / 2, max(seconds)) / 3600, abs=0.05)
    assert hours(3, 2)[1] == hours(2, 2)[1]
    # On Ray the jobs run on the cluster's cores, not this machine's two.
    assert not any("sharing" in x for x in describe_plan(plan, 3, "ray", cores=2))
    # However many cores, the estimate never drops below the longest single job.
    line, h = hours(64, 64)
    assert "sharing" not in line
    assert h == pytest.approx(max(seconds) / 3600, abs=0.05)


def test_trainings_start_before_the_evaluations_of_finished_ones(tmp_path):
    from l2o.reproduce.runner import ready_jobs

    plan = make_plan(["fig5"], "cpu", tmp_path)
    pending = dict(plan.jobs)
    first = ready_jobs(pending, set())
    assert first[:4] == ["train/dm-cpu", "train/dm-aug-cpu", "train/dm-il-cpu", "train/dm-cl-cpu"]
    assert not any(k.startswith("eval/l2o-") for k in first)  # they need their training
    # dm has trained (a resumed run) and dm-aug is running: dm's evaluations are ready, but the
    # other trainings go first, and nothing waiting on dm-aug is ready.
    del pending["train/dm-cpu"], pending["train/dm-aug-cpu"]
    ready = ready_jobs(pending, {"train/dm-aug-cpu"})
    assert "eval/l2o-dm/mlp-orig" in ready and "eval/l2o-dm-aug/mlp-orig" not in ready
    assert ready[:2] == ["train/dm-il-cpu", "train/dm-cl-cpu"]


def test_results_first_evaluates_finished_trainings_before_starting_new_ones(tmp_path):
    from l2o.reproduce.runner import ready_jobs, run_plan

    plan = make_plan(["fig5"], "cpu", tmp_path)
    pending = dict(plan.jobs)
    # Nothing trained yet: the grids (which need no training) go before any training.
    first = ready_jobs(pending, set(), order="results")
    kinds = [pending[k].kind for k in first]
    assert kinds.index("train") > kinds.index("grid")
    assert kinds[kinds.index("train") :] == ["train"] * kinds.count("train")
    # dm has trained: its evaluations start before the trainings still to run.
    del pending["train/dm-cpu"]
    ready = ready_jobs(pending, {"train/dm-aug-cpu"}, order="results")
    assert ready.index("eval/l2o-dm/mlp-orig") < ready.index("train/dm-il-cpu")
    with pytest.raises(ValueError, match="unknown order 'fast'; choose one of trainings, results"):
        ready_jobs(pending, set(), order="fast")
    with pytest.raises(ValueError, match="unknown order"):
        run_plan(plan, order="fast")


def test_a_training_left_part_way_resumes_before_new_ones(tmp_path):
    from l2o.reproduce.runner import ready_jobs

    plan = make_plan(["fig5"], "cpu", tmp_path)
    pending = dict(plan.jobs)
    # What a stopped run leaves behind: dm-cl further along than dm-il, both behind dm and dm-aug
    # in the plan's order.
    for key, epoch in (("train/dm-il-cpu", 40), ("train/dm-cl-cpu", 700)):
        out = pending[key].out
        out.mkdir(parents=True)
        (out / "train_state.pt").write_bytes(b"state")
        (out / "metrics.jsonl").write_text(json.dumps({"type": "epoch", "epoch": epoch}) + "\n")
    for order in ("trainings", "results"):
        trains = [k for k in ready_jobs(pending, set(), order=order) if pending[k].kind == "train"]
        assert trains[:3] == ["train/dm-cl-cpu", "train/dm-il-cpu", "train/dm-cpu"]


def test_a_resumed_training_shows_its_last_validation(tmp_path):
    from l2o.reproduce.runner import last_validation

    assert last_validation(tmp_path) is None  # not started
    records = [
        {"type": "validation", "epoch": 100, "score": 754.07},
        {"type": "epoch", "epoch": 150},
        {"type": "validation", "epoch": 200, "score": 159.0},
        {"type": "epoch", "epoch": 201},
        {"type": "validation", "epoch": 250, "score": None},  # garbage: skipped
    ]
    text = "\n".join(json.dumps(r) for r in records)
    (tmp_path / "metrics.jsonl").write_text(text + '\n{"type": "validation", "sc')  # torn by a kill
    assert last_validation(tmp_path) == 159.0
    (tmp_path / "metrics.jsonl").write_text(json.dumps(records[1]) + "\n")
    assert last_validation(tmp_path) is None  # no validation yet


def test_eta_rescales_the_estimates_by_how_the_finished_jobs_went():
    from l2o.reproduce.runner import remaining_seconds

    estimates = {"train": 1000.0, "eval-a": 100.0, "eval-b": 100.0}
    assert remaining_seconds(estimates, {}) == 1200.0
    # The finished evaluation took twice its estimate: the rest is expected to as well.
    assert remaining_seconds(estimates, {"eval-a": 200.0}) == pytest.approx(2200.0)
    assert remaining_seconds(estimates, {k: 1.0 for k in estimates}) == 0.0
    # A training that stopped early (or resumed) says nothing about the machine's speed: with
    # only the evaluations calibrating, its 300 s against 1,000 leaves the scale alone...
    fixed = {"eval-a", "eval-b"}
    assert remaining_seconds(estimates, {"train": 300.0}, fixed) == pytest.approx(200.0)
    # ...and the finished evaluation still sets it.
    both = {"train": 300.0, "eval-a": 200.0}
    assert remaining_seconds(estimates, both, fixed) == pytest.approx(200.0)


def test_a_missing_data_set_stops_the_run_before_any_job(tmp_path, monkeypatch):
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("L2O_DATA_DIR", str(empty))
    monkeypatch.setenv("L2O_CACHE_DIR", str(tmp_path / "cache"))  # (conftest blocks the network)
    from l2o.data import clear_memory_cache

    clear_memory_cache()
    out = tmp_path / "rep"
    args = ["reproduce", "fig6", "--weights", "paper", "--budget", "demo", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    clear_memory_cache()
    assert result.exit_code == 2, result.output
    assert "MNIST" in result.output and "L2O_DATA_DIR" in result.output
    assert "Nothing has run" in result.output
    assert not (out / "train").exists() and not (out / "eval").exists()


def test_train_seeds_train_and_evaluate_each_seed_apart(tmp_path):
    plan = make_plan(["techniques"], "cpu", tmp_path, train_seeds=3, tasks=["mlp-orig"])
    trains = [j for j in plan.jobs.values() if j.kind == "train"]
    assert len(trains) == 6 * 3
    job = plan.jobs["train/dm-cl-il-cpu/seed-2"]
    assert job.args == {"recipe": "dm-cl-il", "budget": "cpu", "seed": 2}
    assert job.out == tmp_path / "train" / "dm-cl-il-cpu" / "seed-2"
    ev = plan.jobs["eval/l2o-dm-cl-il/mlp-orig/seed-2"]
    assert ev.deps == ["train/dm-cl-il-cpu/seed-2"]
    assert ev.args["checkpoint_from"] == str(job.out)
    # baselines are not trained: evaluated once
    assert "eval/adam/mlp-orig" in plan.jobs and "eval/adam/mlp-orig/seed-0" not in plan.jobs
    only = make_plan(["techniques"], "cpu", tmp_path, train_seeds=3, recipes=["rnnprop"])
    assert sorted(k for k in only.jobs if k.startswith("train/")) == [
        "train/rnnprop-cpu/seed-0",
        "train/rnnprop-cpu/seed-1",
        "train/rnnprop-cpu/seed-2",
    ]
    assert "eval/adam/mlp-relu" in only.jobs
    with pytest.raises(ValueError, match=r"recipe\(s\) \['dm-aug'\] are not in the figure"):
        make_plan(["techniques"], "cpu", tmp_path, recipes=["dm-aug"])
    with pytest.raises(ValueError, match="train_seeds must be at least 1"):
        make_plan(["techniques"], "cpu", tmp_path, train_seeds=0)


def test_report_gives_the_spread_over_training_seeds(tmp_path, sample_data):
    """Real evaluations (Adam at three learning rates stands in for three training seeds' rules)
    in the folders of a 3-training-seed plan: the cell holds the median and range over the three
    and each seed's value; the JSON beside it holds the same numbers; the figure is drawn."""
    from l2o.evaluation import evaluate
    from l2o.registry import load_rule
    from l2o.report import save_eval
    from l2o.reproduce.runner import write_report
    from l2o.tasks import get_task

    plan = make_plan(["techniques"], "cpu", tmp_path, train_seeds=3, tasks=["mlp-orig"])
    task = get_task("mlp-orig")
    finals = []
    for seed, lr in enumerate((0.001, 0.01, 0.1)):
        out = plan.out / plan.eval_key("L2O-DM-CL-IL", "mlp-orig", seed)
        result = evaluate(load_rule("adam", lr=lr), task, 120, [0, 1])
        finals.append(save_eval(result, out, label=f"seed {seed}")["final_ln_loss"]["mean"])
        (out / "done.json").write_text("{}")
    written = write_report(plan, {}, 1.0)
    row = next(r for r in written.tables["techniques"].splitlines() if "L2O-DM-CL-IL" in r)
    low, median, high = sorted(finals)
    assert f"median {median:.2f} [{low:.2f}, {high:.2f}] over 3 training seeds" in row
    assert f"0: {finals[0]:.2f}, 1: {finals[1]:.2f}, 2: {finals[2]:.2f}" in row
    data = json.loads((plan.out / "techniques.json").read_text())
    entry = next(r for r in data["results"] if r["curve"] == "L2O-DM-CL-IL")
    assert entry["training_seeds"] == pytest.approx(
        {"0": finals[0], "1": finals[1], "2": finals[2]}
    )
    assert data["train_seeds"] == 3
    dm = next(r for r in written.tables["techniques"].splitlines() if r.startswith("| L2O-DM |"))
    assert "not run" in dm
    assert (plan.out / "techniques.png").stat().st_size > 10_000
    assert [p.name for p in written] == ["techniques.png", "report.md"]  # what it wrote, only
    md = (plan.out / "techniques.md").read_text()
    assert "curriculum cut at horizon 1,000" in md
    # The paper's claims: only CL + IL's side is measured, so none is judged yet.
    claims = {(c["claim"], c["task"]): c for c in data["claims"]}
    beats_dm = claims[("CL + IL beats plain L2O-DM", "mlp-orig")]
    assert beats_dm["verdict"] == "not measured yet"
    assert beats_dm["better_values"] == pytest.approx(finals) and beats_dm["worse_values"] == []
    assert "| CL + IL beats plain L2O-DM | mlp-orig | - | not measured yet |" in md

    # Plain L2O-DM's three seeds (Adam at far smaller learning rates: slower): judged now,
    # provisionally while one of them is still to come.
    dm_finals = []
    for seed, lr in enumerate((1e-5, 3e-5, 1e-4)):
        out = plan.out / plan.eval_key("L2O-DM", "mlp-orig", seed)
        result = evaluate(load_rule("adam", lr=lr), task, 120, [0, 1])
        dm_finals.append(save_eval(result, out, label=f"seed {seed}")["final_ln_loss"]["mean"])
        (out / "done.json").write_text("{}")
        if seed == 1:
            write_report(plan, {}, 1.0)
            data = json.loads((plan.out / "techniques.json").read_text())
            claims = {(c["claim"], c["task"]): c for c in data["claims"]}
            assert claims[("CL + IL beats plain L2O-DM", "mlp-orig")]["pending"] == 1
            assert claims[("CL + IL beats IL alone", "mlp-orig")]["pending"] == 0  # not measured
            assert "(so far: 1 training seed to come) |" in (plan.out / "techniques.md").read_text()
    write_report(plan, {}, 1.0)
    data = json.loads((plan.out / "techniques.json").read_text())
    claims = {(c["claim"], c["task"]): c for c in data["claims"]}
    beats_dm = claims[("CL + IL beats plain L2O-DM", "mlp-orig")]
    assert beats_dm["pending"] == 0 and "so far" not in (plan.out / "techniques.md").read_text()
    assert beats_dm["worse_values"] == pytest.approx(dm_finals)
    assert beats_dm["worse_median"] == pytest.approx(sorted(dm_finals)[1])
    assert beats_dm["verdict"].startswith("holds")  # learning rates 10x larger and more
    md = (plan.out / "techniques.md").read_text()
    dm_median = sorted(dm_finals)[1]
    margin = dm_median - median
    assert f"L2O-DM-CL-IL {median:.2f} vs L2O-DM {dm_median:.2f} (by {margin:+.2f})" in md


def test_an_evaluation_finds_its_training_after_the_output_folder_moved(tmp_path):
    """A run's state is resumable elsewhere (committed, cloned): done.json's recorded path is gone,
    the checkpoint of that name in the moved folder is used."""
    from l2o.reproduce.runner import _trained_checkpoint

    old, new = tmp_path / "old" / "train" / "x", tmp_path / "new" / "train" / "x"
    new.mkdir(parents=True)
    (new / "best.safetensors").write_bytes(b"weights")
    (new / "done.json").write_text(json.dumps({"checkpoint": str(old / "best.safetensors")}))
    assert _trained_checkpoint(new) == str(new / "best.safetensors")
    old.mkdir(parents=True)
    (old / "best.safetensors").write_bytes(b"weights")
    assert _trained_checkpoint(new) == str(old / "best.safetensors")  # where it still is


@pytest.fixture
def worker_signals():
    """This process as a pool worker (:func:`runner._worker_init`), its handlers put back after."""
    import signal

    from l2o.reproduce import runner

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    runner._worker_init()
    yield runner
    for s, handler in previous.items():
        signal.signal(s, handler)
    runner._INTERRUPTED = False


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_an_idle_worker_survives_a_stop_signal_and_starts_no_new_job(
    tmp_path, worker_signals, signame
):
    # Ctrl-C reaches every worker of the pool; one waiting for work died with a traceback. It now
    # notes the signal, and a job handed to it afterwards ends at once as interrupted.
    import os
    import signal

    os.kill(os.getpid(), getattr(signal, signame))  # idle: no KeyboardInterrupt here
    args = {
        "rule": "adam",
        "lr": 0.01,
        "task": "quadratic",
        "steps": 50,
        "seeds": 1,
        "label": "Adam",
    }
    status = worker_signals._run_job("eval", str(tmp_path / "eval"), args, threads=1)
    assert status["status"] == "interrupted"
    assert not (tmp_path / "eval" / "summary.json").exists()


def test_a_stop_signal_interrupts_the_running_job(tmp_path, worker_signals):
    import os
    import signal
    import threading

    args = {"rule": "adam", "lr": 0.01, "task": "quadratic", "steps": 10**6, "seeds": 1}
    args["label"] = "Adam"
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        status = worker_signals._run_job("eval", str(tmp_path / "eval"), args, threads=1)
    finally:
        timer.cancel()
    assert status["status"] == "interrupted"
    assert not (tmp_path / "eval" / "summary.json").exists()
    assert worker_signals._JOB_RUNNING is False


POOL_SCRIPT = """
import sys, time
from pathlib import Path
from l2o.reproduce.runner import LocalBackend, _run_job

if __name__ == "__main__":
    out = Path(sys.argv[1])
    backend = LocalBackend(jobs=2)
    args = {"rule": "adam", "lr": 0.01, "task": "quadratic", "seeds": 1, "label": "Adam"}
    futures = []
    for name, steps in (("short", 50), ("long", 10**6)):
        (out / name).mkdir(parents=True)
        job = _run_job, "eval", str(out / name), {**args, "steps": steps}, 1
        futures.append(backend.pool.submit(*job))
    print("short:", futures[0].result()["status"], flush=True)
    print("READY", flush=True)  # one worker now waits for work, the other runs "long"
    try:
        time.sleep(120)
    except KeyboardInterrupt:
        backend.shutdown([futures[1]], interrupted=True)
        print("long:", futures[1].result()["status"], flush=True)
"""


def test_ctrl_c_to_a_pool_with_an_idle_worker_stops_it_without_a_traceback(tmp_path):
    # A terminal's Ctrl-C reaches the whole process group: the command, the worker running a job
    # and the worker waiting for one. The waiting worker printed a KeyboardInterrupt traceback.
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    said = ""
    while "READY" not in said:
        line = proc.stdout.readline()
        assert line, f"the pool script ended early:\n{said}"
        said += line
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    said += rest
    assert proc.returncode == 0, said
    assert "short: done" in said and "long: interrupted" in said
    assert "Traceback" not in said and "KeyboardInterrupt" not in said, said
