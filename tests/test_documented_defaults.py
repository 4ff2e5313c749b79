"""The defaults the README states are the ones the code uses: each figure is read from the README's
own sentence and compared with what a default outbox, a default collector and ``serve`` use, so
changing either side alone fails here."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import typer

README = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())  # one line: sentences wrap


def documented(pattern: str) -> tuple[str, ...]:
    found = re.search(pattern, README)
    assert found, f"the README no longer says {pattern!r}"
    return found.groups()


def number(text: str) -> float:
    return float(text.replace(",", ""))


def test_the_outbox_defaults(tmp_path: Path) -> None:
    from livekit_metering.export.config import default_exporter
    from livekit_metering.export.outbox import Outbox

    outbox = default_exporter(url="http://127.0.0.1:9", outbox=tmp_path / "outbox.sqlite3")
    assert isinstance(outbox, Outbox)
    try:
        (flush,) = documented(r"At the end of a job the outbox flushes for at most (\d+) s")
        assert outbox.shutdown_timeout == number(flush) == 5
        base, cap = documented(r"full-jitter backoff \(([\d.]+) s doubling to (\d+) s\)")
        backoff = outbox._sender.backoff  # type: ignore[union-attr]
        assert (backoff.base, backoff.cap) == (number(base), number(cap)) == (0.5, 30)
        records, megabytes = documented(r"The outbox is capped \(([\d,]+) records / (\d+) MB\)")
        store = outbox._store
        assert (store.max_records, store.max_bytes) == (number(records), number(megabytes) * 2**20) == (500_000, 2**28)
    finally:
        outbox.shutdown(0)


def _serve_defaults() -> dict[str, Any]:
    from livekit_metering.cli import app

    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    return {param.name: param.default for param in command.params}


def test_the_collector_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from livekit_metering.collector.config import Limits
    from livekit_metering.collector.serve import build_config
    from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET

    monkeypatch.setenv("LIVEKIT_API_KEY", TEST_KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", TEST_SECRET)
    serve = _serve_defaults()
    # What `serve` runs with: its option defaults, through build_config.
    limited = ("max_body_bytes", "max_batch", "max_past_days", "max_future_seconds", "max_token_minutes")
    limited += ("body_timeout_seconds", "dashboard_session_hours")
    limits = build_config(**{name: serve[name] for name in limited}).limits
    for configured in (limits, Limits()):
        mib, batch = documented(r"`--max-body-bytes` \((\d+) MiB\), `--max-batch` \((\d+)\)")
        assert (configured.max_body_bytes, configured.max_batch) == (number(mib) * 2**20, number(batch))
        days, minutes = documented(r"times from (\d+) days back to (\d+) minutes ahead")
        assert configured.max_past == timedelta(days=number(days)) == timedelta(days=35)
        assert configured.max_future == timedelta(minutes=number(minutes)) == timedelta(minutes=5)
        (body_timeout,) = documented(r"`--body-timeout-seconds` \((\d+)\)")
        assert configured.body_timeout == timedelta(seconds=number(body_timeout)) == timedelta(seconds=30)
        (token_minutes,) = documented(r"`--max-token-minutes` \((\d+)\)")
        assert configured.max_token_lifetime == timedelta(minutes=number(token_minutes)) == timedelta(minutes=10)
        (session_hours,) = documented(r"`--dashboard-session-hours`, (\d+)\)")
        assert configured.dashboard_session == timedelta(hours=number(session_hours)) == timedelta(hours=8)
    (stale,) = documented(r"`--close-stale-after-minutes` \((\d+)\)")
    assert serve["close_stale_after_minutes"] == number(stale) == 15
    (port,) = documented(r"livekit-metering serve --host 127\.0\.0\.1 --port (\d+)")
    assert serve["port"] == number(port)
    assert serve["database"] == "sqlite:///metering.db" and "./metering.db" in README
