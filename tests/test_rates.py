"""Rate policies: each individual usage rounded up to its increment (and minimum) before summation."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livekit_metering import DEFAULT_POLICY_ID, InvalidPolicy, UnknownPolicy, get_policy
from livekit_metering.rates import load_policies, policies
from livekit_metering.records import UNIT_SIZE, Resource, Unit

MINUTES = get_policy("minute-increments")
PER_SECOND = get_policy("per-second-10s-minimum")
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


# -- the documented examples ----------------------------------------------------------------------


def test_default_policy_is_minute_increments() -> None:
    assert DEFAULT_POLICY_ID == "minute-increments"
    assert get_policy() is get_policy(None) is MINUTES


@pytest.mark.parametrize(("ms", "minutes"), [(0, 0), (1, 1), (10_000, 1), (60_000, 1), (60_001, 2), (70_000, 2)])
def test_connection_time_rounds_up_to_whole_minutes(ms: int, minutes: int) -> None:
    assert MINUTES.quantity(Resource.CONNECTION, ms) == minutes
    assert MINUTES.rule(Resource.CONNECTION).unit is Unit.MINUTE


def test_two_short_connections_bill_two_minutes_not_one() -> None:
    each = [MINUTES.quantity(Resource.CONNECTION, 10_000) for _ in range(2)]
    assert sum(each) == 2
    assert MINUTES.quantity(Resource.CONNECTION, 20_000) == 1  # what summing first would wrongly give


@pytest.mark.parametrize(("ms", "seconds"), [(0, 0), (1, 10), (3_000, 10), (10_000, 10), (10_200, 11), (61_000, 61)])
def test_per_second_policy_bills_seconds_with_a_ten_second_minimum(ms: int, seconds: int) -> None:
    for resource in (Resource.AGENT_SESSION, Resource.CONNECTION):
        assert PER_SECOND.rule(resource).unit is Unit.SECOND
        assert PER_SECOND.quantity(resource, ms) == seconds


def test_per_second_policy_leaves_everything_else_as_the_default() -> None:
    for resource in Resource:
        if resource not in (Resource.AGENT_SESSION, Resource.CONNECTION):
            assert PER_SECOND.rule(resource) == MINUTES.rule(resource)
    assert PER_SECOND.effective.isoformat() == "2026-08-24"
    assert PER_SECOND.source and MINUTES.source


@pytest.mark.parametrize(
    ("raw", "gb"),
    [(0, "0"), (1, "0.01"), (10_000_000, "0.01"), (10_000_001, "0.02"), (1_000_000_000, "1"), (1_234_567_890, "1.24")],
)
def test_data_transfer_is_in_gb_of_ten_to_the_ninth_bytes_in_hundredth_steps(raw: int, gb: str) -> None:
    assert UNIT_SIZE[Unit.GB] == 10**9
    assert MINUTES.quantity(Resource.DATA_TRANSFER, raw) == Decimal(gb)


def test_counted_resources_bill_exactly() -> None:
    assert MINUTES.quantity(Resource.STT, 1_001) == 2  # seconds of connection time, 1 s increments
    assert MINUTES.quantity(Resource.LLM_INPUT, 1_234) == 1_234
    assert MINUTES.quantity(Resource.TTS, 17) == 17
    assert MINUTES.quantity(Resource.OBSERVABILITY_EVENT, 3) == 3
    assert MINUTES.quantity(Resource.PHONE_NUMBER, 2) == 2


def test_record_is_rounded_and_names_its_policy() -> None:
    record = PER_SECOND.record(
        id="j/session/agent_session", session_id="j", resource=Resource.AGENT_SESSION, raw=3_000, start=T0, end=T0
    )
    assert (record.unit, record.quantity, record.policy) == (Unit.SECOND, Decimal(10), "per-second-10s-minimum")
    assert PER_SECOND.check(record) is None
    message = MINUTES.check(record)
    assert message is not None and "unit is 'second'" in message and "'minute'" in message
    wrong = record.model_copy(update={"quantity": Decimal(9)})
    message = PER_SECOND.check(wrong)
    assert message is not None and "quantity 9 does not match raw 3000" in message and "expected 10" in message


# -- properties -----------------------------------------------------------------------------------

ALL_RULES = [(p.id, r) for p in policies().values() for r in Resource]


@given(st.sampled_from(ALL_RULES), st.integers(min_value=0, max_value=10**13))
def test_billable_is_never_below_measured_and_less_than_one_increment_above(
    rule_key: tuple[str, Resource], raw: int
) -> None:
    rule = get_policy(rule_key[0]).rule(rule_key[1])
    billable = rule.billable(raw)
    assert billable >= raw
    assert billable % rule.increment == 0
    if raw > rule.minimum:
        assert billable - raw < rule.increment
    elif raw > 0:
        assert billable >= rule.minimum  # a short usage bills the minimum
        assert billable - rule.minimum < rule.increment
    # The quantity is the billable amount expressed exactly in the billing unit.
    assert rule.quantity(raw) * UNIT_SIZE[rule.unit] == billable


@given(st.sampled_from(ALL_RULES), st.lists(st.integers(min_value=0, max_value=10**10), min_size=1, max_size=20))
def test_rounding_per_usage_before_summation_never_bills_less(rule_key: tuple[str, Resource], raws: list[int]) -> None:
    policy = get_policy(rule_key[0])
    per_usage = sum(policy.quantity(rule_key[1], raw) for raw in raws)
    assert per_usage >= policy.quantity(rule_key[1], sum(raws))
    # ...and each usage is billed on its own: the total is exactly the sum of the parts.
    assert per_usage == sum((policy.rule(rule_key[1]).quantity(raw) for raw in raws), Decimal(0))


@given(st.integers(min_value=1, max_value=10**9))
def test_time_usage_past_the_minimum_is_billed_within_one_increment(ms: int) -> None:
    minutes = MINUTES.quantity(Resource.AGENT_SESSION, ms)
    assert minutes * 60_000 >= ms > (minutes - 1) * 60_000
    seconds = PER_SECOND.quantity(Resource.AGENT_SESSION, ms)
    assert seconds >= 10 and seconds * 1000 >= ms
    if ms > 10_000:
        assert (seconds - 1) * 1000 < ms


# -- choosing and loading policies ----------------------------------------------------------------


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(UnknownPolicy, match=r"unknown rate policy 'hourly'; known policies: \['minute-increments'"):
        get_policy("hourly")


GOOD = """
[[policy]]
id = "base"
effective = 2025-01-01
source = "test"
  [policy.rules]
  agent_session = { unit = "minute", increment = 60000 }
  connection = { unit = "minute", increment = 60000 }
  data_transfer = { unit = "gb", increment = 10000000 }
  stt = { unit = "second", increment = 1000 }
  llm_input = { unit = "token", increment = 1 }
  llm_input_cached = { unit = "token", increment = 1 }
  llm_output = { unit = "token", increment = 1 }
  tts = { unit = "character", increment = 1 }
  observability_event = { unit = "event", increment = 1 }
  recorded_audio = { unit = "minute", increment = 60000 }
  sip_inbound = { unit = "minute", increment = 60000 }
  sip_inbound_toll_free = { unit = "minute", increment = 60000 }
  sip_trunk = { unit = "minute", increment = 60000 }
  transcode = { unit = "minute", increment = 60000 }
  transcode_audio = { unit = "minute", increment = 60000 }
  track_egress = { unit = "minute", increment = 60000 }
  stream_import = { unit = "minute", increment = 60000 }
  voice_isolation = { unit = "minute", increment = 60000 }
  phone_number = { unit = "number_month", increment = 1 }
  phone_number_toll_free = { unit = "number_month", increment = 1 }
  realtime_input_text = { unit = "token", increment = 1 }
  realtime_input_audio = { unit = "token", increment = 1 }
  realtime_input_image = { unit = "token", increment = 1 }
  realtime_input_cached_text = { unit = "token", increment = 1 }
  realtime_input_cached_audio = { unit = "token", increment = 1 }
  realtime_input_cached_image = { unit = "token", increment = 1 }
  realtime_output_text = { unit = "token", increment = 1 }
  realtime_output_audio = { unit = "token", increment = 1 }
  realtime_session = { unit = "second", increment = 1000 }
  transcription_input = { unit = "token", increment = 1 }
  transcription_output = { unit = "token", increment = 1 }
