"""Fan-out: one batch to several exporters (the outbox and a file, the log while debugging...)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..records import MeterRecord
from .base import Exporter

__all__ = ["FanoutExporter"]

logger = logging.getLogger("livekit_metering")


class FanoutExporter:
    """Exports each batch to every exporter, in order. One failing sink does not starve the others;
    the first error is raised after all were tried, so the caller still counts the failure."""

    def __init__(self, *exporters: Exporter) -> None:
        if not exporters:
            raise ValueError("FanoutExporter needs at least one exporter")
        self.exporters: tuple[Exporter, ...] = exporters

    def export(self, batch: Sequence[MeterRecord]) -> None:
        error: Exception | None = None
        for exporter in self.exporters:
            try:
                exporter.export(batch)
            except Exception as exc:
                if error is None:
                    error = exc
                else:
                    logger.error("livekit-metering: exporter %r failed too: %s", exporter, exc)
        if error is not None:
            raise error

    def shutdown(self) -> None:
        for exporter in self.exporters:
            try:
                exporter.shutdown()
            except Exception:
                logger.exception("livekit-metering: exporter %r failed to shut down", exporter)
