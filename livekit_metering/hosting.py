"""Where an agent runs, and what LiveKit bills for its own presence in the room.

- ``cloud``: deployed to LiveKit Cloud. The agent's time is billed as agent session minutes.
- ``self-hosted-on-cloud``: your own machines, a LiveKit Cloud project. The agent is an ordinary
  WebRTC participant: its own connection minutes are billed (and its downstream data), not agent
  session minutes.
- ``self-hosted``: your own LiveKit server. LiveKit bills nothing for transport; the records are
  still written, marked ``provider="self-hosted"``, so reports show the usage and invoices leave it out.

Detected from what livekit-agents itself reads: a hosted agent's worker gets
``LIVEKIT_AGENT_DEPLOYMENT`` / ``LIVEKIT_WORKER_TOKEN`` / ``LIVEKIT_AGENT_ID`` from LiveKit Cloud,
and ``livekit.agents.utils.misc.is_cloud(url)`` tells a LiveKit Cloud server URL from any other.
``hosting=`` or ``LIVEKIT_METERING_HOSTING`` overrides the detection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import Enum

from .records import Resource

__all__ = [
    "CLOUD_AGENT_ENV",
    "HOSTING_ENV",
    "NOT_BILLED_PROVIDER",
    "Hosting",
    "InvalidHosting",
    "detect_hosting",
    "is_cloud_url",
    "parse_hosting",
]

HOSTING_ENV = "LIVEKIT_METERING_HOSTING"
# Set by LiveKit Cloud for deployed agents (livekit-agents reads them in worker.py and telemetry/traces.py).
CLOUD_AGENT_ENV = ("LIVEKIT_AGENT_DEPLOYMENT", "LIVEKIT_WORKER_TOKEN", "LIVEKIT_AGENT_ID")
# The provider of platform usage that no LiveKit invoice carries (your own LiveKit server).
NOT_BILLED_PROVIDER = "self-hosted"


class InvalidHosting(ValueError):
    """A hosting value that is not one of the three; the message lists them."""


class Hosting(str, Enum):
    CLOUD = "cloud"
    SELF_HOSTED_ON_CLOUD = "self-hosted-on-cloud"
    SELF_HOSTED = "self-hosted"

    @property
    def session_resource(self) -> Resource:
        """The resource the agent's own time in the room is billed as."""
        return Resource.AGENT_SESSION if self is Hosting.CLOUD else Resource.CONNECTION

    @property
    def on_livekit_cloud(self) -> bool:
        """Whether the room is on LiveKit Cloud, so LiveKit bills its platform usage."""
        return self is not Hosting.SELF_HOSTED

    @property
    def provider(self) -> str:
        """The ``provider`` of platform records: empty (LiveKit) or ``self-hosted`` (not billed by LiveKit)."""
        return "" if self.on_livekit_cloud else NOT_BILLED_PROVIDER


def parse_hosting(value: str | Hosting, where: str = "hosting=") -> Hosting:
    """A Hosting from its name; raise InvalidHosting naming the three values."""
    if isinstance(value, Hosting):
        return value
    try:
        return Hosting(str(value).strip().lower())
    except ValueError:
        names = ", ".join(repr(h.value) for h in Hosting)
        raise InvalidHosting(f"{where} must be one of {names}, got {value!r}") from None


def detect_hosting(
    url: str,
    *,
    option: str | Hosting | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Hosting, str]:
    """Where this agent runs, and how that was decided (``option``, ``env``, ``deployment``, ``url``).

    ``url`` is the LiveKit server URL of the job. An explicit ``option`` wins, then
    ``LIVEKIT_METERING_HOSTING``; a value there that is not a hosting raises InvalidHosting.
    """
    env = os.environ if environ is None else environ
    if option is not None:
        return parse_hosting(option), "option"
    named = env.get(HOSTING_ENV, "").strip()
    if named:
        return parse_hosting(named, f"{HOSTING_ENV}="), "env"
    if any(env.get(name) for name in CLOUD_AGENT_ENV):
        return Hosting.CLOUD, "deployment"
    return (Hosting.SELF_HOSTED_ON_CLOUD if is_cloud_url(url) else Hosting.SELF_HOSTED), "url"


def is_cloud_url(url: str) -> bool:
    """Whether ``url`` is a LiveKit Cloud server, by livekit-agents' own rule (``utils.misc.is_cloud``)."""
    try:
        from livekit.agents.utils.misc import is_cloud
    except Exception:  # pragma: no cover - livekit-agents moved it: the same rule, by hand
        from urllib.parse import urlparse

        host = urlparse(url).hostname or ""
        return host.endswith((".livekit.cloud", ".livekit.run"))
    return bool(is_cloud(url))
