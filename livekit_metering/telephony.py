"""Telephony: which resource a SIP call bills as, from the SIP participant's attributes.

LiveKit sets ``sip.*`` attributes on every SIP participant (docs.livekit.io, "SIP participant"):
``sip.ruleID`` is the dispatch rule of an inbound call and is empty for outbound calls;
``sip.trunkPhoneNumber`` is the number the caller dialled (inbound) or calls from (outbound).

* An inbound call to one of the project's LiveKit Phone Numbers is ``sip_inbound``, or
  ``sip_inbound_toll_free`` when that number is a US toll-free number (800, 833, 844, 855, 866,
  877, 888: LiveKit Phone Numbers are US numbers).
* Every other call (a third-party trunk, inbound or outbound; LiveKit numbers are inbound only) is
  ``sip_trunk``.

Which numbers are the project's LiveKit numbers is configuration: neither an agent nor a webhook
can tell a LiveKit number from a third-party trunk's number on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .records import Resource

__all__ = ["TOLL_FREE_CODES", "is_toll_free", "normalize_number", "sip_resource"]

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


def sip_resource(attributes: Mapping[str, str], livekit_numbers: Iterable[str]) -> Resource:
    """The resource one SIP call bills as (see the module docstring for the rule)."""
    inbound = bool(attributes.get("sip.ruleID"))
    dialled = normalize_number(attributes.get("sip.trunkPhoneNumber", ""))
    if inbound and dialled and dialled in {normalize_number(n) for n in livekit_numbers}:
        return Resource.SIP_INBOUND_TOLL_FREE if is_toll_free(dialled) else Resource.SIP_INBOUND
    return Resource.SIP_TRUNK
