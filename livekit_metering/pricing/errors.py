"""Errors of the price book. Each message names what is wrong and what to do."""

from __future__ import annotations

__all__ = ["InvalidMonth", "InvalidPriceBook", "UnknownPlan"]


class InvalidPriceBook(ValueError):
    """A price file is malformed: the message names the file, the row and the field."""


class UnknownPlan(KeyError):
    """No plan has this id."""

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidMonth(ValueError):
    """A month is not written as YYYY-MM."""
