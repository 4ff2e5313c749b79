"""What ``livekit-metering outbox`` prints: an outbox file's health and its latest dead letters."""

from __future__ import annotations

import os
from pathlib import Path

from .outbox import Outbox, default_outbox_path
from .store import OutboxStore

__all__ = ["OutboxMissing", "outbox_status"]


class OutboxMissing(FileNotFoundError):
    """There is no outbox file at that path: nothing was recorded there, or the path is wrong."""


def outbox_status(
    path: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    flush_timeout: float | None = None,
    dead: int = 10,
) -> str:
    """Health of the outbox at ``path`` (default: this host's), after sending it to ``url`` if ``flush_timeout``."""
    file = Path(path) if path is not None else default_outbox_path()
    if not file.exists():
        raise OutboxMissing(
            f"no outbox at {file}; pass --path (or set LIVEKIT_METERING_OUTBOX) to the file the agents write"
        )
    lines = []
    if flush_timeout is not None:
        if not url:
            raise ValueError("--flush needs the collector URL: pass --url or set LIVEKIT_METERING_URL")
        outbox = Outbox(file, url=url)
        try:
            emptied = outbox.flush(flush_timeout)
        finally:
            outbox.shutdown(timeout=0)
        lines.append("flushed: the outbox is empty" if emptied else "flush: records are still pending")
    store = OutboxStore(file)
    try:
        health = store.health()
        letters = store.dead_letters()[-dead:] if dead > 0 else []
    finally:
        store.close()
    lines.append(f"outbox {file}")
    lines.append(f"  {health}")
    for rid, status, reason, _ in letters:
        lines.append(f"  dead letter {rid}: {status}: {reason}")
    return "\n".join(lines) + "\n"
