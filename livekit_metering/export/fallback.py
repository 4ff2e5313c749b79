"""Never nowhere: a batch the configured exporter cannot take goes to the local JSON-lines file instead."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from ..records import MeterRecord
from .base import Exporter
from .file import FileExporter

__all__ = ["FallbackExporter", "file_instead", "with_fallback"]

logger = logging.getLogger("livekit_metering")

_said: set[str] = set()  # once per process and destination, however many jobs share it
_said_lock = threading.Lock()


class FallbackExporter:
    """Exports to ``primary``; a batch it refuses (closed outbox, full disk, a broken sink) is appended
    to the JSON-lines file at ``path`` instead. The first such failure of a destination is logged with
    its reason, once per process."""

    def __init__(self, primary: Exporter, path: str | Path | None = None) -> None:
        from .config import default_records_file

        self.primary = primary
        self.path = Path(path) if path is not None else default_records_file()
        self._file: FileExporter | None = None

    def export(self, batch: Sequence[MeterRecord]) -> None:
        try:
            self.primary.export(batch)
            return
        except Exception as exc:
            error = exc
        if self._file is None:
            self._file = FileExporter(self.path)
        self._file.export(batch)  # if the file fails too, the caller logs it: nothing else is left
        key = repr(self.primary)
        with _said_lock:
            first = key not in _said
            _said.add(key)
        if first:
            logger.error(
                "livekit-metering: records cannot go to %r (%s: %s); writing them to %s instead (said once)",
                self.primary,
                type(error).__name__,
                error,
                self.path,
            )

    def shutdown(self) -> None:
        self.primary.shutdown()

    def __repr__(self) -> str:
        return f"FallbackExporter({self.primary!r}, {str(self.path)!r})"


def with_fallback(exporter: Exporter, path: str | Path | None = None) -> Exporter:
    """``exporter`` with the JSON-lines file at ``path`` (default: the default records file) behind it;
    a FileExporter already writing that file is returned as it is."""
    fallback = FallbackExporter(exporter, path)
    if isinstance(exporter, FileExporter) and exporter.path.absolute() == fallback.path.absolute():
        return exporter
    return fallback


def file_instead(error: Exception) -> FileExporter:
    """The default records file, for when the configured exporter cannot even be built (said once)."""
    from .config import default_records_file

    path = default_records_file()
    with _said_lock:
        first = str(error) not in _said
        _said.add(str(error))
    if first:
        logger.error(
            "livekit-metering could not set up where records go (%s: %s); writing them to %s instead",
            type(error).__name__,
            error,
            path,
        )
    return FileExporter(path)
