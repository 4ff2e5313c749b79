"""What ``livekit-metering outbox`` does: an outbox file's health and latest dead letters; flushing it,
retrying or clearing its dead letters."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .outbox import Outbox, default_outbox_path
from .store import OutboxStore

__all__ = ["OutboxMissing", "OutboxReport", "outbox_status"]


class OutboxMissing(FileNotFoundError):
    """There is no outbox file at that path (or the file there is not an outbox)."""


@dataclass
class OutboxReport:
    """What the command prints, and whether it did what was asked (``failed`` says why not)."""

    text: str
    failed: str = ""


def _check_outbox(file: Path) -> None:
    """Refuse a path that is not an outbox before opening it for writing (which would add tables to it)."""
    if not file.exists():
        raise OutboxMissing(
            f"no outbox at {file}; pass --path (or set LIVEKIT_METERING_OUTBOX) to the file the agents write"
        )
    if file.is_dir():
        raise OutboxMissing(f"{file} is a directory, not an outbox file: pass --path to the outbox's .sqlite3 file")
    try:
        conn = sqlite3.connect(f"file:{file}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        tables = set()
    if not {"pending", "dead_letter", "stats"} <= tables:
        raise OutboxMissing(
            f"{file} is not a livekit-metering outbox (records files and collector databases are not): "
            "pass --path to the outbox file, by default outbox-<host>.sqlite3 in ~/.cache/livekit-metering"
        )


def outbox_status(
    path: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    flush_timeout: float | None = None,
    retry_dead: bool = False,
    clear_dead: bool = False,
    dead: int = 10,
) -> OutboxReport:
    """Health of the outbox at ``path`` (default: this host's). First, if asked: dead letters put back
    to be sent again (``retry_dead``) or given up (``clear_dead``); then a flush to ``url`` within
    ``flush_timeout`` seconds."""
    file = Path(path) if path is not None else default_outbox_path()
    _check_outbox(file)
    if retry_dead and clear_dead:
        raise ValueError("--retry-dead and --clear-dead contradict each other: give one")
    if flush_timeout is not None and not url:
        raise ValueError("--flush needs the collector URL: pass --url or set LIVEKIT_METERING_URL")
    lines: list[str] = []
    failed = ""
    if retry_dead or clear_dead:
        store = OutboxStore(file)
        try:
            if retry_dead:
                requeued, dropped = store.retry_dead_letters()
                lines.append(f"dead letters put back to send again: {requeued}")
                if dropped:
                    failed = f"{dropped} dead letter(s) did not fit under the outbox's cap and were dropped"
            else:
                lines.append(f"dead letters cleared: {store.clear_dead_letters()}")
        finally:
            store.close()
    sent = 0
    if flush_timeout is not None:
        assert url is not None
        outbox = Outbox(file, url=url)
        try:
            emptied = outbox.flush(flush_timeout)
            after = outbox.health()  # before shutdown: the sender's count of what it delivered
        finally:
            outbox.shutdown(timeout=0)
        sent = after.sent
        if emptied:
            lines.append(f"flushed: sent {sent}, the outbox is empty")
        else:
            why = f"last error: {after.last_error}" if after.last_error else "another process may be sending them"
            lines.append(f"flush: sent {sent}, {after.pending} still pending ({why})")
            failed = failed or (
                f"the flush did not empty the outbox within {flush_timeout:g}s: {after.pending} pending ({why})"
            )
    store = OutboxStore(file)
    try:
        health = store.health(sent=sent)
        letters = store.dead_letters()[-dead:] if dead > 0 else []
    finally:
        store.close()
    lines.append(f"outbox {file}")
    lines.append(f"  {health}")
    for rid, status, reason, _ in letters:
        lines.append(f"  dead letter {rid}: {status}: {reason}")
    return OutboxReport("\n".join(lines) + "\n", failed)
