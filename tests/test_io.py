"""``l2o.io``: atomic writes with the user's umask, strict JSON lines; and the package's layers
(``import l2o`` loads no plotting library)."""

import json
import os
import subprocess
import sys

import pytest

from l2o.io import (
    append_jsonl,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    read_jsonl,
    write_jsonl,
)


def test_atomic_write_replaces_whole_files_with_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "a" / "b.txt", "first")
        atomic_write_bytes(path, b"second")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"second"
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    assert [p.name for p in path.parent.iterdir()] == ["b.txt"]


def test_a_failed_or_rejected_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = atomic_write_text(tmp_path / "f", "good")

    def broken(out):
        out.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)

    def reject(tmp):
        raise ValueError(f"bad checksum in {tmp.name}")

    with pytest.raises(ValueError, match="bad checksum"):
        atomic_write(path, lambda out: out.write(b"wrong"), verify=reject)
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_json_lines_round_trip_and_corruption_is_reported(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"epoch": 1, "score": float("inf")})
    append_jsonl(path, {"epoch": 2})
    assert read_jsonl(path) == [{"epoch": 1, "score": float("inf")}, {"epoch": 2}]
    write_jsonl(path, [{"epoch": 1}])
    assert path.read_text() == '{"epoch": 1}\n'
    with pytest.raises(TypeError, match="must be a dict"):
        append_jsonl(path, [1, 2])
    with open(path, "a") as f:
        f.write('{"epoch": 2, "sco\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a line of JSON"):
        read_jsonl(path)
    path.write_text('{"epoch": 1}\n[1]\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: expected a JSON object"):
        read_jsonl(path)


def test_import_l2o_loads_no_plotting_library():
    code = (
        "import sys, json, l2o, l2o.training, l2o.checkpoint, l2o.report; "
        "print(json.dumps([m for m in sys.modules if m.split('.')[0] == 'matplotlib']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    import l2o

    assert l2o.__version__ == version("l2o")
