"""Corrupt or foreign files of every kind the package reads: each is a clear error of a known type
that names the file and the fix, never an exception from deep inside a library.

Counted in docs/reliability.md. Data files are damaged copies of the committed real samples
(tests/fixtures/data), so this runs on a fresh machine without network.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from l2o import data
from l2o.checkpoint import CheckpointError, load_rule_checkpoint, load_training_state, save_rule
from l2o.data import DataError
from l2o.rules import DMRule
from l2o.rules.paper import CHECKPOINTS_ENV, PAPER_CHECKPOINTS, load_paper_rule

RNG = np.random.default_rng(0)


def _garbage(n: int) -> bytes:
    return RNG.integers(0, 256, n, dtype=np.uint8).tobytes()


# --- rule checkpoints (.safetensors with an embedded card) ---------------------------------------


@pytest.fixture
def good_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "best.safetensors"
    save_rule(path, DMRule(), {"recipe": "dm"})
    assert isinstance(load_rule_checkpoint(path), DMRule)
    return path


def _with_card(path: Path, card: str) -> None:
    """Rewrite ``path`` as a valid safetensors file whose l2o card is the text ``card``."""
    tensors = {k: v.contiguous() for k, v in DMRule().state_dict().items()}
    path.write_bytes(st_save(tensors, metadata={"l2o_card": card}))


CHECKPOINT_DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "header_only": lambda p: p.write_bytes(p.read_bytes()[:8]),
    "empty": lambda p: p.write_bytes(b""),
    "random_bytes": lambda p: p.write_bytes(_garbage(4096)),
    "huge_header_length": lambda p: p.write_bytes(struct.pack("<Q", 1 << 62) + b"{}"),
    "foreign_safetensors": lambda p: p.write_bytes(st_save({"w": torch.zeros(3)})),
    "card_not_json": lambda p: _with_card(p, "{not json"),
    "card_a_list": lambda p: _with_card(p, "[1, 2, 3]"),
    "card_unknown_model": lambda p: _with_card(p, json.dumps({"model": "adamw"})),
    "card_model_not_a_string": lambda p: _with_card(p, json.dumps({"model": 5})),
    "card_bad_hyperparameters": lambda p: _with_card(
        p, json.dumps({"model": "dm", "hyperparameters": {"hidden_sizes": "twenty"}})
    ),
    "card_hyperparameters_a_list": lambda p: _with_card(
        p, json.dumps({"model": "dm", "hyperparameters": [20, 20]})
    ),
    "weights_of_another_model": lambda p: _with_card(p, json.dumps({"model": "rnnprop"})),
}


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE))
def test_damaged_rule_checkpoint_is_a_clear_error(good_checkpoint: Path, damage: str) -> None:
    CHECKPOINT_DAMAGE[damage](good_checkpoint)
    with pytest.raises(CheckpointError) as info:
        load_rule_checkpoint(good_checkpoint)
    text = str(info.value)
    assert str(good_checkpoint) in text
    assert any(fix in text for fix in ("re-create it", "only files written by l2o", "re-run"))
    assert "\n" not in text.strip()


def test_missing_rule_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_rule_checkpoint(tmp_path / "nope.safetensors")


# --- training state (train_state.pt) -------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "empty", "a_pickle_with_code"])
def test_damaged_training_state_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "train_state.pt"
    torch.save({"epoch": 3, "rule": DMRule().state_dict()}, path)
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "random_bytes":
        path.write_bytes(_garbage(2048))
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # weights_only refuses to run code, whatever the file claims
        torch.save({"epoch": 3, "hook": shutil.rmtree}, path)
    with pytest.raises(CheckpointError) as info:
        load_training_state(path)
    assert str(path) in str(info.value) and "delete it to start the run afresh" in str(info.value)


# --- the authors' checkpoints (.npz) -------------------------------------------------------------


def _paper_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: bytes | None) -> Path:
    folder = tmp_path / "paper"
    folder.mkdir()
    monkeypatch.setenv(CHECKPOINTS_ENV, str(folder))
    if body is not None:
        (folder / PAPER_CHECKPOINTS["paper:dm-cl-il"][1]).write_bytes(body)
    return folder / PAPER_CHECKPOINTS["paper:dm-cl-il"][1]


def _npz(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


GOOD_NPZ = _npz(**{k: np.zeros(s, np.float32) for k, s in DMRule().npz_state_shapes().items()})
NPZ_DAMAGE = {
    "truncated": (GOOD_NPZ[: len(GOOD_NPZ) // 2], "cannot read paper checkpoint"),
    "random_bytes": (_garbage(3000), "cannot read paper checkpoint"),
    "empty": (b"", "cannot read paper checkpoint"),
    "a_pickle": (b"\x80\x04\x95" + _garbage(100), "cannot read paper checkpoint"),
    "wrong_keys": (_npz(a=np.zeros(3)), "does not hold dm weights.*missing keys"),
    "wrong_shapes": (
        _npz(**{k: np.zeros((2, 2), np.float32) for k in DMRule().npz_state_shapes()}),
        "does not hold dm weights.*wrong shapes",
    ),
}


@pytest.mark.parametrize("damage", list(NPZ_DAMAGE))
def test_damaged_paper_checkpoint_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    body, message = NPZ_DAMAGE[damage]
    path = _paper_dir(tmp_path, monkeypatch, body)
    with pytest.raises(ValueError, match=message) as info:
        load_paper_rule("paper:dm-cl-il")
    assert str(path) in str(info.value) and "Fix:" in str(info.value)


def test_missing_paper_checkpoint_is_a_clear_error(tmp_path, monkeypatch) -> None:
    path = _paper_dir(tmp_path, monkeypatch, None)
    with pytest.raises(FileNotFoundError, match=rf"{CHECKPOINTS_ENV}") as info:
        load_paper_rule("paper:dm-cl-il")
    assert str(path) in str(info.value)


# --- MNIST IDX files -----------------------------------------------------------------------------


def _sample_copy(sample_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(sample_data, root)
    return root


def _rewrite_idx(path: Path, change) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(change(raw), mtime=0))


MNIST_DAMAGE = {
    "truncated_gzip": (
        "train-images-idx3-ubyte.gz",
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        r"expected \d+ bytes of uncompressed train-images-idx3-ubyte.*truncated",
    ),
    "truncated_idx": (
        "t10k-labels-idx1-ubyte.gz",
        lambda p: _rewrite_idx(p, lambda raw: raw[:-7]),
        r"expected \d+ bytes.*truncated or wrong file",
    ),
    "wrong_magic": (
        "t10k-images-idx3-ubyte.gz",
        lambda p: _rewrite_idx(p, lambda raw: b"\x00\x00\x08\x01" + raw[4:]),
        r"MD5 checksum mismatch",
    ),
    "labels_swapped_for_images": (
        "train-labels-idx1-ubyte.gz",
        lambda p: p.write_bytes((p.parent / "t10k-labels-idx1-ubyte.gz").read_bytes()),
        r"expected \d+ bytes",
    ),
    "bit_rot_in_gzip": (
        "train-images-idx3-ubyte.gz",
        lambda p: p.write_bytes(
            (raw := p.read_bytes())[:3000] + bytes([raw[3000] ^ 0xFF]) + raw[3001:]
        ),
        r"corrupt gzip data|MD5 checksum mismatch|expected \d+ bytes",
    ),
    "random_bytes": ("t10k-images-idx3-ubyte.gz", lambda p: p.write_bytes(_garbage(5000)),
                     r"expected \d+ bytes"),
    "empty": ("t10k-labels-idx1-ubyte.gz", lambda p: p.write_bytes(b""), r"expected \d+ bytes"),
}  # fmt: skip


@pytest.mark.parametrize("damage", list(MNIST_DAMAGE))
def test_damaged_mnist_file_is_a_clear_error(
    sample_data: Path, tmp_path: Path, damage: str
) -> None:
    name, change, message = MNIST_DAMAGE[damage]
    root = _sample_copy(sample_data, tmp_path)
    assert data.load_mnist(root, download=False).train_images.shape == (600, 28, 28)
    data.clear_memory_cache()
    change(root / "mnist" / name)
    with pytest.raises(DataError, match=message) as info:
        data.load_mnist(root, download=False)
    assert str(root / "mnist" / name) in str(info.value)
    assert "delete it and re-run" in str(info.value) and "download=True" not in str(info.value)


# --- CIFAR-10 ------------------------------------------------------------------------------------


def _rezip(path: Path, change) -> None:
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members = change(members)
    with zipfile.ZipFile(path, "w") as zf:
        for name, body in members.items():
            zf.writestr(name, body)


CIFAR_DAMAGE = {
    "truncated_zip": (
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        "not a readable zip",
    ),
    "random_bytes": (lambda p: p.write_bytes(_garbage(10_000)), "not a readable zip"),
    "corrupt_jpeg": (
        lambda p: _rezip(p, lambda m: m | {"train/cat/0003.jpg": b"\xff\xd8" + _garbage(300)}),
        r"cannot decode train/cat/0003.jpg",
    ),
    "missing_images": (
        lambda p: _rezip(p, lambda m: {k: v for k, v in m.items() if "/dog/" not in k}),
        r"not a complete CIFAR-10.*train_images: expected shape \(300, 32, 32, 3\)",
    ),
}


@pytest.mark.parametrize("damage", list(CIFAR_DAMAGE))
def test_damaged_cifar_archive_is_a_clear_error(
    sample_data: Path, tmp_path: Path, damage: str
) -> None:
    change, message = CIFAR_DAMAGE[damage]
    root = _sample_copy(sample_data, tmp_path)
    path = root / "cifar10" / "cifar10-jpeg.zip"
    change(path)
    os.utime(path, ns=(1, 1))  # a different stamp than any cached decode
    with pytest.raises(DataError, match=message) as info:
        data.load_cifar10(root, download=False)
    assert str(path) in str(info.value)


def test_corrupt_official_cifar_archive_is_a_clear_error(sample_data: Path, tmp_path: Path):
    (tmp_path / "cifar10").mkdir()
    path = tmp_path / "cifar10" / "cifar-10-binary.tar.gz"
    path.write_bytes(gzip.compress(_garbage(20_000)))
    with pytest.raises(DataError, match=r"MD5 checksum mismatch.*delete it and re-run") as info:
        data.load_cifar10(tmp_path, download=False)
    assert str(path) in str(info.value)


# --- metrics.jsonl -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        '{"type": "epoch", "epoch": 3, "sco',  # a line cut by a kill
        "\x00\x00\x00\x00",
        '{"type": "epoch", "epoch": "three"}',
        '{"type": "epoch", "epoch": null}',
        '["type": "epoch"]',
    ],
)
def test_reproduce_counts_finished_epochs_despite_garbage_in_metrics(tmp_path: Path, garbage):
    from l2o.reproduce.runner import Job, epochs_done

    (tmp_path / "train_state.pt").write_bytes(b"x")
    good = [json.dumps({"type": "epoch", "epoch": e, "score": -1.0}) for e in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("\n".join([*good, garbage]) + "\n")
    job = Job.__new__(Job)
    job.__dict__.update(kind="train", out=tmp_path)
    assert epochs_done(job) == 2
