"""What the outbox can tell about itself: how much waits, for how long, and what was lost."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OutboxHealth"]


@dataclass(frozen=True)
class OutboxHealth:
    """A snapshot of one outbox file (shared by every process of the host that writes to it).

    ``dropped`` counts records refused because the outbox was full: they are lost, so alert on it.
    ``dead_letters`` counts records the collector refused (rejected or conflict) since the file was
    created; the latest of them stay in the file's ``dead_letter`` table with the reason, for a human
    to look at (``Outbox.dead_letters()``).
    """

    path: str
    pending: int
    pending_bytes: int
    oldest_pending_age_s: float | None
    dropped: int
    dead_letters: int
    sent: int = 0  # confirmed by the collector during this process's life
    last_error: str | None = None

    @property
    def ok(self) -> bool:
        """Nothing lost and nothing refused (records may still be waiting to be sent)."""
        return self.dropped == 0 and self.dead_letters == 0

    def __str__(self) -> str:
        age = "-" if self.oldest_pending_age_s is None else f"{self.oldest_pending_age_s:.1f}s"
        text = (
            f"pending={self.pending} ({self.pending_bytes} bytes, oldest {age}) sent={self.sent} "
            f"dropped={self.dropped} dead_letters={self.dead_letters}"
        )
        if self.last_error:
            text += f" last_error={self.last_error!r}"
        return text
