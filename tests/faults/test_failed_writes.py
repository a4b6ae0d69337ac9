"""A full disk while saving: the previous file stays intact and no temp file is left behind.

The disk-full error (``OSError(ENOSPC)``) is injected where the atomic writer renames its temp file
into place (``os.replace``) and, separately, where it writes the bytes; a real run on a full disk
fails at one of these. Counted in docs/reliability.md.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from l2o import adam, evaluate, get_task
from l2o.checkpoint import load_rule_checkpoint, save_rule
from l2o.report import load_eval, save_eval
from l2o.rules import DMRule


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


class _FullDiskFile:
    """A file object whose writes fail with ENOSPC, as on a full disk."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        _disk_full()

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _inject(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    if where == "rename":
        monkeypatch.setattr(os, "replace", _disk_full)
    else:
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FullDiskFile(real_fdopen(*a, **k)))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("where", ["rename", "write"])
def test_full_disk_while_saving_a_rule_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    torch.manual_seed(0)
    first, second = DMRule(), DMRule()
    path = tmp_path / "best.safetensors"
    save_rule(path, first, {"recipe": "dm", "epoch": 1})
    before = _snapshot(tmp_path)
    with monkeypatch.context() as m:
        _inject(m, where)
        with pytest.raises(OSError) as info:
            save_rule(path, second, {"recipe": "dm", "epoch": 2})
    assert info.value.errno == errno.ENOSPC
    assert _snapshot(tmp_path) == before  # same files, same bytes, no temp file left
    loaded = load_rule_checkpoint(path)
    assert loaded.card["epoch"] == 1
    for name, value in first.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)


def _result(lr: float):
    return evaluate(adam(lr=lr), get_task("quadratic"), 40, [0, 1])


def _fail_at_call(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    """``os.replace`` works k-1 times, then the disk is full."""
    real, calls = os.replace, []

    def replace(*args, **kwargs):
        calls.append(1)
        if len(calls) >= k:
            _disk_full()
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("where", ["rename", "write"])
def test_full_disk_while_writing_an_evaluation_keeps_the_previous_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    out = tmp_path / "eval"
    first = _result(0.01)
    save_eval(first, out)
    before = _snapshot(out)
    with monkeypatch.context() as m:
        _inject(m, where)
        with pytest.raises(OSError) as info:
            save_eval(_result(0.1), out)
    assert info.value.errno == errno.ENOSPC
    assert _snapshot(out) == before
    summary, losses = load_eval(out)
    assert summary["hyperparameters"]["lr"] == 0.01
    np.testing.assert_array_equal(losses, first.losses.astype(np.float32))


@pytest.mark.parametrize(
    "k",
    [
        2,  # losses.npz replaced, then curves.png fails
        pytest.param(3, id="3"),  # losses.npz and curves.png replaced, then summary.json fails
    ],
)
def test_full_disk_midway_through_an_evaluation_keeps_one_consistent_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    out = tmp_path / "eval"
    first = _result(0.01)
    save_eval(first, out)
    before = _snapshot(out)
    with monkeypatch.context() as m:
        _fail_at_call(m, k)
        with pytest.raises(OSError):
            save_eval(_result(0.1), out)
    assert _snapshot(out) == before
    summary, losses = load_eval(out)
    assert summary["hyperparameters"]["lr"] == 0.01
    np.testing.assert_array_equal(losses, first.losses.astype(np.float32))


def _fail_at_write(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    """The k-th file opened by the atomic writers cannot be written: the disk fills midway."""
    real, calls = os.fdopen, []

    def fdopen(*args, **kwargs):
        calls.append(1)
        f = real(*args, **kwargs)
        return _FullDiskFile(f) if len(calls) >= k else f

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("k", [2, 3])
def test_disk_filling_while_writing_the_later_files_keeps_the_previous_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    out = tmp_path / "eval"
    save_eval(_result(0.01), out)
    before = _snapshot(out)
    with monkeypatch.context() as m:
        _fail_at_write(m, k)
        with pytest.raises(OSError) as info:
            save_eval(_result(0.1), out)
    assert info.value.errno == errno.ENOSPC
    assert _snapshot(out) == before
    assert load_eval(out)[0]["hyperparameters"]["lr"] == 0.01


def test_a_new_result_replaces_the_previous_one_whole(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    save_eval(_result(0.01), out)
    second = _result(0.1)
    save_eval(second, out, label="second")
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "losses.npz", "summary.json"]
    summary, losses = load_eval(out)
    assert summary["hyperparameters"]["lr"] == 0.1 and summary["label"] == "second"
    np.testing.assert_array_equal(losses, second.losses.astype(np.float32))
