"""Every failure of the reading commands is one line on stderr that says what to do, and a non-zero exit."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner
from usage_samples import session_records

from livekit_metering.cli import app
from livekit_metering.export import FileExporter


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    records = root / "records.jsonl"
    at = datetime(2026, 11, 3, 10, tzinfo=timezone.utc)
    FileExporter(records).export(session_records("AJ_cli", at, 61, room="r", agent="a", customer="c"))
    (root / "a-directory").mkdir()
    return {"{records}": str(records), "{dir}": str(root / "a-directory"), "{root}": str(root)}


CASES = [
    (["prices", "--prices", "nosuch.toml"], "nosuch.toml"),
    (["prices", "--kind", "nope"], "--kind 'nope' is not one of"),
    (["prices", "--format", "xml"], "--format 'xml' is not one of"),
    (["invoice", "{root}/missing.jsonl"], "not found"),
    (["invoice", "{dir}"], "is a directory"),
    (["invoice", "{records}", "--month", "2026-13"], "does not exist: months are 01 to 12"),
    (["invoice", "{records}", "--month", "13/2026"], "must be written YYYY-MM"),
    (["invoice", "{records}", "--plan", "gold"], "unknown plan 'gold'"),
    (["report", "{records}", "--format", "xml"], "unknown format 'xml'"),
    (["report", "{records}", "--plan", "gold"], "unknown plan 'gold'"),
    (["report", "{records}", "--prices", "nosuch.toml"], "nosuch.toml"),
    (["report", "{dir}"], "no records file"),
    (["report", "{records}", "-o", "{root}/no/dir/out.csv"], "there is no directory"),
    (["outbox", "--path", "{records}"], "is not a livekit-metering outbox"),
    (["demo", "--keep", "{root}/no/dir/records.jsonl"], "there is no directory"),
    (["demo", "--plan", "gold"], "unknown plan 'gold'"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_a_failure_is_one_line_and_a_non_zero_exit(files: dict[str, str], args: list[str], message: str) -> None:
    given = [_fill(a, files) for a in args]
    result = CliRunner().invoke(app, given)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and message in line, line
    assert result.exception is None or isinstance(result.exception, SystemExit)


def _fill(arg: str, files: dict[str, str]) -> str:
    for key, value in files.items():
        arg = arg.replace(key, value)
    return arg


def test_no_bad_case_left_a_file_behind(files: dict[str, str]) -> None:
    assert not Path(files["{root}"], "no").exists()
