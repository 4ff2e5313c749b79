"""What loads what: the package, the reporting commands and the collector run without livekit-agents
(lazy imports), and without asyncpg unless a PostgreSQL store is asked for.

Each check runs in a fresh interpreter where importing livekit-agents (or asyncpg) fails, so a
regression that imports it shows up as a failure, not as a slower start.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
from usage_samples import month_of_sessions

from livekit_metering.collector.testing import (
    TEST_KEY,
    TEST_SECRET,
    batch_body,
    free_port,
    sign,
    signed_headers,
    wait_healthy,
)
from livekit_metering.export import FileExporter

# Run the CLI (or code) with these modules made unimportable.
_PRELUDE = "import sys\nfor _m in {blocked!r}: sys.modules[_m] = None\n"
_CLI = "from livekit_metering.cli import main\nsys.argv[0] = 'livekit-metering'\nmain()\n"
NO_AGENTS = ("livekit.agents",)


def blocked(*modules: str, code: str = _CLI) -> list[str]:
    return [sys.executable, "-c", _PRELUDE.format(blocked=modules) + code]


def run(cmd: list[str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_importing_the_package_and_its_data_model_does_not_load_livekit_agents() -> None:
    code = (
        "import livekit_metering as lm\n"
        "assert lm.MeterRecord and lm.PriceBook and lm.metered and lm.InvalidOption\n"
        "import livekit_metering.report, livekit_metering.collector.app, livekit_metering.collector.serve\n"
        "print(sorted(m for m in sys.modules if m.startswith(('livekit.agents', 'asyncpg'))))\n"
    )
    done = run([sys.executable, "-c", "import sys\n" + code])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    # The Metered model wrappers do need it, and get it when first used.
    code = "import sys, livekit_metering as lm\nlm.MeteredLLM\nprint('livekit.agents' in sys.modules)"
    done = run([sys.executable, "-c", code])
    assert done.stdout.strip() == "True"


@pytest.fixture(scope="module")
def records_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("records") / "records.jsonl"
    FileExporter(path).export(month_of_sessions(datetime.now(timezone.utc) - timedelta(days=30)))
    return path


def test_the_reporting_commands_run_without_livekit_agents(records_file: Path, tmp_path: Path) -> None:
    cli = blocked(*NO_AGENTS, "asyncpg")
    for args in (
        ["prices", "--kind", "stt"],
        ["invoice", "--help"],
        ["invoice", str(records_file), "--format", "json"],
        ["report", str(records_file), "--group-by", "customer"],
        ["serve", "--help"],
        ["outbox", "--path", str(tmp_path / "none.sqlite3")],
    ):
        done = run(cli, *args)
        assert "ImportError" not in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
        assert done.returncode in (0, 2), (args, done.stderr)
    assert json.loads(run(cli, "invoice", str(records_file), "--format", "json").stdout)["plan"] == "ship"


def test_a_postgresql_store_without_asyncpg_says_which_extra_to_install() -> None:
    done = run(blocked("asyncpg"), "report", "--database", "postgresql://nobody@127.0.0.1:1/none")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "pip install 'livekit-metering[postgres]'" in done.stderr and len(done.stderr.splitlines()) == 1


async def test_the_collector_serves_without_livekit_agents(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "LIVEKIT_API_KEY": TEST_KEY, "LIVEKIT_API_SECRET": TEST_SECRET}
    cmd = blocked(*NO_AGENTS, "asyncpg")
    args = ["serve", "--port", str(port), "--database", f"sqlite:///{tmp_path / 'c.db'}"]
    proc = await asyncio.create_subprocess_exec(*cmd, *args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(url, alive=lambda: proc.returncode is None)
        records = month_of_sessions(datetime.now(timezone.utc) - timedelta(days=30))
        body = batch_body(records)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/records", data=body, headers=signed_headers(body)) as resp:
                assert resp.status == 200
                assert {r["status"] for r in (await resp.json())["results"]} == {"accepted"}
            since = min(r.start for r in records).date().isoformat()
            headers = {"Authorization": sign()}
            async with http.get(f"{url}/v1/usage?group_by=customer&since={since}", headers=headers) as resp:
                assert resp.status == 200 and (await resp.json())["rows"]
    finally:
        proc.terminate()
        _, err = await proc.communicate()
    assert b"ImportError" not in err and b"Traceback" not in err, err.decode()[-2000:]
