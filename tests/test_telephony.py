"""Which resource a SIP call bills as: the rule shared by the agent and the collector."""

from __future__ import annotations

import pytest

from livekit_metering import Resource
from livekit_metering.records import participant_usage_id, sip_call_id
from livekit_metering.telephony import is_toll_free, normalize_number, sip_resource

NUMBERS = ["+1 (415) 555-0100", "+18885550199"]


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"sip.ruleID": "SDR_1", "sip.trunkPhoneNumber": "+14155550100"}, Resource.SIP_INBOUND),
        ({"sip.ruleID": "SDR_1", "sip.trunkPhoneNumber": "+18885550199"}, Resource.SIP_INBOUND_TOLL_FREE),
        # A number that is not one of the project's LiveKit numbers: a third-party trunk.
        ({"sip.ruleID": "SDR_1", "sip.trunkPhoneNumber": "+14155550111"}, Resource.SIP_TRUNK),
        # Outbound (no dispatch rule), even from a listed number: LiveKit numbers are inbound only.
        ({"sip.ruleID": "", "sip.trunkPhoneNumber": "+14155550100"}, Resource.SIP_TRUNK),
        ({}, Resource.SIP_TRUNK),
    ],
)
def test_a_call_bills_by_direction_and_dialled_number(attributes: dict[str, str], expected: Resource) -> None:
    assert sip_resource(attributes, NUMBERS) is expected


def test_numbers_compare_in_e164_form() -> None:
    assert normalize_number("(415) 555-0100") == "+14155550100"
    assert normalize_number("+44 20 7946 0000") == "+442079460000"
    assert normalize_number("") == ""
    assert is_toll_free("+1 833 555 0100") and is_toll_free("8005550100")
    assert not is_toll_free("+14155550100") and not is_toll_free("+448005550100")


def test_a_sip_call_has_one_id_whatever_it_bills_as() -> None:
    call = sip_call_id("RM_1", "PA_9")
    assert call == "room:RM_1/participant:PA_9/sip"
    assert call != participant_usage_id("RM_1", "PA_9", Resource.CONNECTION)
