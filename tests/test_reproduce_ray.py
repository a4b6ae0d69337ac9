"""``l2o reproduce --backend ray``: the same jobs as the local pool, on a local Ray, with the same
results; and a clear error where Ray is not installed."""

import ipaddress
import json
import socket
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from l2o.cli import app
from l2o.reproduce import make_plan

_CONNECT = socket.socket.connect  # before conftest blocks the network for each test


def test_ray_backend_without_ray_names_the_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = ["reproduce", "fig5", "--budget", "demo", "--backend", "ray", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--plan"])
    assert result.exit_code == 2
    assert "pip install 'l2o[ray]'" in result.output and "not installed" in result.output
    bad = CliRunner().invoke(app, [*args[:-4], "--backend", "dask", "--plan"])
    assert bad.exit_code == 2 and "unknown backend 'dask'" in bad.output


def _local_only(sock, address):
    """Ray's processes talk over local sockets; anything else is still refused."""
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise OSError("tests must not touch the network")
    return _CONNECT(sock, address)


@pytest.mark.slow
def test_ray_backend_runs_the_same_jobs_with_the_same_results(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from l2o.reproduce.runner import run_plan

    monkeypatch.setattr(socket.socket, "connect", _local_only)
    size = dict(steps=20, seeds=2, weights="paper", tasks=["mlp-orig"])
    local = make_plan(["fig5"], "demo", tmp_path / "local", **size)
    on_ray = make_plan(["fig5"], "demo", tmp_path / "ray", **size)
    assert local.jobs.keys() == on_ray.jobs.keys()
    statuses = run_plan(local, jobs=2)
    assert {s["status"] for s in statuses.values()} == {"done"}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        lines = []
        statuses = run_plan(on_ray, jobs=2, backend="ray", log=lines.append, max_retries=1)
        assert ray.is_initialized()  # a Ray the caller started is left running
    finally:
        ray.shutdown()
    assert {s["status"] for s in statuses.values()} == {"done"}, statuses
    assert "12 jobs to run (0 already done), 2 at a time on Ray (2 CPUs, 1 per job)" in lines
    assert any("ETA" in line for line in lines)
    for key, job in local.jobs.items():
        other = on_ray.jobs[key].out
        assert (other / "done.json").exists(), key
        if job.kind == "grid":
            mine, theirs = (json.loads((d / "done.json").read_text()) for d in (job.out, other))
            assert mine["scores"] == theirs["scores"] and mine["best_lr"] == theirs["best_lr"]
        else:
            a, b = np.load(job.out / "losses.npz"), np.load(other / "losses.npz")
            assert a.files == b.files
            assert all(np.array_equal(a[f], b[f]) for f in a.files), key

    # Idempotent: every job is done, so nothing runs (and no Ray is started for nothing).
    assert run_plan(on_ray, jobs=2, backend="ray", log=lines.append) == {
        k: {"status": "done (earlier)"} for k in on_ray.jobs
    }
