"""The three forms of ``metered``, what survives pickling into a job process, and option checking."""

from __future__ import annotations

import functools
import pickle
from pathlib import Path

import _jobs
import pytest
from harness.jobproc import FakeRoom, run_job
from livekit.agents import AgentServer, WorkerOptions

from livekit_metering.entrypoint import InvalidOption, MeteredEntrypoint, MeteringOptions, metered
from livekit_metering.export import read_records
from livekit_metering.export.file import FileExporter
from livekit_metering.records import Resource


def test_decorator_forms_pickle_by_reference() -> None:
    # The job process re-imports the module and finds the same decorated entrypoint.
    for entry in (_jobs.decorated, _jobs.decorated_with_options):
        assert isinstance(entry, MeteredEntrypoint)
        assert pickle.loads(pickle.dumps(entry)) is entry
    assert _jobs.decorated_with_options.options.checkpoint_interval == 0.5


def test_call_form_pickles_the_function_by_reference_and_the_options_by_value(tmp_path: Path) -> None:
    entry = metered(_jobs.plain, file=tmp_path / "r.jsonl", policy="per-second-10s-minimum", customer="customer_id")
    back = pickle.loads(pickle.dumps(entry))
    assert isinstance(back, MeteredEntrypoint) and back is not entry
    assert back.__wrapped__ is _jobs.plain
    assert back.options == entry.options
    assert back.options.file == str(tmp_path / "r.jsonl")


