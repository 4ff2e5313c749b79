"""Where records go, following LiveKit's conventions: keyword arguments, else environment, else default."""

from __future__ import annotations

import os
from pathlib import Path

from .base import Exporter
from .file import FileExporter

__all__ = ["default_exporter", "default_records_file"]


def default_records_file() -> Path:
    """The embedded default: a JSON-lines file in the user's cache directory."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "livekit-metering" / "records.jsonl"


def default_exporter(*, url: str | None = None, file: str | os.PathLike[str] | None = None) -> Exporter:
    """The exporter for the given options: ``file=`` / LIVEKIT_METERING_FILE, else the default file."""
    file = file or os.environ.get("LIVEKIT_METERING_FILE")
    return FileExporter(file or default_records_file())
