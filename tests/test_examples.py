"""The examples are real code: they import against livekit-agents 1.8.9, build their models, and run."""

from __future__ import annotations

import csv
import importlib
import io
import json
import pickle
import sys
from collections import defaultdict
from contextlib import redirect_stdout
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from usage_samples import month_of_sessions

from livekit_metering.adapters import is_metered
from livekit_metering.entrypoint import MeteredEntrypoint
from livekit_metering.export import FileExporter
from livekit_metering.pricing import PriceBook

EXAMPLES = Path(__file__).parent.parent / "examples"


def load(name: str) -> ModuleType:
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.mark.parametrize(("name", "agent_name"), [("voice_agent", "bike-shop"), ("customer_agent", "support")])
def test_agents_register_a_metered_entrypoint_that_pickles(name: str, agent_name: str) -> None:
    module = load(name)
    server = module.server
    assert server._agent_name == agent_name
    entry = server._entrypoint_fnc
    assert isinstance(entry, MeteredEntrypoint)
    assert pickle.loads(pickle.dumps(entry)) is entry  # by reference: the job process re-imports the module


async def test_voice_agent_models_are_liveKit_inference_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_API_KEY", "APIexample")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "example-secret-example-secret-example")
    monkeypatch.setenv("LIVEKIT_URL", "wss://example.livekit.cloud")
    from livekit.agents import inference

    module = load("voice_agent")
    session = module.build_session()
    try:
        assert isinstance(session.stt, inference.STT) and is_metered(session.stt)
        assert isinstance(session.llm, inference.LLM) and is_metered(session.llm)
        assert isinstance(session.tts, inference.TTS) and is_metered(session.tts)
        # The models keep their identity, which is also the id the price book knows.
        assert session.llm.model == module.LLM_MODEL
        book = PriceBook.bundled()
        for model in (module.STT_MODEL, module.LLM_MODEL, module.TTS_MODEL):
            assert book.select(model=model), f"{model} is not in the price book"
    finally:
        await session.aclose()


def fake_ctx(metadata: str, attributes: dict[str, str] | None = None) -> Any:
    participants = {"caller": SimpleNamespace(attributes=attributes or {})}
    return SimpleNamespace(
        job=SimpleNamespace(metadata=metadata), room=SimpleNamespace(remote_participants=participants)
    )


def test_customer_comes_from_dispatch_metadata_then_participant_attributes() -> None:
    module = load("customer_agent")
    assert module.customer_of(fake_ctx(json.dumps({"customer_id": "acme", "tier": "gold"}))) == "acme"
    assert module.customer_of(fake_ctx("", {"customer_id": "globex"})) == "globex"
    assert module.customer_of(fake_ctx("not json", {})) is None
    assert module.plan_tier(fake_ctx(json.dumps({"customer_id": "acme", "tier": "gold"}))) == {"tier": "gold"}


def test_chargeback_per_customer(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    start = datetime(now.year, now.month, 1, tzinfo=timezone.utc) - timedelta(days=40)
    month_start = datetime(start.year, start.month, 1, tzinfo=timezone.utc)
    records = [r for r in month_of_sessions(month_start, unpriced=False) if r.start.month == month_start.month]
    path = tmp_path / "records.jsonl"
    FileExporter(path).export(records)
    module = load("customer_costs")
    out = io.StringIO()
    with redirect_stdout(out):
        code = module.main([str(path), "--month", f"{month_start:%Y-%m}", "--margin", "30", "--csv"])
    assert code == 0
    rows = {row["customer"]: row for row in csv.DictReader(io.StringIO(out.getvalue()))}

    book = PriceBook.bundled()
    cost: dict[str, Decimal] = defaultdict(Decimal)
    sessions: dict[str, set[str]] = defaultdict(set)
    for r in records:
        cost[r.customer] += book.price_of(r, plan="ship") or Decimal(0)
        sessions[r.customer].add(r.session_id)
    assert set(rows) == set(cost) == {"acme", "globex", "initech"}
    for customer, total in cost.items():
        assert int(rows[customer]["sessions"]) == len(sessions[customer])
        assert Decimal(rows[customer]["cost_usd"]) == total.quantize(Decimal("0.0001"))
        assert Decimal(rows[customer]["charge_usd"]) == (total * Decimal("1.3")).quantize(
            Decimal("0.01"), ROUND_HALF_UP
        )


def test_chargeback_names_a_bad_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = load("customer_costs")
    assert module.main([str(tmp_path / "missing.jsonl"), "--month", "2026-11"]) == 2
    assert "no records file" in capsys.readouterr().err


@pytest.mark.postgres
@pytest.mark.slow
async def test_postgres_deployment_serves_agents_and_the_dashboard_link(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deployment's command line and files, on a fresh PostgreSQL database: ingest, query, isolation."""
    import asyncio
    import os
    import subprocess
    import uuid

    import aiohttp
    import asyncpg

    from livekit_metering.collector.testing import batch_body, free_port, sign, signed_headers, wait_healthy

    name = f"lkm_deploy_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(pg_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    database = pg_url.rsplit("/", 1)[0] + "/" + name
    keys = tmp_path / "keys.toml"
    keys.write_text((EXAMPLES / "collector_postgres" / "keys.toml.example").read_text())
    port = free_port()
    env = {
        **os.environ,
        "LIVEKIT_API_KEY": "APIdeploytest",
        "LIVEKIT_API_SECRET": "deploy-secret-deploy-secret-deploy-secret",
    }
    exe = Path(sys.executable).parent / "livekit-metering"
    cmd = [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--database", database, "--keys", str(keys)]
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(url, alive=lambda: proc.returncode is None)
            now = datetime.now(timezone.utc).replace(microsecond=0)
            records = month_of_sessions(now - timedelta(days=30))
            body = batch_body(records)
            creds = {"key": env["LIVEKIT_API_KEY"], "secret": env["LIVEKIT_API_SECRET"]}
            async with http.post(f"{url}/v1/records", data=body, headers=signed_headers(body, **creds)) as resp:
                assert resp.status == 200
                assert {r["status"] for r in (await resp.json())["results"]} == {"accepted"}

            monkeypatch.setenv("LIVEKIT_API_KEY", env["LIVEKIT_API_KEY"])
            monkeypatch.setenv("LIVEKIT_API_SECRET", env["LIVEKIT_API_SECRET"])
            sys.path.insert(0, str(EXAMPLES / "collector_postgres"))
            try:
                dashboard_link = importlib.import_module("dashboard_link").dashboard_link
            finally:
                sys.path.remove(str(EXAMPLES / "collector_postgres"))
            page, fragment = dashboard_link(url).split("#", 1)
            token = fragment.removeprefix("token=")
            async with http.get(page) as resp:
                assert resp.status == 200 and "LiveKit metering" in await resp.text()
            # What the page does with the link's token: a session cookie, then queries with it alone.
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                auth = {"Authorization": f"Bearer {token}"}
                async with browser.post(f"{url}/dashboard/session", headers=auth) as resp:
                    assert resp.status == 200
                async with browser.get(f"{url}/v1/sessions", params={"limit": "100"}) as resp:
                    assert resp.status == 200
                    assert len((await resp.json())["sessions"]) == 12

            # A key from keys.toml reads its own project only.
            other = sign(key="APIstaging000000", secret="replace-with-the-staging-project-secret")
            async with http.get(f"{url}/v1/sessions", headers={"Authorization": other}) as resp:
                assert resp.status == 200 and (await resp.json())["sessions"] == []
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=30)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    assert proc.returncode == 0  # SIGTERM: a clean shutdown
