"""Which telephony resource a SIP participant's call is billed as: one rule, for the agent and the collector.

The agent (from the participants it sees) and the collector (from LiveKit's participant webhooks)
both classify a call with ``sip_resource``; the resource is part of the usage's id, so both sides
must reach the same answer for the call to be stored once.

The rule, from the ``sip.*`` attributes LiveKit SIP sets on the participant:

1. Outbound (no ``sip.ruleID``: only inbound calls match a dispatch rule) -> ``sip_trunk``:
   LiveKit Phone Numbers take inbound calls only, so an outbound call goes through a third-party trunk.
2. Inbound to a LiveKit Phone Number -> ``sip_inbound``, or ``sip_inbound_toll_free`` when the
   called number (``sip.trunkPhoneNumber``) is a North American toll-free number (+1 800, 833,
   844, 855, 866, 877, 888).
3. Any other inbound call (a third-party SIP trunk) -> ``sip_trunk``.

A call is to a LiveKit Phone Number when the called number is in the project's list of LiveKit
numbers, if one is configured (``phone_numbers=`` / ``LIVEKIT_METERING_PHONE_NUMBERS``); without
a list, when it came through no inbound trunk (empty ``sip.trunkID``): LiveKit Phone Numbers need
none, third-party trunks always have one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .records import Resource

__all__ = [
    "PHONE_NUMBERS_ENV",
    "TOLL_FREE_AREA_CODES",
    "call_direction",
    "is_toll_free",
    "normalize_number",
    "parse_numbers",
    "sip_resource",
]

PHONE_NUMBERS_ENV = "LIVEKIT_METERING_PHONE_NUMBERS"
TOLL_FREE_AREA_CODES = frozenset({"800", "833", "844", "855", "866", "877", "888"})

ATTR_RULE_ID = "sip.ruleID"
ATTR_TRUNK_ID = "sip.trunkID"
ATTR_CALLED = "sip.trunkPhoneNumber"


def normalize_number(number: str) -> str:
    """A phone number as digits with its country code: ``+1 (800) 555-0100`` -> ``18005550100``.

    Ten digits are taken as a North American number without its country code.
    """
    digits = "".join(c for c in number if c.isdigit())
    return "1" + digits if len(digits) == 10 else digits


def is_toll_free(number: str) -> bool:
    digits = normalize_number(number)
    return len(digits) == 11 and digits[0] == "1" and digits[1:4] in TOLL_FREE_AREA_CODES


def parse_numbers(numbers: str | Iterable[str] | None) -> frozenset[str] | None:
    """The configured LiveKit numbers, normalized; a string is comma-separated. None when none are configured."""
    if numbers is None:
        return None
    items = numbers.split(",") if isinstance(numbers, str) else list(numbers)
    found = frozenset(normalize_number(str(n)) for n in items if normalize_number(str(n)))
    return found or None


def call_direction(attributes: Mapping[str, str]) -> str:
    """``inbound`` or ``outbound``: only an inbound call has the dispatch rule that placed it."""
    return "inbound" if attributes.get(ATTR_RULE_ID) else "outbound"


def sip_resource(attributes: Mapping[str, str], *, livekit_numbers: Iterable[str] | None = None) -> Resource:
    """The resource one SIP participant's call is billed as (see the module docstring for the rule)."""
    if call_direction(attributes) == "outbound":
        return Resource.SIP_TRUNK
    called = attributes.get(ATTR_CALLED, "")
    numbers = parse_numbers(livekit_numbers)
    on_livekit_number = (
        normalize_number(called) in numbers if numbers is not None else not attributes.get(ATTR_TRUNK_ID)
    )
    if not on_livekit_number:
        return Resource.SIP_TRUNK
    return Resource.SIP_INBOUND_TOLL_FREE if is_toll_free(called) else Resource.SIP_INBOUND