"""


def test_a_user_policy_file_can_add_a_policy(tmp_path: Path) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(
        GOOD
        + """
[[policy]]
id = "per-6s"
effective = 2027-01-01
extends = "base"
source = "our contract"
  [policy.rules]
  agent_session = { unit = "second", increment = 6000, minimum = 30000 }
"""
    )
    custom = get_policy("per-6s", file=path)
    assert custom.quantity(Resource.AGENT_SESSION, 31_000) == 36
    assert custom.quantity(Resource.AGENT_SESSION, 1_000) == 30
    assert custom.quantity(Resource.CONNECTION, 1_000) == 1


def test_whether_a_cloud_agent_bills_connection_minutes_is_a_policy_setting_with_its_source(tmp_path: Path) -> None:
    assert MINUTES.cloud_agent_connection is False
    assert "Self-hosted agents count" in MINUTES.cloud_agent_connection_source
    assert PER_SECOND.cloud_agent_connection is False  # inherited through `extends`
    assert PER_SECOND.cloud_agent_connection_source == MINUTES.cloud_agent_connection_source
    path = tmp_path / "policies.toml"
    path.write_text(
        GOOD
        + """
[[policy]]
id = "both"
effective = 2027-01-01
extends = "base"
cloud_agent_connection = true
cloud_agent_connection_source = "our invoice of 2026-12"
"""
    )
    both = get_policy("both", file=path)
    assert both.cloud_agent_connection is True and both.cloud_agent_connection_source == "our invoice of 2026-12"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[policy]\nid = 1", "not valid TOML"),
        (GOOD.replace('source = "', 'cloud_agent_connection = "yes"\nsource = "', 1), "cloud_agent_connection must be"),
        (GOOD.replace('source = "', 'cloud_agent_connection = true\nsource = "', 1), "cloud_agent_connection_source"),
        ('[[policy]]\neffective = 2025-01-01\nsource = "x"', "needs a string id"),
        ('[[policy]]\nid = "p"\neffective = "2025-01-01"', "effective must be a TOML date"),
        (
            GOOD.replace('id = "base"', 'id = "p"').replace("tts = {", "teleport = {"),
            "rule 'teleport': unknown resource",
        ),
        (GOOD.replace('tts = { unit = "character"', 'tts = { unit = "furlong"'), "unit 'furlong' is not one of"),
        (GOOD.replace('tts = { unit = "character"', 'tts = { unit = "minute"'), "unit 'minute' does not fit tts"),
        (GOOD.replace("increment = 10000000", "increment = -5"), "increment must be a non-negative integer"),
        (GOOD.replace("increment = 10000000", "increment = 0"), "increment must be at least 1"),
        (GOOD.replace("increment = 10000000", "increment = 1.5"), "increment must be a non-negative integer"),
        (
            GOOD.replace('stt = { unit = "second", increment = 1000 }', 'stt = { unit = "minute", increment = 7 }'),
            "increment 7 does not give exact minute quantities",
        ),
        (GOOD.replace('  tts = { unit = "character", increment = 1 }\n', ""), "no rule for ['tts']"),
        (
            '[[policy]]\nid = "p"\neffective = 2025-01-01\nextends = "nope"',
            "extends 'nope', which is not defined above it",
        ),
    ],
)
def test_bad_policy_toml_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(InvalidPolicy) as info:
        load_policies(text)
    assert message in str(info.value)


def test_bad_policy_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[[policy]\n")
    with pytest.raises(InvalidPolicy):
        get_policy("minute-increments", file=path)
    assert get_policy("minute-increments") is MINUTES
    assert set(policies()) == {"minute-increments", "per-second-10s-minimum"}
