"""The collector's billing settings: the plan each project is invoiced on, the policy that rounds
webhook usage, the LiveKit URL to read a project's phone numbers from, and the phone numbers
themselves. From ``serve --config collector.toml`` (every key optional)::

    plan = "ship"                    # the plan invoices are issued on
    policy = "minute-increments"     # rounds the usage derived from webhooks
    customer_key = "customer_id"     # participant attribute (or room metadata key) naming the customer
    livekit_url = "https://acme.livekit.cloud"   # read phone numbers from SIP dispatch rules
    livekit_server = "cloud"         # or "self-hosted": your own LiveKit server sends the webhooks, so
                                     # the usage they give is metered but not billed by LiveKit

    [projects.acme]                  # per project (the project of an API key in --keys)
    plan = "scale"
    livekit_url = "https://acme.livekit.cloud"
    livekit_server = "cloud"

    [[phone_numbers]]                # the project's LiveKit Phone Numbers, with their active dates
    project = "acme"                 # default "default"
    number = "+14155550100"
    since = 2026-10-03
    until = 2027-01-01               # optional: the first day it is no longer rented
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

from ..rates import UnknownPolicy, get_policy
from ..telephony import normalize_number
from .pricing import PLANS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["LIVEKIT_SERVERS", "PhoneNumber", "ProjectSettings", "Settings", "SettingsError"]

LIVEKIT_SERVERS = ("cloud", "self-hosted")
_PER_PROJECT = ("plan", "livekit_url", "livekit_server")


class SettingsError(ValueError):
    """The settings file is malformed; the message names the entry and the fix."""


@dataclass(frozen=True)
class PhoneNumber:
    """A LiveKit Phone Number rented from ``since`` until before ``until`` (None: still rented)."""

    number: str  # E.164
    since: date
    until: date | None = None
    source: str = "config"

    def active_in(self, first: date, after: date) -> bool:
        """Whether it was rented on any day of [first, after)."""
        return self.since < after and (self.until is None or self.until > first)


@dataclass(frozen=True)
class ProjectSettings:
    plan: str = "ship"
    livekit_url: str = ""
    numbers: tuple[PhoneNumber, ...] = ()
    livekit_server: str = "cloud"


@dataclass(frozen=True)
class _Own:
    """What a [projects.<name>] table sets itself (None: the top-level value)."""

    plan: str | None = None
    livekit_url: str | None = None
    numbers: tuple[PhoneNumber, ...] = ()
    livekit_server: str | None = None


@dataclass(frozen=True)
class Settings:
    plan: str = "ship"
    policy: str = "minute-increments"
    customer_key: str = ""
    livekit_url: str = ""
    livekit_server: str = "cloud"
    own: Mapping[str, _Own] = field(default_factory=dict)

    def project(self, name: str) -> ProjectSettings:
        own = self.own.get(name) or _Own()
        return ProjectSettings(
            plan=own.plan or self.plan,
            livekit_url=self.livekit_url if own.livekit_url is None else own.livekit_url,
            numbers=own.numbers,
            livekit_server=own.livekit_server or self.livekit_server,
        )

    @property
    def projects(self) -> list[str]:
        return sorted(self.own)

    def with_overrides(
        self, *, plan: str | None = None, policy: str | None = None, livekit_url: str | None = None
    ) -> Settings:
        """Command-line options over the file's top-level values (a project's own table still wins)."""
        changed = replace(
            self, plan=plan or self.plan, policy=policy or self.policy, livekit_url=livekit_url or self.livekit_url
        )
        return _checked(changed, "the command line")

    @classmethod
    def load(cls, path: str | Path) -> Settings:
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read settings file {path}: {exc}") from None
        return parse_settings(doc, str(path))


def parse_settings(doc: Mapping[str, Any], where: str = "settings") -> Settings:
    known = {"plan", "policy", "customer_key", "livekit_url", "livekit_server", "projects", "phone_numbers"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise SettingsError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")
    texts = ("plan", "policy", "customer_key", "livekit_url", "livekit_server")
    top = {key: _text(doc, key, where) for key in texts if key in doc}
    own: dict[str, _Own] = {}
    table = doc.get("projects", {})
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: [projects.<name>] must be tables")
    for name, entry in table.items():
        if not isinstance(entry, dict) or set(entry) - set(_PER_PROJECT):
            raise SettingsError(f"{where}: projects.{name} may set plan, livekit_url and livekit_server only")
        label = f"{where}: projects.{name}"
        plan, url, server = (_text(entry, key, label) if key in entry else None for key in _PER_PROJECT)
        own[name] = _Own(plan=plan, livekit_url=url, livekit_server=server)
    numbers = doc.get("phone_numbers", [])
    if not isinstance(numbers, list):
        raise SettingsError(f"{where}: phone numbers are [[phone_numbers]] entries")
    for i, entry in enumerate(numbers):
        project, number = _phone_number(entry, f"{where}: phone_numbers #{i + 1}")
        mine = own.get(project, _Own())
        own[project] = replace(mine, numbers=(*mine.numbers, number))
    return _checked(Settings(**top, own=own), where)


def _phone_number(entry: Any, label: str) -> tuple[str, PhoneNumber]:
    if not isinstance(entry, dict):
        raise SettingsError(f"{label} must be a table with number and since")
    project = entry.get("project", "default")
    number = normalize_number(str(entry.get("number", "")))
    since, until = entry.get("since"), entry.get("until")
    if not isinstance(project, str) or not project:
        raise SettingsError(f"{label}: project must be a project name")
    if not 8 <= len(number) <= 16:
        raise SettingsError(f'{label}: number must be a phone number such as "+14155550100"')
    if not isinstance(since, date) or (until is not None and not isinstance(until, date)):
        raise SettingsError(f"{label}: since (and until, if given) must be TOML dates such as 2026-10-03")
    if isinstance(since, datetime) or isinstance(until, datetime):
        raise SettingsError(f"{label}: since and until are dates (2026-10-03), not times")
    if until is not None and until <= since:
        raise SettingsError(f"{label}: until ({until}) must be after since ({since})")
    return project, PhoneNumber(number, since, until)


def _text(doc: Mapping[str, Any], key: str, where: str) -> str:
    value = doc[key]
    if not isinstance(value, str):
        raise SettingsError(f"{where}: {key} must be a string")
    return value


def _checked(settings: Settings, where: str) -> Settings:
    for name in ["", *settings.projects]:
        project = settings.project(name)
        if project.plan not in PLANS:
            raise SettingsError(f"{where}: plan {project.plan!r} ({name or 'default'}) is not one of {list(PLANS)}")
        if project.livekit_url and not project.livekit_url.startswith(("https://", "http://", "wss://", "ws://")):
            raise SettingsError(f"{where}: livekit_url {project.livekit_url!r} must be an https:// (or wss://) URL")
        if project.livekit_server not in LIVEKIT_SERVERS:
            raise SettingsError(
                f"{where}: livekit_server {project.livekit_server!r} ({name or 'default'}) is not one of "
                f"{list(LIVEKIT_SERVERS)}: cloud (LiveKit Cloud bills the usage) or self-hosted (your own server)"
            )
    try:
        get_policy(settings.policy)
    except UnknownPolicy as exc:
        raise SettingsError(f"{where}: {exc}") from None
    return settings
