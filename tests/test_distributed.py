"""Data-parallel meta-training on torch.distributed: real gloo process groups on the CPU.

Two ranks and one rank with the same shard size give bit-identical weights; either matches the
unsharded path to float tolerance; a run resumes across a change of world size exactly; a NaN on
one rank makes every rank skip; only rank 0 writes; a killed rank stops the run with one line.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import configs
from l2o.checkpoint import load_training_state
from l2o.io import read_jsonl
from l2o.training import TrainConfig, Trainer, TrainingError, get_recipe
from l2o.training.distributed import end_rank, resolve_shard_size, shard_bounds

TIMEOUT = 240  # a hang fails the test instead of blocking the suite


def tiny_config(**overrides):
    """The shared tiny configuration with 4 instances (so that there is something to shard)."""
    return configs.tiny_config(**{"instances": 4, **overrides})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, flat, out, nan_on_rank):
    """One rank: join the gloo group, train, and record what this rank ended with."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if nan_on_rank == rank:  # test hook: this rank's first shard diverges in its first unroll
        from l2o.training.epochs import SumObjective

        original, calls = SumObjective.unroll, []

        def diverging(self, traj):
            surrogate, meta_loss, traj = original(self, traj)
            calls.append(1)
            return surrogate, (math.nan if len(calls) == 1 else meta_loss), traj

        SumObjective.unroll = diverging
    trainer = Trainer(TrainConfig.from_dict(flat), out)
    summary = trainer.run()
    torch.save(
        {"rule": trainer.rule.state_dict(), "skipped": summary.skipped_meta_steps},
        Path(out).parent / f"{Path(out).name}-rank{rank}.pt",
    )
    # Everything this rank had to do is saved: leave as `l2o train` ranks do, without the
    # interpreter's teardown (gloo's threads can abort it; distributed.end_rank).
    end_rank(0)


def run_ranks(world, config, out, nan_on_rank=None):
    """Train ``config`` in ``out`` on ``world`` spawned gloo ranks; each rank's final state."""
    port = free_port()
    ctx = mp.start_processes(
        _rank,
        args=(world, port, config.to_dict(), str(out), nan_on_rank),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + TIMEOUT
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the ranks hung")
    return [torch.load(out.parent / f"{out.name}-rank{r}.pt") for r in range(world)]


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.rule.state_dict().items()}


def records(path, kind="epoch"):
    return [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in read_jsonl(path / "metrics.jsonl")
        if r["type"] == kind
    ]


def test_two_ranks_equal_one_rank_bitwise_and_resume_across_world_size(tmp_path):
    """--nproc 2 for 2 epochs == 1 process with the same shards (torch.equal); resumed with one
    process for 2 more == an uninterrupted 4-epoch run; the unsharded path agrees to float
    tolerance; only rank 0 wrote (one metrics line per event)."""
    torch.set_num_threads(1)
    config = tiny_config(num_epochs=2)
    ranks = run_ranks(2, config, tmp_path / "two")
    for name, value in ranks[0]["rule"].items():  # every rank ends with the same weights
        assert torch.equal(value, ranks[1]["rule"][name])
    saved = json.loads((tmp_path / "two" / "config.json").read_text())
    assert saved["shard_size"] == 1  # two ranks, no shard size: one instance per shard

    at = {}
    one = Trainer(tiny_config(shard_size=1), tmp_path / "one")
    one.run(lambda e: at.setdefault(e["epoch"], weights(one)) if e["type"] == "epoch" else None)
    state = load_training_state(tmp_path / "two" / "train_state.pt")
    for name, value in at[2].items():
        assert torch.equal(state["rule"][name], value), name
    # metrics (validation scores included: seeds split across ranks, gathered) are the same
    assert records(tmp_path / "two") == records(tmp_path / "one")[:2]
    assert records(tmp_path / "two", "validation") == records(tmp_path / "one", "validation")[:1]

    resumed = Trainer(tiny_config(num_epochs=4), tmp_path / "two", resume=True)
    assert resumed.config.shard_size == 1  # the saved run's shards
    resumed.run()
    for name, value in weights(one).items():
        assert torch.equal(weights(resumed)[name], value), name
    assert records(tmp_path / "two") == records(tmp_path / "one")

    plain = Trainer(tiny_config(num_epochs=2), tmp_path / "plain")  # one shard: today's path
    assert plain.plan is None
    plain.run()
    for name, value in weights(plain).items():
        torch.testing.assert_close(value, at[2][name], rtol=1e-4, atol=1e-6)