async def test_an_unpickled_wrapper_meters_like_the_original(tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    entry = pickle.loads(pickle.dumps(metered(_jobs.plain, file=out, policy="per-second-10s-minimum")))
    await run_job(entry, room=FakeRoom())
    (record,) = [r for r in read_records(out) if r.resource is Resource.AGENT_SESSION]
    assert record.policy == "per-second-10s-minimum" and record.meta["end_cause"] == "shutdown"


def test_an_unpicklable_option_fails_when_pickled_and_names_the_option() -> None:
    entry = metered(_jobs.plain, customer=lambda ctx: "acme")
    with pytest.raises(TypeError, match=r"metered\(customer=\.\.\.\) cannot be pickled"):
        pickle.dumps(entry)


def test_an_exporter_instance_with_a_lock_does_not_pickle_but_a_factory_does(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"metered\(exporter=\.\.\.\) cannot be pickled.*pass a factory"):
        pickle.dumps(metered(_jobs.plain, exporter=FileExporter(tmp_path / "a.jsonl")))
    entry = metered(_jobs.plain, exporter=functools.partial(FileExporter, tmp_path / "b.jsonl"))
    exporter, owned = pickle.loads(pickle.dumps(entry)).options.build_exporter()
    assert isinstance(exporter, FileExporter) and exporter.path == tmp_path / "b.jsonl" and owned


def test_the_wrapper_looks_like_the_entrypoint() -> None:
    entry = metered(_jobs.plain)
    assert (entry.__name__, entry.__qualname__, entry.__module__) == ("plain", "plain", "_jobs")
    assert entry.__doc__ == _jobs.plain.__doc__
    assert entry.__wrapped__ is _jobs.plain


def test_registers_under_rtc_session_and_worker_options() -> None:
    entry = metered(_jobs.plain)
    server = AgentServer()
    assert server.rtc_session(entry) is entry
    legacy = AgentServer.from_server_options(WorkerOptions(entrypoint_fnc=entry))
    assert legacy._entrypoint_fnc is entry


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"checkpoint_interval": 0}, r"metered\(checkpoint_interval=0\): must be a positive number of seconds"),
        ({"checkpoint_interval": -5.0}, r"metered\(checkpoint_interval=-5.0\): must be a positive number"),
        ({"policy": "per-minute-ish"}, r"metered\(policy='per-minute-ish'\): unknown rate policy .*known policies"),
        ({"customer": 42}, r"metered\(customer=42\): must be a job-metadata key"),
        ({"attributes": "tier"}, r"metered\(attributes='tier'\): must be a callable"),
        ({"exporter": "stdout"}, r"metered\(exporter='stdout'\): must be an Exporter"),
        ({"url": "metering.example.com"}, r"has no scheme: write https://metering.example.com$"),
        ({"url": "ftp://metering.example.com"}, r"must start with http:// or https://"),
        ({"url": "https://"}, r"has no host"),
        ({"plan": "gold"}, r"metered\(plan='gold'\): unknown plan 'gold'; known plans: build, scale, ship"),
        ({"prices": "nosuch.toml"}, r"metered\(prices='nosuch.toml'\): no price file at nosuch.toml"),
        ({"preview": "maybe"}, r"metered\(preview='maybe'\): must be true or false"),
        ({"file": "."}, r"metered\(file='.'\): is a directory"),
        ({"phone_numbers": "+14155550100"}, r"metered\(phone_numbers='\+14155550100'\): takes a list of numbers"),
        ({"phone_numbers": ["call me"]}, r"metered\(phone_numbers=...\): holds no phone number"),
    ],
)
def test_bad_options_fail_at_decoration_with_one_line_that_says_what_to_fix(options: dict, message: str) -> None:
    with pytest.raises(InvalidOption, match=message) as caught:
        metered(_jobs.plain, **options)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("LIVEKIT_METERING_URL", "metering.example.com", "has no scheme: write https://metering.example.com"),
        ("LIVEKIT_METERING_PLAN", "gold", "unknown plan 'gold'"),
        ("LIVEKIT_METERING_PRICES", "nosuch.toml", "no price file at nosuch.toml"),
        ("LIVEKIT_METERING_PREVIEW", "maybe", "must be true or false"),
        ("LIVEKIT_METERING_CHECKPOINT_INTERVAL", "soon", "must be a positive number of seconds"),
        ("LIVEKIT_METERING_POLICY", "per-minute-ish", "unknown rate policy"),
        ("LIVEKIT_METERING_HOSTING", "on-prem", "must be one of 'cloud', 'self-hosted-on-cloud', 'self-hosted'"),
        ("LIVEKIT_METERING_PHONE_NUMBERS", "none at all", "holds no phone number"),
    ],
)
def test_a_bad_environment_variable_fails_at_decoration_and_names_it(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(InvalidOption, match=f"^{env}={value!r}: .*{message}"):
        metered(_jobs.plain)
    with pytest.raises(InvalidOption, match=env):
        metered()(_jobs.plain)  # the @metered(...) form checks too
    # A keyword for that option wins over the variable, so nothing is wrong.
    keyword = {
        "LIVEKIT_METERING_URL": {"url": "http://127.0.0.1:9"},
        "LIVEKIT_METERING_PLAN": {"plan": "scale"},
        "LIVEKIT_METERING_PREVIEW": {"preview": False},
        "LIVEKIT_METERING_CHECKPOINT_INTERVAL": {"checkpoint_interval": 3},
        "LIVEKIT_METERING_POLICY": {"policy": "minute-increments"},
    }
    if env in keyword:
        metered(_jobs.plain, **keyword[env])


def test_a_price_file_defines_the_plans_the_plan_option_may_name(tmp_path: Path) -> None:
    prices = tmp_path / "contract.toml"
    prices.write_text(
        '[[plan]]\nid = "gold"\nname = "Gold"\nfee = "100"\ninference_credits = "10"\n'
        'effective = 2026-01-01\nsource = "our contract"\n'
    )
    metered(_jobs.plain, plan="gold", prices=prices)  # known in that book
    with pytest.raises(InvalidOption, match="unknown plan 'gold'"):
        metered(_jobs.plain, plan="gold")


def test_not_a_function() -> None:
    with pytest.raises(TypeError, match="wraps an async entrypoint"):
        metered(42)  # type: ignore[call-overload]


def test_options_resolve_from_the_environment_in_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_METERING_PLAN", "scale")
    monkeypatch.setenv("LIVEKIT_METERING_CHECKPOINT_INTERVAL", "2.5")
    monkeypatch.setenv("LIVEKIT_METERING_POLICY", "per-second-10s-minimum")
    monkeypatch.setenv("LIVEKIT_METERING_CUSTOMER", "account")
    options = MeteringOptions()
    assert options.resolved_plan() == "scale"
    assert options.resolved_interval() == 2.5
    assert options.resolved_policy() == "per-second-10s-minimum"
    assert options.resolved_customer() == "account"
    # Keywords win over the environment.
    assert MeteringOptions(plan="build", checkpoint_interval=9).resolved_plan() == "build"
    monkeypatch.setenv("LIVEKIT_METERING_CHECKPOINT_INTERVAL", "soon")
    assert MeteringOptions().resolved_interval() == 15.0  # a bad value is logged, and the default used
