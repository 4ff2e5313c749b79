"""Telephony: which resource a SIP call bills as, from the SIP participant's attributes.

LiveKit sets ``sip.*`` attributes on every SIP participant (docs.livekit.io, "SIP participant"):
``sip.ruleID`` is the dispatch rule of an inbound call and is empty for outbound calls;
``sip.trunkPhoneNumber`` is the number the caller dialled (inbound) or calls from (outbound);
``sip.trunkID`` is the inbound or outbound trunk the call went through.

* An inbound call to one of the project's LiveKit Phone Numbers is ``sip_inbound``, or
  ``sip_inbound_toll_free`` when that number is a US toll-free number (800, 833, 844, 855, 866,
  877, 888: LiveKit Phone Numbers are US numbers).
* Every other call (a third-party trunk, inbound or outbound; LiveKit numbers are inbound only) is
  ``sip_trunk``.

Which numbers are the project's LiveKit numbers is configuration (``phone_numbers=`` /
``LIVEKIT_METERING_PHONE_NUMBERS`` on the agent). Without it, a call that came through no inbound
trunk (empty ``sip.trunkID``) is taken as a call to a LiveKit Phone Number: LiveKit numbers need
no trunk, third-party numbers always come through one. The agent and the collector both classify
with ``sip_resource``; the call's id (``records.sip_call_id``) does not depend on the class.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .records import Resource

__all__ = [
    "TOLL_FREE_CODES",
    "call_direction",
    "is_toll_free",
    "normalize_number",
    "parse_numbers",
    "sip_resource",
]

TOLL_FREE_CODES = ("800", "833", "844", "855", "866", "877", "888")


def normalize_number(number: str) -> str:
    """E.164 form of a phone number: ``+`` and digits; 10 bare digits are taken as a US number."""
    digits = re.sub(r"\D", "", number)
    if not digits:
        return ""
    if not number.strip().startswith("+") and len(digits) == 10:
        digits = "1" + digits
    return "+" + digits


def is_toll_free(number: str) -> bool:
    e164 = normalize_number(number)
    return len(e164) == 12 and e164.startswith("+1") and e164[2:5] in TOLL_FREE_CODES


def parse_numbers(numbers: str | Iterable[str] | None) -> frozenset[str] | None:
    """Configured LiveKit numbers in E.164 form (a string is comma-separated); None when there are none."""
    if numbers is None:
        return None
    items = numbers.split(",") if isinstance(numbers, str) else numbers
    found = frozenset(e164 for e164 in (normalize_number(str(n)) for n in items) if e164)
    return found or None


def call_direction(attributes: Mapping[str, str]) -> str:
    """``inbound`` or ``outbound``: only an inbound call has the dispatch rule that placed it."""
    return "inbound" if attributes.get("sip.ruleID") else "outbound"


def sip_resource(attributes: Mapping[str, str], livekit_numbers: Iterable[str] | None = None) -> Resource:
    """The resource one SIP call bills as (see the module docstring for the rule)."""
    inbound = call_direction(attributes) == "inbound"
    dialled = normalize_number(attributes.get("sip.trunkPhoneNumber", ""))
    numbers = parse_numbers(livekit_numbers)
    on_livekit_number = dialled in numbers if numbers is not None else not attributes.get("sip.trunkID")
    if inbound and dialled and on_livekit_number:
        return Resource.SIP_INBOUND_TOLL_FREE if is_toll_free(dialled) else Resource.SIP_INBOUND
    return Resource.SIP_TRUNK
