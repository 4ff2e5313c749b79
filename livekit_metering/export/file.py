"""JSON-lines file sink: one record per line, appended and flushed before ``export`` returns."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from ..records import MeterRecord, latest_forms

__all__ = ["FileExporter", "read_records"]


class FileExporter:
    """Appends records to a JSON-lines file. Safe to share between threads and jobs of one process."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()

    def export(self, batch: Sequence[MeterRecord]) -> None:
        data = "".join(record.canonical() + "\n" for record in batch).encode()
        with self._lock:
            # O_APPEND makes each write land whole at the end, even with several processes appending.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, data)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def shutdown(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"FileExporter({str(self.path)!r})"


def read_records(path: str | os.PathLike[str], *, latest: bool = True) -> list[MeterRecord]:
    """Read records back from a JSON-lines file, each checked as the collector checks it; the first
    bad line raises InvalidRecord naming it (``path:line: reason``).

    With ``latest`` (the default), each id gives only its final form, or its latest checkpoint
    when the usage never closed: the file holds every checkpoint a session wrote on its way.
    ``livekit_metering.scan.RecordsFile`` reads a file of any size, skipping bad lines instead.
    """
    from ..scan import RecordsFile

    records = list(RecordsFile(path, strict=True).records())
    return latest_forms(records) if latest else records
