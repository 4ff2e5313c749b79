"""A minimal stand-in collector on 127.0.0.1 with scripted faults, and the tests that pin its rules.

It keeps the wire contract of ``POST /v1/records`` (COMMON.md): signed with a livekit-api JWT whose
``sha256`` claim covers the body as sent, optionally gzipped, per-record answers in batch order,
sent after the "commit". It runs in its own thread and loop, because the code under test blocks
(``flush``) and runs its own sender thread.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from livekit.api import TokenVerifier

from livekit_metering.collector.testing import free_port
from livekit_metering.export.client import sign_body
from livekit_metering.records import MeterRecord

API_KEY = "devkey"
API_SECRET = "secret-for-tests-0123456789abcdef-32b"


@dataclass
class StandInCollector:
    """Stores records by id with the duplicate / conflict / checkpoint rules of the real collector.

    ``faults`` is consumed one per request: "429", "503", "commit-then-drop" (store, then cut the
    connection: the answer is lost), "reset" (cut the connection before storing), "slow" (store,
    then answer after ``slow_s``), "500".
    """

    port: int = field(default_factory=free_port)
    faults: list[str] = field(default_factory=list)
    slow_s: float = 0.5
    retry_after: str | None = "0"
    store: dict[str, MeterRecord] = field(default_factory=dict)
    accepted: Counter[str] = field(default_factory=Counter)  # per id: times a new form was stored
    reject_ids: set[str] = field(default_factory=set)  # answered "rejected" (e.g. outside the time window)
    poison_ids: set[str] = field(default_factory=set)  # a batch holding one is refused whole with 400
    requests: int = 0
    request_times: list[float] = field(default_factory=list)  # time.monotonic() of each request
    gzipped_requests: int = 0
    bad_signatures: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- the rules ----------------------------------------------------------------------------------

    def ingest(self, record: MeterRecord) -> dict[str, str]:
        stored = self.store.get(record.id)
        if stored is None or record.supersedes(stored):
            self.store[record.id] = record
            self.accepted[record.id] += 1
            return {"id": record.id, "status": "accepted"}
        if stored.canonical() == record.canonical() or not record.is_final:
            return {"id": record.id, "status": "duplicate"}
        return {"id": record.id, "status": "conflict", "reason": "a different final form is already stored"}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.request_times.append(time.monotonic())
        fault = self.faults.pop(0) if self.faults else None
        if fault == "reset":
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        if fault in ("429", "503", "500"):
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return web.json_response({"error": "busy"}, status=int(fault), headers=headers)
        body = await request.read()
        try:
            claims = TokenVerifier(API_KEY, API_SECRET).verify(request.headers.get("Authorization", ""))
        except Exception:
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        if base64.b64decode(claims.sha256 or "") != hashlib.sha256(body).digest():
            self.bad_signatures += 1
            return web.json_response({"error": "sha256 claim does not match the body"}, status=401)
        if request.headers.get("Content-Encoding") == "gzip":
            self.gzipped_requests += 1
            body = gzip.decompress(body)
        items = json.loads(body)["records"]
        if any(item.get("id") in self.poison_ids for item in items):
            return web.json_response({"error": "records[0]: malformed"}, status=400)
        results: list[dict[str, str]] = []
        for item in items:
            if item.get("id") in self.reject_ids:
                results.append({"id": item["id"], "status": "rejected", "reason": "end: outside the accepted window"})
                continue
            try:
                record = MeterRecord.from_json(item)
            except ValueError as exc:
                results.append({"id": str(item.get("id", "")), "status": "rejected", "reason": str(exc)})
                continue
            results.append(self.ingest(record))
        if fault == "commit-then-drop":
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        return web.json_response({"results": results})

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> StandInCollector:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/v1/records", self.handle)
            # auto_decompress=False: the sha256 claim covers the bytes as sent, so hash them before gunzip.
            self._runner = web.AppRunner(app, handle_signals=False, auto_decompress=False, shutdown_timeout=0.5)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            loop.run_until_complete(site.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "stand-in collector did not start"
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` on the server's loop (to read the store consistently)."""
        assert self._loop is not None
        done = asyncio.run_coroutine_threadsafe(_wrap(fn), self._loop)
        return done.result(10)


async def _wrap(fn: Any) -> Any:
    return fn()


@pytest.fixture
def collector() -> Any:
    server = StandInCollector().start()
    yield server
    server.stop()


# -- the stand-in's own rules, so the shipping tests rest on something checked ---------------------------


def _record(rid: str = "s1/session/agent_session", status: str = "ok", raw: int = 61_000) -> MeterRecord:
    from datetime import datetime, timedelta, timezone

    from livekit_metering.rates import get_policy
    from livekit_metering.records import Resource, Status

    start = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
    return get_policy(None).record(
        id=rid,
        session_id=rid.split("/")[0],
        resource=Resource.AGENT_SESSION,
        raw=raw,
        start=start,
        end=start + timedelta(milliseconds=raw),
        status=Status(status),
    )


async def _post(url: str, records: list[MeterRecord], *, secret: str = API_SECRET) -> tuple[int, Any]:
    body = json.dumps({"records": [r.to_json() for r in records]}).encode()
    headers = {"Authorization": sign_body(body, API_KEY, secret)}
    async with aiohttp.ClientSession() as session, session.post(url + "/v1/records", data=body, headers=headers) as r:
        return r.status, await r.json()


async def test_stand_in_answers_accepted_duplicate_conflict_and_checkpoint_rules(collector: StandInCollector) -> None:
    checkpoint = _record(status="checkpoint", raw=30_000)
    final = _record(raw=61_000)
    other_final = _record(raw=75_000)
    status, body = await _post(collector.url, [checkpoint, final, final, other_final, checkpoint])
    assert status == 200
    assert [r["status"] for r in body["results"]] == ["accepted", "accepted", "duplicate", "conflict", "duplicate"]
    assert collector.store[final.id] == final


async def test_stand_in_refuses_a_bad_signature(collector: StandInCollector) -> None:
    status, body = await _post(collector.url, [_record()], secret="not-the-secret-0123456789abcdef-32bytes")
    assert status == 401 and "signature" in body["error"]
    assert collector.store == {}
