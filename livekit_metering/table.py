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
    if text.isascii():
        return text.rjust(width) if right else text.ljust(width)
    fill = " " * (width - _width(text))
    return fill + text if right else text + fill


def _lines(cell: str, column: Column) -> list[str]:
    if "\n" not in cell and (not column.max_width or len(cell) <= column.max_width):
        return [cell]
    out: list[str] = []
    for part in cell.split("\n"):
        if column.max_width and _width(part) > column.max_width:
            out += textwrap.wrap(part, column.max_width, break_on_hyphens=False) or [""]
        else:
            out.append(part)
    return out


def render_table(title: str, columns: Sequence[Column], rows: Iterable[Sequence[str] | None]) -> str:
    """``title`` above a table of ``columns``; a ``SECTION`` row draws a rule (before a total)."""
    widths = [_width(c.name) for c in columns]
    grid: list[list[list[str]] | None] = []
    for row in rows:
        if row is SECTION:
            grid.append(None)
            continue
        cells = [_lines(str(cell), col) for cell, col in zip(row, columns, strict=True)]
        for i, lines in enumerate(cells):
            for line in lines:
                width = _width(line)
                if width > widths[i]:
                    widths[i] = width
        grid.append(cells)
    right = [c.right for c in columns]

    def rule(left: str, fill: str, cross: str, end: str) -> str:
        return left + cross.join(fill * (w + 2) for w in widths) + end

    out = [title] if title else []
    out.append(rule("┏", "━", "┳", "┓"))
    out.append("┃ " + " ┃ ".join(_pad(c.name, w, c.right) for c, w in zip(columns, widths, strict=True)) + " ┃")
    out.append(rule("┡", "━", "╇", "┩"))
    middle = rule("├", "─", "┼", "┤")
    for wrapped in grid:
        if wrapped is None:
            out.append(middle)
            continue
        for n in range(max(len(lines) for lines in wrapped)):
            texts = (lines[n] if n < len(lines) else "" for lines in wrapped)
            out.append("│ " + " │ ".join(map(_pad, texts, widths, right)) + " │")
    out.append(rule("└", "─", "┴", "┘"))
    return "\n".join(out) + "\n"
