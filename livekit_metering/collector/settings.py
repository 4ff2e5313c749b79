"""The collector's billing settings: the plan each project is invoiced on, the policy that rounds
webhook usage, the LiveKit URL to read a project's phone numbers from, and the phone numbers
themselves. From ``serve --config collector.toml`` (every key optional)::

    plan = "ship"                    # the plan invoices are issued on
    policy = "minute-increments"     # rounds the usage derived from webhooks
    customer_key = "customer_id"     # participant attribute (or room metadata key) naming the customer
    livekit_url = "https://acme.livekit.cloud"   # read phone numbers from SIP dispatch rules

    [projects.acme]                  # per project (the project of an API key in --keys)
    plan = "scale"
    livekit_url = "https://acme.livekit.cloud"

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

__all__ = ["PhoneNumber", "ProjectSettings", "Settings", "SettingsError"]


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


@dataclass(frozen=True)
class _Own:
    """What a [projects.<name>] table sets itself (None: the top-level value)."""

    plan: str | None = None
    livekit_url: str | None = None
    numbers: tuple[PhoneNumber, ...] = ()


@dataclass(frozen=True)
class Settings:
    plan: str = "ship"
    policy: str = "minute-increments"
    customer_key: str = ""
    livekit_url: str = ""
    own: Mapping[str, _Own] = field(default_factory=dict)

    def project(self, name: str) -> ProjectSettings:
        own = self.own.get(name) or _Own()
        return ProjectSettings(
            plan=own.plan or self.plan,
            livekit_url=self.livekit_url if own.livekit_url is None else own.livekit_url,
            numbers=own.numbers,
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
    known = {"plan", "policy", "customer_key", "livekit_url", "projects", "phone_numbers"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise SettingsError(f"{where}: unknown keys {unknown}; known keys are {sorted(known)}")
    top = {key: _text(doc, key, where) for key in ("plan", "policy", "customer_key", "livekit_url") if key in doc}
    own: dict[str, _Own] = {}
    table = doc.get("projects", {})
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: [projects.<name>] must be tables")
    for name, entry in table.items():
        if not isinstance(entry, dict) or set(entry) - {"plan", "livekit_url"}:
            raise SettingsError(f"{where}: projects.{name} may set plan and livekit_url only")
        label = f"{where}: projects.{name}"
        own[name] = _Own(
            plan=_text(entry, "plan", label) if "plan" in entry else None,
            livekit_url=_text(entry, "livekit_url", label) if "livekit_url" in entry else None,
        )
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
    try:
        get_policy(settings.policy)
    except UnknownPolicy as exc:
        raise SettingsError(f"{where}: {exc}") from None
    return settings
