"""Printing for the CLI: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

__all__ = ["emit", "shorten", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    """A cell on one line, whatever its text: a multi-line error would break the table."""
    if value is None:
        return "-"
    return " ".join(str(value).split())


def emit(as_json: bool, data: Any, headers: Sequence[str], rows: Sequence[Sequence[Any]],
         empty: str) -> None:
    """Print ``data`` as JSON, or ``rows`` as a table (``empty`` when there are none)."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    elif rows:
        click.echo(table(headers, rows))
    else:
        click.echo(empty)


def shorten(text: str, width: int = 60) -> str:
    """``text`` on one line of at most ``width`` characters, for a table cell (``show``
    and ``--json`` give it whole)."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"
