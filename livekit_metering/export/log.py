"""Log sink: one line per record on the ``livekit_metering.records`` logger, for debugging."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..records import MeterRecord

__all__ = ["LogExporter"]


class LogExporter:
    """Logs each record as ``<resource> <quantity> <unit> <id> <record JSON>`` at ``level``.

    Not durable: use it beside the outbox or a file (``FanoutExporter``), not instead of them.
    """

    def __init__(self, logger: str | logging.Logger = "livekit_metering.records", level: int = logging.INFO) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level

    def export(self, batch: Sequence[MeterRecord]) -> None:
        if not self.logger.isEnabledFor(self.level):
            return
        for record in batch:
            self.logger.log(
                self.level,
                "%s %s %s %s %s",
                record.resource.value,
                format(record.quantity, "f"),
                record.unit.value,
                record.id,
                record.model_dump_json(),
            )

    def shutdown(self) -> None:
        pass
