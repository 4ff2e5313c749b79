"""Where records go, following LiveKit's conventions: keyword arguments, else environment, else default.

- a collector URL (``url=`` / LIVEKIT_METERING_URL): the durable outbox (``outbox=`` /
  LIVEKIT_METERING_OUTBOX, default one file per host in the user's cache directory) and its sender;
- a file (``file=`` / LIVEKIT_METERING_FILE): JSON lines, beside the outbox when both are set;
- neither: the default JSON-lines file in the user's cache directory.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .base import Exporter
from .fanout import FanoutExporter
from .file import FileExporter
from .outbox import Outbox, default_outbox_path

__all__ = ["default_exporter", "default_records_file", "exporter_for", "shared_outbox"]


def default_records_file() -> Path:
    """The embedded default: a JSON-lines file in the user's cache directory."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "livekit-metering" / "records.jsonl"


_shared: dict[tuple[int, str, str], Outbox] = {}
_shared_lock = threading.Lock()


def shared_outbox(url: str, path: str | os.PathLike[str] | None = None) -> Outbox:
    """One outbox (one SQLite connection pair, one sender thread) per process, URL and file.

    Every session's meter in a process shares it, so a busy worker does not start a sender per job.
    """
    resolved = Path(path) if path is not None else default_outbox_path()
    key = (os.getpid(), url, str(resolved.absolute()))
    with _shared_lock:
        outbox = _shared.get(key)
        if outbox is None:
            outbox = _shared[key] = Outbox(resolved, url=url)
        return outbox


def default_exporter(
    *,
    url: str | None = None,
    file: str | os.PathLike[str] | None = None,
    outbox: str | os.PathLike[str] | None = None,
) -> Exporter:
    """The exporter for the given options (see the module docstring for the resolution order)."""
    url = url or os.environ.get("LIVEKIT_METERING_URL") or None
    file = file or os.environ.get("LIVEKIT_METERING_FILE") or None
    return exporter_for(url=url, file=file, outbox=outbox)


def exporter_for(
    *,
    url: str | None,
    file: str | os.PathLike[str] | None,
    outbox: str | os.PathLike[str] | None = None,
) -> Exporter:
    """The exporter for a collector ``url`` and/or a JSON-lines ``file`` already resolved (the outbox
    file still defaults to LIVEKIT_METERING_OUTBOX, else this host's in the cache directory)."""
    if not url:
        return FileExporter(file or default_records_file())
    shipping = shared_outbox(url, outbox or os.environ.get("LIVEKIT_METERING_OUTBOX") or None)
    if file:
        return FanoutExporter(shipping, FileExporter(file))
    return shipping
