"""Helpers for the collector tests: record factories, a fresh PostgreSQL database per module,
and signed HTTP calls against a real collector on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from livekit_metering.collector.store.base import billable_of
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, sign
from livekit_metering.rates import get_policy
from livekit_metering.records import MeterRecord, Resource, Status

NOW = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
POLICY = get_policy()


def rec(
    sid: str = "AJ_1",
    usage: str = "llm-1",
    resource: Resource = Resource.LLM_INPUT,
    raw: int = 100,
    *,
    start: datetime | None = None,
    seconds: float = 0,
    status: Status = Status.OK,
    policy: str | None = None,
    **fields: Any,
) -> MeterRecord:
    start = start or NOW
    p = get_policy(policy)
    return p.record(
        id=f"{sid}/{usage}/{resource.value}",
        session_id=sid,
        resource=resource,
        raw=raw,
        start=start,
        end=start + timedelta(seconds=seconds),
        status=status,
        **fields,
    )


def session_cp(sid: str, ms: int, *, status: Status = Status.CHECKPOINT, **fields: Any) -> MeterRecord:
    fields.setdefault("room", f"room-{sid}")
    fields.setdefault("room_sid", f"RM_{sid}")
    fields.setdefault("agent_name", "agent")
    return rec(sid, "session", Resource.AGENT_SESSION, ms, seconds=ms / 1000, status=status, **fields)


def oracle(records: Iterable[MeterRecord]) -> dict[str, int]:
    """Billable base units per resource after each id's latest form wins (what the store must report)."""
    latest: dict[str, MeterRecord] = {}
    for r in records:
        stored = latest.get(r.id)
        if stored is None or r.supersedes(stored):
            latest[r.id] = r
    out: dict[str, int] = defaultdict(int)
    for r in latest.values():
        out[r.resource.value] += billable_of(r)
    return dict(out)


def body_of(records: Iterable[MeterRecord | dict[str, Any]], *, gz: bool = False) -> bytes:
    items = [r if isinstance(r, dict) else r.to_json() for r in records]
    raw = json.dumps({"records": items}).encode()
    return gzip.compress(raw) if gz else raw


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    key: str = TEST_KEY,
    secret: str = TEST_SECRET,
    gz: bool = False,
    auth: str | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": auth if auth is not None else sign(body, key=key, secret=secret)}
    if gz:
        headers["Content-Encoding"] = "gzip"
    async with session.post(f"{url}/v1/records", data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def get(
    session: aiohttp.ClientSession,
    url: str,
    path: str,
    *,
    key: str = TEST_KEY,
    secret: str = TEST_SECRET,
    auth: str | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": auth if auth is not None else sign(key=key, secret=secret)}
    async with session.get(f"{url}{path}", headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def usage_totals(session: aiohttp.ClientSession, url: str, **kw: Any) -> dict[str, Decimal]:
    since = (NOW - timedelta(days=30)).date().isoformat()
    until = (NOW + timedelta(days=2)).date().isoformat()
    status, doc = await get(session, url, f"/v1/usage?group_by=resource&since={since}&until={until}", **kw)
    assert status == 200, doc
    out: dict[str, Decimal] = defaultdict(Decimal)
    for row in doc["rows"]:
        out[row["resource"]] += Decimal(row["quantity"])
    # Records of raw 0 bill nothing but still list their resource; as_quantities leaves zeros out too.
    return {resource: quantity for resource, quantity in out.items() if quantity}


def as_quantities(billable: dict[str, int]) -> dict[str, Decimal]:
    from livekit_metering.records import UNIT_SIZE

    units = {r.value: POLICY.rule(r).unit for r in Resource}
    return {k: Decimal(v) / UNIT_SIZE[units[k]] for k, v in billable.items() if v}


@contextmanager
def fresh_pg_database(pg_url: str) -> Iterator[str]:
    """A new empty database on the test server, dropped afterwards."""
    name = f"lm_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_url.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def reset_pg(url: str) -> None:
    """Empty every collector table (between tests sharing one module database)."""
    conn = await asyncpg.connect(url)
    try:
        exists = await conn.fetchval("SELECT to_regclass('records') IS NOT NULL")
        if exists:
            await conn.execute("TRUNCATE records, rollup, sessions, webhooks, invoices, statements")
    finally:
        await conn.close()


def start_serve(
    database: str | Path, port: int, *args: str, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """``livekit-metering serve`` in a process group of its own (``stop_serve`` ends the whole group,
    workers included), signed with the test key pair unless ``env`` says otherwise."""
    url = str(database) if "://" in str(database) else f"sqlite:///{database}"
    environment = {**os.environ, "LIVEKIT_API_KEY": TEST_KEY, "LIVEKIT_API_SECRET": TEST_SECRET, **(env or {})}
    cmd = [sys.executable, "-c", "from livekit_metering.cli import main; main()", "serve", "--port", str(port)]
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen([*cmd, "--database", url, *args], env=environment, start_new_session=True, **popen)


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the collector's process group (parent and workers) and reap the parent."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def children_of(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