def test_nan_on_one_rank_makes_every_rank_skip(tmp_path):
    """One rank's shard diverges in the first unroll: both ranks skip that meta-step, end the
    epoch, and finish with the same weights (no hang)."""
    ranks = run_ranks(2, tiny_config(num_epochs=1), tmp_path / "nan", nan_on_rank=1)
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == 1
    for name, value in ranks[0]["rule"].items():
        assert torch.equal(value, ranks[1]["rule"][name])
    first = records(tmp_path / "nan")[0]
    assert first["skipped_meta_steps"] == 1 and math.isnan(first["meta_loss"])
    assert first["mean_meta_loss"] != first["mean_meta_loss"]  # one (NaN) unroll, then stop


def test_sharded_imitation_epochs_match_the_unsharded_path(tmp_path):
    """Off-policy imitation epochs (L2O-DM/RNNprop) are sharded the same way."""
    settings = dict(num_epochs=2, imitation_ratios=[1.0], teachers=["adam"])
    whole = Trainer(tiny_config(**settings), tmp_path / "whole")
    whole.run()
    sharded = Trainer(tiny_config(shard_size=3, **settings), tmp_path / "sharded")
    sharded.run()
    assert sharded.imitation_epochs == whole.imitation_epochs == 2
    assert shard_bounds(4, 3) == [(0, 3), (3, 4)]  # shards of unequal size
    for name, value in weights(whole).items():
        torch.testing.assert_close(weights(sharded)[name], value, rtol=1e-4, atol=1e-6)


def test_shard_settings_refuse_what_cannot_work(tmp_path):
    assert resolve_shard_size(None, 4, 1) is None  # one process: today's unsharded path
    assert resolve_shard_size(None, 4, 2) == 1
    with pytest.raises(ValueError, match="2 processes need at least 2 shards, but instances 4"):
        resolve_shard_size(4, 4, 2)
    with pytest.raises(ValueError, match="shard_size 5 is larger than instances 4"):
        tiny_config(shard_size=5)
    with pytest.raises(TrainingError, match="log-normalized objective cannot be sharded"):
        Trainer(tiny_config(objective="log-normalized", shard_size=2), tmp_path / "log")
    # the flat record of a run without shards is what earlier versions wrote
    assert "shard_size" not in tiny_config().to_dict()
    assert tiny_config(shard_size=2).to_dict()["shard_size"] == 2
    plain = Trainer(tiny_config(num_epochs=1), tmp_path / "plain")
    plain.run()
    with pytest.raises(TrainingError, match="shard_size: saved run predates it"):
        Trainer(tiny_config(num_epochs=2, shard_size=2), tmp_path / "plain", resume=True)


def _ranks_of(out: Path) -> dict[int, int]:
    """pid of each rank training into ``out`` (read from /proc)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
        except (OSError, PermissionError):
            continue
        if str(out).encode() in cmd:
            for item in env:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(proc.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_killed_rank_stops_the_run_with_one_line_and_resume_continues(tmp_path):
    """`l2o train --nproc 2`: SIGKILL rank 1 after an epoch; the command fails with one line
    naming the rank and --resume; a resumed one-process run continues from the saved epoch."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "l2o.cli", "train", "dm", "--task", "quadratic"]
    cmd += ["--budget", "demo", "--epochs", "60", "--evaluation-period", "30"]
    cmd += ["--instances", "2", "--no-compile", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([*cmd, "--nproc", "2"], stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + TIMEOUT
    while not (out / "train_state.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.2)
    os.kill(_ranks_of(out)[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 1
    message = [line for line in err.splitlines() if "error:" in line]
    assert len(message) >= 1
    assert "rank 1 was killed by signal SIGKILL" in message[-1] and "--resume" in message[-1]
    saved = load_training_state(out / "train_state.pt")["epoch"]
    assert 1 <= saved < 60
    config = get_recipe("dm").config(
        "demo", task="quadratic", num_epochs=saved + 1, evaluation_period=30, instances=2
    )
    resumed = Trainer(config.replace(compile=False), out, resume=True)
    assert resumed.epoch == saved and resumed.config.shard_size == 1
    resumed.run()
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "epoch"] == list(
        range(1, saved + 2)
    )


def test_train_nproc_finishes_with_code_0_and_its_summary_printed(tmp_path):
    """`l2o train --nproc 2` to the end: every rank leaves without the interpreter's teardown
    (distributed.end_rank); the command still exits 0 with rank 0's summary printed and the
    best checkpoint written."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "l2o.cli", "train", "dm", "--task", "quadratic"]
    cmd += ["--budget", "demo", "--epochs", "2", "--evaluation-period", "2"]
    cmd += ["--instances", "2", "--no-compile", "--out", str(out), "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "COLUMNS": "200"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr  # progress and summary go to stderr
    assert "finished after 2 epochs" in said
    assert "evaluate with: l2o evaluate" in said
    assert (out / "best.safetensors").exists()
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "epoch"] == [1, 2]
