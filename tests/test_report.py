"""``l2o.report``'s file writing: atomic, and readable like any other file the user creates."""

import os

from l2o.report import atomic_write_bytes, atomic_write_json


def test_atomic_writes_replace_whole_files_with_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "out" / "report.md"
        atomic_write_bytes(path, b"first")
        atomic_write_bytes(path, b"second")
        atomic_write_json(tmp_path / "out" / "done.json", {"status": "done"})
    finally:
        os.umask(old)
    assert path.read_bytes() == b"second"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)  # not mkstemp's private 0o600
    assert (tmp_path / "out" / "done.json").read_text() == '{\n  "status": "done"\n}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["done.json", "report.md"]
