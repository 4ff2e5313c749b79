"""Meter records: the JSON wire form, its validation, ids and the checkpoint lifecycle."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livekit_metering import InvalidRecord, MeterRecord, Resource, Status, Unit, get_policy, record_id
from livekit_metering.rates import policies
from livekit_metering.records import RESOURCE_BASE_UNIT, UNIT_BASE, participant_usage_id

T0 = datetime(2026, 11, 1, 9, 30, tzinfo=timezone.utc)


def make(resource: Resource = Resource.STT, raw: int = 1_500, **fields: Any) -> MeterRecord:
    return get_policy().record(
        id=record_id("job-1", "stt-1", resource),
        session_id="job-1",
        resource=resource,
        raw=raw,
        start=T0,
        end=T0 + timedelta(seconds=2),
        **fields,
    )


def wire(**changes: Any) -> dict[str, Any]:
    return {**make(model="deepgram/nova-3", provider="livekit").to_json(), **changes}


# -- the JSON form --------------------------------------------------------------------------------


def test_json_form_has_integer_raw_decimal_string_quantity_and_utc_times() -> None:
    data = make(model="deepgram/nova-3", provider="livekit").to_json()
    assert data["raw"] == 1_500 and isinstance(data["raw"], int)
    assert data["quantity"] == "2" and data["unit"] == "second"
    assert data["resource"] == "stt" and data["policy"] == "minute-increments"
    assert data["start"] == "2026-11-01T09:30:00.000Z" and data["end"] == "2026-11-01T09:30:02.000Z"
    assert data["id"] == "job-1/stt-1/stt" and data["status"] == "ok"
    assert not any(isinstance(v, float) for v in data.values())


def test_json_round_trip_through_text_is_exact() -> None:
    record = make(model="deepgram/nova-3", provider="livekit", language="multi", meta={"estimate": "chars", "n": 3})
    text = json.dumps(record.to_json())
    again = MeterRecord.from_json(json.loads(text))
    assert again == record
    assert again.canonical() == record.canonical()


@given(
    resource=st.sampled_from(list(Resource)),
    raw=st.integers(min_value=0, max_value=10**12),
    policy=st.sampled_from(sorted(policies())),
    micros=st.integers(min_value=0, max_value=10**12),
    status=st.sampled_from(list(Status)),
)
def test_any_rounded_record_survives_a_json_round_trip(
    resource: Resource, raw: int, policy: str, micros: int, status: Status
) -> None:
    start = T0 + timedelta(microseconds=micros)
    record = get_policy(policy).record(
        id=record_id("job", "u", resource),
        session_id="job",
        resource=resource,
        raw=raw,
        start=start,
        end=start,
        status=status,
    )
    again = MeterRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record and again.canonical() == record.canonical()
    assert get_policy(policy).check(again) is None
    assert again.quantity == Decimal(again.to_json()["quantity"])


def test_canonical_is_stable_and_tells_payloads_apart() -> None:
    a, b = make(), make()
    assert a.canonical() == b.canonical()
    assert make(raw=1_600).canonical() != a.canonical()
    assert json.loads(a.canonical()) == a.to_json()


def test_times_are_kept_to_the_millisecond_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    record = get_policy().record(
        id="x",
        session_id="s",
        resource=Resource.STT,
        raw=1,
        start=datetime(2026, 11, 1, 10, 0, 0, 123_456, paris),
        end=datetime(2026, 11, 1, 10, 0, 1, tzinfo=paris),
    )
    assert record.to_json()["start"] == "2026-11-01T09:00:00.123Z"


# -- ids ------------------------------------------------------------------------------------------


def test_record_id_is_deterministic_and_bounded() -> None:
    assert record_id("job-1", "llm-3", Resource.LLM_OUTPUT) == "job-1/llm-3/llm_output"
    assert record_id("job-1", "llm-3", "llm_output") == record_id("job-1", "llm-3", Resource.LLM_OUTPUT)
    long = record_id("j" * 300, "session", Resource.AGENT_SESSION)
    assert len(long) <= 200 and long == record_id("j" * 300, "session", Resource.AGENT_SESSION)
    assert long != record_id("j" * 299 + "k", "session", Resource.AGENT_SESSION)


def test_a_participant_usage_has_one_id_whoever_reports_it() -> None:
    # the agent and the collector's webhooks both derive it from the room and participant sids
    a = participant_usage_id("RM_1", "PA_1", Resource.CONNECTION)
    assert a == "room:RM_1/participant:PA_1/connection"
    assert a != participant_usage_id("RM_1", "PA_2", Resource.CONNECTION)
    assert a != participant_usage_id("RM_1", "PA_1", Resource.SIP_INBOUND)


# -- bad records ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "why"),
    [
        ({"raw": -1}, "raw", "greater than or equal to 0"),
        ({"raw": 1.5}, "raw", "valid integer"),
        ({"raw": "1500"}, "raw", "valid integer"),
        ({"raw": True}, "raw", "valid integer"),
        ({"quantity": "NaN"}, "quantity", "finite number"),
        ({"quantity": "Infinity"}, "quantity", "finite number"),
        ({"quantity": "-Infinity"}, "quantity", ""),
        ({"quantity": 1.5}, "quantity", "not a binary float"),
        ({"quantity": "-1"}, "quantity", "greater than or equal to 0"),
        ({"quantity": "lots"}, "quantity", "valid decimal"),
        ({"resource": "teleport"}, "resource", "'agent_session'"),
        ({"unit": "furlong"}, "unit", "'minute'"),
        ({"unit": "gb"}, "unit 'gb' does not fit resource 'stt'", "use one of: minute, second"),
        ({"start": "2026-11-01T09:30:00"}, "start", "UTC offset"),
        ({"end": "2026-10-01T00:00:00Z"}, "end", "before start"),
        ({"status": "maybe"}, "status", "'ok'"),
        ({"id": ""}, "id", "at least 1 character"),
        ({"surprise": 1}, "surprise", "Extra inputs are not permitted"),
        ({"meta": {"x": 1.5}}, "meta.x", "valid"),
    ],
)
def test_bad_records_are_rejected_with_an_error_naming_the_field(changes: dict[str, Any], field: str, why: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        MeterRecord.from_json(wire(**changes))
    message = str(info.value)
    assert message.startswith("invalid meter record: ")
    assert field in message and why in message


def test_missing_fields_are_named() -> None:
    data = wire()
    del data["raw"], data["policy"]
    with pytest.raises(InvalidRecord, match=r"raw: Field required.*policy: Field required"):
        MeterRecord.from_json(data)


def test_every_resource_has_fitting_units() -> None:
    for resource in Resource:
        fitting = [u for u, base in UNIT_BASE.items() if base is RESOURCE_BASE_UNIT[resource]]
        assert fitting, resource
    assert RESOURCE_BASE_UNIT[Resource.DATA_TRANSFER] is UNIT_BASE[Unit.GB]


def test_records_are_frozen() -> None:
    record = make()
    with pytest.raises(ValueError):
        record.raw = 5  # type: ignore[misc]


# -- checkpoint lifecycle -------------------------------------------------------------------------


def test_checkpoints_are_superseded_by_later_figures_and_the_final_form() -> None:
    first = make(Resource.AGENT_SESSION, raw=30_000, status=Status.CHECKPOINT)
    later = make(Resource.AGENT_SESSION, raw=90_000, status=Status.CHECKPOINT).model_copy(
        update={"end": T0 + timedelta(seconds=90)}
    )
    final = make(Resource.AGENT_SESSION, raw=95_000)
    assert not first.is_final and final.is_final
    assert later.supersedes(first)
    assert not first.supersedes(later)
    assert final.supersedes(first) and final.supersedes(later)
    assert not later.supersedes(final)  # a stale checkpoint after the final form changes nothing
    assert not final.supersedes(final)
    other = make(Resource.CONNECTION, raw=95_000)
    assert not other.supersedes(first)  # different id
