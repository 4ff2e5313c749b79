"""End to end against the project's own collector (``livekit_metering.collector``) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from test_shipping_collector import free_port

from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, run_collector, sign
from livekit_metering.export import Backoff, Outbox
from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource, Status


class CollectorThread:
    """The real collector app, on its own loop in a thread (the outbox's flush blocks its caller)."""

    def __init__(self, database: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._database = database
        self._port = port
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with run_collector(self._database, port=self._port):
            self._ready.set()
            await self._stop.wait()

    def start(self) -> CollectorThread:
        self._thread.start()
        assert self._ready.wait(20), "the collector did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    def session_records(self, session_id: str) -> list[dict[str, Any]]:
        request = urllib.request.Request(
            f"{self.url}/v1/sessions/{session_id}/records", headers={"Authorization": sign()}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            records: list[dict[str, Any]] = json.load(response)["records"]
            return records


@pytest.fixture
def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)


def llm(i: int, start: datetime, session: str = "job-e2e") -> MeterRecord:
    return get_policy(None).record(
        id=f"{session}/llm-{i}/llm_output",
        session_id=session,
        resource=Resource.LLM_OUTPUT,
        raw=100 + i,
        start=start,
        end=start + timedelta(seconds=1),
        model="openai/gpt-4.1-mini",
    )


def session_time(raw: int, status: Status, start: datetime, session: str = "job-e2e") -> MeterRecord:
    return get_policy(None).record(
        id=f"{session}/session/agent_session",
        session_id=session,
        resource=Resource.AGENT_SESSION,
        raw=raw,
        start=start,
        end=start + timedelta(milliseconds=raw),
        status=status,
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[tuple[Outbox, int]]:
    port = free_port()
    box = Outbox(
        tmp_path / "outbox.sqlite3",
        url=f"http://127.0.0.1:{port}",
        api_key=TEST_KEY,
        api_secret=TEST_SECRET,
        backoff=Backoff(0.02, 0.2),
        interval=0.05,
        gzip_min_bytes=4096,
    )
    yield box, port
    box.close()


def test_records_written_while_the_real_collector_is_down_arrive_once_it_is_up(
    tmp_path: Path, outbox: tuple[Outbox, int], now: datetime
) -> None:
    box, port = outbox
    sent = [llm(i, now) for i in range(250)]
    for i in range(0, len(sent), 10):
        box.export(sent[i : i + 10])
    box.export([session_time(30_000, Status.CHECKPOINT, now)])
    final = session_time(95_000, Status.OK, now)
    box.export([final])
    assert not box.flush(0.3)

    collector = CollectorThread(tmp_path / "collector.sqlite3", port).start()
    try:
        assert box.flush(20)
        stored = {r["id"]: r for r in collector.session_records("job-e2e")}
        assert set(stored) == {r.id for r in sent} | {final.id}
        assert MeterRecord.from_json({k: v for k, v in stored[final.id].items() if k != "cost"}) == final
        assert box.health().dead_letters == 0

        # A different final payload for a stored id is a conflict: dead-lettered with the collector's reason.
        box.export([session_time(50_000, Status.OK, now)])
        assert box.flush(10)
        (dead,) = box.dead_letters()
        assert dead[:2] == (final.id, "conflict") and dead[2]
    finally:
        collector.stop()
