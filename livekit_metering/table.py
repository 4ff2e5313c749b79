"""Plain-text tables for the commands: box-drawn, wrapped to each column's width, built in one pass.

Rich renders a table cell by cell through its console machinery, which costs about a millisecond a
row; the price book (hundreds of rows) or a long report took seconds. These tables need none of it:
fixed boxes, left or right aligned cells, long text wrapped at word boundaries.
"""

from __future__ import annotations

import textwrap
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["SECTION", "Column", "render_table"]

SECTION = None  # a row that is a rule: what follows (a total) is set apart


@dataclass(frozen=True)
class Column:
    name: str
    right: bool = False  # numbers: right-aligned
    max_width: int = 0  # wrap longer cells (0: never)


def _width(text: str) -> int:
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * (width - _width(text))
    return fill + text if right else text + fill


def _lines(cell: str, column: Column) -> list[str]:
    out: list[str] = []
    for part in cell.split("\n") or [""]:
        if column.max_width and _width(part) > column.max_width:
            out += textwrap.wrap(part, column.max_width, break_on_hyphens=False) or [""]
        else:
            out.append(part)
    return out


def render_table(title: str, columns: Sequence[Column], rows: Iterable[Sequence[str] | None]) -> str:
    """``title`` above a table of ``columns``; a ``SECTION`` row draws a rule (before a total)."""
    wrapped: list[list[list[str]] | None] = [
        None if row is SECTION else [_lines(str(cell), col) for cell, col in zip(row, columns, strict=True)]
        for row in rows
    ]
    widths = [_width(c.name) for c in columns]
    for row in wrapped:
        for i, cell in enumerate(row or ()):
            widths[i] = max(widths[i], *(_width(line) for line in cell))

    def rule(left: str, fill: str, cross: str, right: str) -> str:
        return left + cross.join(fill * (w + 2) for w in widths) + right

    out = [title] if title else []
    out.append(rule("┏", "━", "┳", "┓"))
    out.append("┃" + "┃".join(f" {_pad(c.name, w, c.right)} " for c, w in zip(columns, widths, strict=True)) + "┃")
    out.append(rule("┡", "━", "╇", "┩"))
    for row in wrapped:
        if row is None:
            out.append(rule("├", "─", "┼", "┤"))
            continue
        for n in range(max(len(cell) for cell in row)):
            cells = (
                f" {_pad(cell[n] if n < len(cell) else '', w, c.right)} "
                for cell, c, w in zip(row, columns, widths, strict=True)
            )
            out.append("│" + "│".join(cells) + "│")
    out.append(rule("└", "─", "┴", "┘"))
    return "\n".join(out) + "\n"
