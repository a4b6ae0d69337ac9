"""The package's file writing: atomic writes and JSON lines, in one place.

Every file ``l2o`` writes for later reading (checkpoints, training states, summaries, reports,
figures, downloaded data and caches) goes through :func:`atomic_write`: the bytes land in a temp
file beside the destination, are optionally verified, and are renamed into place, so a reader (or
a run killed half way) only ever sees no file or a complete one. The file gets the permissions of
any other file the user creates (``0o666`` less the umask): ``mkstemp`` alone would make it
private, and reports, checkpoints and data caches are meant to be shared.

Logs that grow a record at a time (``metrics.jsonl``) are JSON lines: :func:`append_jsonl` adds
one object per line, :func:`read_jsonl` reads them back and stops with the file and line number
on anything that is not one JSON object (a corrupt log is never skipped silently).
:func:`read_jsonl_torn_tail` is the reader for a log that is about to be appended to again (a
resumed training run): a last line cut short by a kill during its append is dropped and
reported, while damage anywhere else is still an error.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any


def umask() -> int:
    """The process's current umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(
    path: Path | str,
    write: Callable[[IO[bytes]], object],
    verify: Callable[[Path], object] | None = None,
) -> Path:
    """Write through ``write(file)`` to a temp file beside ``path``, ``verify(temp_path)`` it if
    given (raise to reject), then rename it into place with the user's umask applied. On any
    error the temp file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        if verify is not None:
            verify(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically."""
    return atomic_write(path, lambda out: out.write(data))


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    """Replace ``path`` with ``obj`` as indented JSON (and a final newline) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _line(record: dict[str, Any]) -> str:
    if not isinstance(record, dict):
        raise TypeError(f"a JSON-lines record must be a dict, got {type(record).__name__}")
    return json.dumps(record) + "\n"


def append_jsonl(path: Path | str, record: dict[str, Any]) -> None:
    """Append ``record`` as one line of JSON (the whole line in one write, flushed)."""
    line = _line(record)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (blank lines allowed). A line that is not a JSON object
    raises ``ValueError`` naming the file and line: a corrupt log is never skipped silently."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}:{number}: not a line of JSON ({err}); the file is corrupt: delete or "
                "repair that line"
            ) from err
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {line[:60]!r}")
        records.append(record)
    return records


def read_jsonl_torn_tail(path: Path | str) -> tuple[list[dict[str, Any]], str | None]:
    """``(records, torn)``: the records of a JSON-lines file whose *last* line may be torn.

    A process killed while :func:`append_jsonl` writes can leave the file ending in part of a
    line. Such a last line (one that is not a JSON object) is left out and returned as ``torn``
    (``None`` when the file is whole), so the caller can say so and rewrite the file. Any other
    bad line is an error as in :func:`read_jsonl`: only the end of a log is ever written last."""
    path = Path(path)
    raw = path.read_bytes().split(b"\n")
    while raw and not raw[-1].strip():
        raw.pop()
    torn = None
    if raw:
        try:
            whole = isinstance(json.loads(raw[-1]), dict)
        except ValueError:  # not JSON, or not UTF-8 (a multi-byte character cut in two)
            whole = False
        if not whole:
            torn = raw.pop().decode("utf-8", errors="replace")
    records = []
    for number, data in enumerate(raw, 1):
        if not data.strip():
            continue
        try:
            line = data.decode("utf-8")
            record = json.loads(line)
        except ValueError as err:
            raise ValueError(
                f"{path}:{number}: not a line of JSON ({err}); the file is corrupt: delete or "
                "repair that line"
            ) from err
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {line[:60]!r}")
        records.append(record)
    return records, torn


def write_jsonl(path: Path | str, records: Iterable[dict[str, Any]]) -> Path:
    """Replace ``path`` with ``records``, one per line, atomically."""
    return atomic_write_text(path, "".join(_line(r) for r in records))


__all__ = [
    "append_jsonl",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "read_jsonl",
    "read_jsonl_torn_tail",
    "umask",
    "write_jsonl",
]
