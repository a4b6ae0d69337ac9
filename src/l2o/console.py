"""Tables and messages of the ``l2o`` command, for people at a terminal and for scripts.

Every table the command prints goes through :func:`print_table`, in one of three forms:

* **terminal** (stdout is a TTY): aligned columns that fit the terminal's width (``COLUMNS``).
  Names and numbers are never cut; the long-text columns (descriptions) and, if the row is still
  too wide, the last columns move to an indented second line as ``header: value``, wrapped at
  word boundaries.
* **plain** (a pipe or a file, or ``--wide``): every column on one line per row, aligned, never
  wrapped, so ``l2o train --list | grep rnnprop-cl-il`` finds the row.
* **json** (``--json``): the same rows as a JSON list of objects with raw values (numbers stay
  numbers), for scripts.

Footnotes go to stdout at a terminal and to stderr otherwise, so a pipe sees only the rows.
Messages go through :func:`plain_print`: no rich markup is interpreted, so ``[min, max]`` survives.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

INDENT = "    "


@dataclass
class Col:
    """One column: ``key`` in the row dicts (and the JSON), ``header`` shown above it.

    ``long`` marks free text (descriptions) that may go on a continuation line at a terminal;
    ``right`` aligns numbers; ``fmt`` turns the raw value into its display text."""

    key: str
    header: str
    long: bool = False
    right: bool = False
    fmt: Callable[[Any], str] | None = None

    def text(self, row: dict[str, Any]) -> str:
        value = row.get(self.key)
        if self.fmt is not None:
            return self.fmt(value)
        return "-" if value is None else str(value)


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stdout) is an interactive terminal."""
    stream = stream or sys.stdout
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def width() -> int:
    """The terminal's width in columns (``COLUMNS`` wins; 80 when unknown)."""
    return max(40, shutil.get_terminal_size((80, 24)).columns)


def _line(cells: Sequence[str], widths: Sequence[int], right: Sequence[bool]) -> str:
    parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
    return "  ".join(parts).rstrip()


def render_table(
    rows: Sequence[dict[str, Any]], cols: Sequence[Col], terminal: bool, max_width: int = 80
) -> list[str]:
    """The lines of a table (see the module docstring for the two text forms)."""
    texts = [{c.key: c.text(r) for c in cols} for r in rows]

    def widths(chosen: Sequence[Col]) -> list[int]:
        return [max([len(c.header)] + [len(t[c.key]) for t in texts]) for c in chosen]

    main = list(cols)
    if terminal:
        # long text first, then the last columns, move to the continuation line until it fits
        if sum(widths(main)) + 2 * (len(main) - 1) > max_width:
            main = [c for c in cols if not c.long]
        while len(main) > 1 and sum(widths(main)) + 2 * (len(main) - 1) > max_width:
            main.pop()
    rest = [c for c in cols if c not in main]
    w, right = widths(main), [c.right for c in main]
    lines = [_line([c.header for c in main], w, right)]
    lines.append(_line(["-" * x for x in w], w, right))
    for t in texts:
        lines.append(_line([t[c.key] for c in main], w, right))
        if rest:
            extra = "; ".join(f"{c.header}: {t[c.key]}" for c in rest if t[c.key] not in ("", "-"))
            if extra:
                lines += textwrap.wrap(
                    extra,
                    width=max_width,
                    initial_indent=INDENT,
                    subsequent_indent=INDENT,
                    break_long_words=False,
                    break_on_hyphens=False,
                )
    return lines


def print_table(
    rows: Sequence[dict[str, Any]],
    cols: Sequence[Col],
    *,
    as_json: bool = False,
    wide: bool = False,
    notes: Sequence[str] = (),
    json_extra: dict[str, Any] | None = None,
) -> None:
    """Print ``rows`` as a table at a terminal, plain lines in a pipe, or JSON (``as_json``).

    ``json_extra`` adds keys beside ``"rows"`` in the JSON form (e.g. the footnotes)."""
    if as_json:
        payload: Any = list(rows)
        if json_extra or notes:
            payload = {"rows": list(rows), **({"notes": list(notes)} if notes else {})}
            payload.update(json_extra or {})
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    terminal = is_terminal() and not wide
    for line in render_table(rows, cols, terminal, width()):
        sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if notes:
        stream = sys.stdout if is_terminal() else sys.stderr
        for note in notes:
            plain_print(note, stream=stream, wrap=is_terminal(stream))


def plain_print(message: str, *, stream: TextIO | None = None, wrap: bool | None = None) -> None:
    """Print ``message`` as it is (no markup), wrapped at word boundaries at a terminal."""
    stream = stream or sys.stderr
    if wrap is None:
        wrap = is_terminal(stream)
    if wrap:
        lines = []
        for para in message.split("\n"):
            lines += textwrap.wrap(
                para, width=width(), break_long_words=False, break_on_hyphens=False
            ) or [""]
        message = "\n".join(lines)
    stream.write(message + "\n")
    stream.flush()


def json_print(obj: Any) -> None:
    """``obj`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def env_flag(name: str) -> bool:
    """Whether the environment variable ``name`` is set to a true value (1, true, yes)."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
