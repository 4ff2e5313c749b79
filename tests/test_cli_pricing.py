"""``livekit-metering prices`` and ``livekit-metering invoice`` on real JSON-lines files, both formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pricing_month import LK, MONTH_START, SHIP_NOVEMBER_LINES, SHIP_NOVEMBER_TOTAL, rec, ship_month
from typer.testing import CliRunner

from livekit_metering.cli import app
from livekit_metering.export.file import FileExporter
from livekit_metering.records import MeterRecord, Resource

runner = CliRunner()


def write_records(path: Path, records: list[MeterRecord]) -> Path:
    FileExporter(path).export(records)
    return path


@pytest.fixture(scope="module")
def month_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_records(tmp_path_factory.mktemp("records") / "records.jsonl", ship_month())


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_invoice_json_matches_the_hand_calculation(month_file: Path) -> None:
    code, out, err = run("invoice", str(month_file), "--plan", "ship", "--month", "2026-11", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["total"] == str(SHIP_NOVEMBER_TOTAL) and data["nothing_due"] is False
    got = [(ln["resource"], ln["model"], ln["amount"]) for ln in data["lines"]]
    want = [(r, m, None if a is None else str(a)) for r, m, _u, _q, _i, _b, a in SHIP_NOVEMBER_LINES]
    assert got == want
    assert data["unpriced"] == ["openai/gpt-5.1"]


def test_invoice_table_shows_lines_total_and_unpriced(month_file: Path) -> None:
    code, out, _ = run("invoice", str(month_file), "--plan", "ship", "--month", "2026-11")
    assert code == 0
    assert "Invoice preview: ship plan, 2026-11" in out
    assert "Ship plan, monthly fee" in out and "50.00" in out
    assert "22.01" in out and "180.00" in out and "-5.00" in out
    assert "Total: 312.35 USD" in out
    assert "Unpriced (not in the total): openai/gpt-5.1" in out
    assert "Billed by the provider, not LiveKit: deepgram/nova-3 via deepgram" in out


def test_invoice_build_within_caps_says_nothing_due(tmp_path: Path) -> None:
    path = write_records(
        tmp_path / "small.jsonl",
        [
            rec("b1", "session", Resource.AGENT_SESSION, 300_000, MONTH_START),
            rec("b1", "stt-1", Resource.STT, 300_000, MONTH_START, model="deepgram/nova-3", **LK),
        ],
    )
    code, out, _ = run("invoice", str(path), "--plan", "build", "--month", "2026-11", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["nothing_due"] is True and "total" not in data
    code, out, _ = run("invoice", str(path), "--plan", "build", "--month", "2026-11")
    assert code == 0 and "Nothing due: no invoice for this month." in out and "Total:" not in out


def test_invoice_with_a_user_price_file(tmp_path: Path, month_file: Path) -> None:
    prices = tmp_path / "contract.toml"
    prices.write_text(
        '[[llm]]\nmodel = "openai/gpt-5.1"\ninput = "1.25"\ncached = "0.125"\noutput = "10"\n'
        'effective = 2026-11-01\nsource = "our contract"\n'
    )
    code, out, err = run(
        "invoice", str(month_file), "--plan", "ship", "--month", "2026-11", "--prices", str(prices), "--format", "json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["unpriced"] == []
    line = next(ln for ln in data["lines"] if ln["model"] == "openai/gpt-5.1")
    assert line["amount"] == "0.10"  # 10,000 tokens x $10/M
    # 0.10 more inference, all past the credits: the total grows by exactly that.
    assert data["total"] == "312.45"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plan", "gold", "--month", "2026-11"], "unknown plan 'gold'; known plans: build, scale, ship"),
        (["--plan", "ship", "--month", "november"], "month 'november' must be written YYYY-MM"),
        (["--plan", "ship", "--month", "2026-11", "--format", "xml"], "--format 'xml' is not one of table, json"),
    ],
)
def test_invoice_bad_options_are_clear_errors(month_file: Path, args: list[str], message: str) -> None:
    code, out, err = run("invoice", str(month_file), *args)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err


def test_invoice_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    code, _, err = run("invoice", str(tmp_path / "missing.jsonl"), "--month", "2026-11")
    assert code == 2 and "records file" in err and "not found" in err
    bad = tmp_path / "bad.jsonl"
    good = rec("x", "session", Resource.AGENT_SESSION, 1_000, MONTH_START).to_json()
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "y", "raw": -5}) + "\n")
    code, _, err = run("invoice", str(bad), "--month", "2026-11", "--strict")
    assert code == 2 and f"{bad}:2" in err and "raw" in err and "Traceback" not in err
    prices = tmp_path / "bad.toml"
    prices.write_text('[[stt]]\nmodel = "a/b"\nprice = 0.5\nsource = "x"\neffective = 2026-11-01\n')
    code, _, err = run("invoice", str(bad), "--month", "2026-11", "--prices", str(prices))
    assert code == 2 and f"{prices}: [[stt]] #1 (model 'a/b'): field 'price': is a TOML float" in err


def test_prices_json_lists_rows_with_decimal_strings_dates_and_sources() -> None:
    code, out, _ = run("prices", "--kind", "stt", "--model", "nova-3", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["plans"] == []
    rows = [r for r in data["rows"] if r["provider"] == "livekit"]
    by_lang_plan = {(r["language"], r["plan"]): r["price"] for r in rows}
    assert by_lang_plan == {
        ("", None): "0.0048",
        ("", "scale"): "0.0042",
        ("multi", None): "0.0058",
        ("multi", "scale"): "0.0050",
    }
    for row in data["rows"]:
        assert row["effective"] and row["source"] and row["kind"] == "stt"


def test_prices_plan_table_and_history() -> None:
    code, out, _ = run("prices", "--kind", "plan", "--plan", "ship")
    assert code == 0
    assert "LiveKit Cloud plans" in out and "Ship" in out and "overage billed" in out
    assert "agent_session" in out and "0.0005" in out and "unpriced" in out  # stream_import
    code, out, _ = run("prices", "--model", "nova-3", "--history", "--format", "json")
    prices = {r["price"] for r in json.loads(out)["rows"] if r["provider"] == "livekit" and not r["language"]}
    assert {"0.0077", "0.0048"} <= prices
    code, out, _ = run("prices", "--kind", "phone", "--plan", "ship", "--format", "json")
    assert {r["resource"] for r in json.loads(out)["rows"]} >= {"phone_number", "sip_inbound", "sip_inbound_toll_free"}


def test_prices_table_shows_notes_literally() -> None:
    # Notes are printed in brackets; they must not be swallowed as rich markup.
    code, out, _ = run("prices", "--kind", "phone", "--plan", "build")
    assert code == 0
    assert "[toll-free numbers are not offered on Build]" in out
    assert "hard cap" in out


def test_prices_errors() -> None:
    code, _, err = run("prices", "--kind", "video")
    assert code == 2 and "--kind 'video' is not one of plan, phone, stt, llm, tts" in err
    code, _, err = run("prices", "--plan", "gold")
    assert code == 2 and "unknown plan 'gold'" in err


def test_the_installed_command_runs_as_a_subprocess(month_file: Path) -> None:
    # The real entry point, in a fresh interpreter: no traceback, exit codes as documented.
    cmd = [sys.executable, "-m", "livekit_metering.cli"]
    done = subprocess.run(
        [*cmd, "invoice", str(month_file), "--plan", "ship", "--month", "2026-11", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total"] == "312.35"
    failed = subprocess.run(
        [*cmd, "invoice", str(month_file), "--plan", "gold"], capture_output=True, text=True, timeout=120, check=False
    )
    assert failed.returncode == 2 and "unknown plan 'gold'" in failed.stderr and "Traceback" not in failed.stderr
