"""The Exporter protocol: the one seam between producing records and sending them anywhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..records import MeterRecord

__all__ = ["Exporter"]


@runtime_checkable
class Exporter(Protocol):
    """Takes batches of records. ``export`` returns once the batch is safe (on disk, or sent).

    It is called from the agent's event loop, so it must be quick and must not block on the network.
    """

    def export(self, batch: Sequence[MeterRecord]) -> None: ...

    def shutdown(self) -> None: ...
