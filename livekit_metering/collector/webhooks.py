"""LiveKit webhooks: the project's usage (see ``webhook_usage``), and closing what was left open.

A crashed worker leaves its ``agent_session`` record as a checkpoint. When LiveKit reports the
room finished, the agent participant left, or the agent job ended, the collector writes the final
record itself: from the checkpoint's start to the time LiveKit reports (never earlier than the last
checkpoint's end, which the agent already proved), rounded by the checkpoint's policy, with
``meta.closed_by = "webhook:<event>"``. ``room_finished`` likewise closes every participant
connection and SIP call still open in the room (a join whose leave never came), flagged.

Everything one webhook writes is stored in the same transaction as its id: a redelivered webhook
changes nothing. Reordering is harmless: a close is idempotent, the earliest reported end wins among
webhook closes, and the agent's own final record, if it arrives later, supersedes a webhook close
(see ``store.base.fold``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt
from google.protobuf import json_format
from livekit import api
from livekit.protocol import models

from ..rates import get_policy
from ..records import RESOURCE_BASE_UNIT, BaseUnit, Status
from .auth import AuthError, KeyRing
from .config import Limits
from .ingest import BadRequest
from .store.base import Outcome, Store, Stored, WebhookMark, epoch_ms, from_ms, is_session_time
from .webhook_usage import PARTICIPANT_RESOURCES, UsageRules, usage_of

__all__ = ["WebhookResult", "Webhooks", "close_record"]

log = logging.getLogger("livekit_metering.collector")

CLOSING_EVENTS = ("room_finished", "participant_left", "agent_job_ended")


@dataclass
class WebhookResult:
    event: str
    id: str
    project: str
    duplicate: bool = False
    closed: list[str] = field(default_factory=list)  # agent sessions closed
    usage: list[str] = field(default_factory=list)  # ids of usage records written (opened or closed)

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "id": self.id,
            "duplicate": self.duplicate,
            "closed": self.closed,
            "usage": self.usage,
        }


def _default_rules(project: str) -> UsageRules:
    return UsageRules(get_policy())


class Webhooks:
    def __init__(
        self,
        store: Store,
        keys: KeyRing,
        *,
        rules: Callable[[str], UsageRules] = _default_rules,
        limits: Limits | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.store = store
        self._receivers = {
            key: api.WebhookReceiver(api.TokenVerifier(key, secret)) for key, secret in keys.secrets().items()
        }
        self._keys = keys
        self._rules = rules
        self._limits = limits or Limits()
        self._clock = clock

    def verify(self, body: str, auth: str | None) -> tuple[str, Any]:
        """(project, WebhookEvent) of a webhook signed by a known key; AuthError otherwise."""
        if not auth:
            raise AuthError("missing Authorization header on the webhook")
        token = auth.strip()
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError as exc:
            raise AuthError(f"the webhook token is not a valid JWT ({exc})") from None
        receiver = self._receivers.get(issuer) if isinstance(issuer, str) else None
        if receiver is None:
            raise AuthError(f"unknown API key {issuer!r} on the webhook")
        try:
            event = receiver.receive(body, token)
        except json_format.ParseError as exc:  # signed correctly, but not a WebhookEvent
            raise BadRequest(400, f"the webhook body is not a LiveKit WebhookEvent: {exc}") from None
        except Exception as exc:  # livekit-api raises plain Exception and PyJWT errors alike
            raise AuthError(f"webhook signature check failed: {exc}") from None
        return self._keys.project_of(str(issuer)), event

    async def handle(self, body: str, auth: str | None) -> WebhookResult:
        project, event = self.verify(body, auth)
        self._check_time(event)
        result = WebhookResult(event=event.event, id=event.id, project=project)
        items: list[Stored] = []
        if event.event in CLOSING_EVENTS:
            targets, end = await self._targets(project, event)
            items += [close_record(stored, end, f"webhook:{event.event}") for stored in targets]
        reported = datetime.fromtimestamp(event.created_at, tz=timezone.utc)
        usage = usage_of(event, self._rules(project))
        if event.event == "participant_joined" and usage and event.room.sid:
            # A join delivered after its room finished: closed at the room's end, not left open.
            finished = await self.store.room_finished_ms(project, event.room.sid)
            if finished is not None:
                usage = [close_record(u, from_ms(finished), "webhook:room_finished", flag="no-leave") for u in usage]
        items += usage
        if event.event == "room_finished" and event.room.sid:
            for stored in await self.store.open_usages(project, event.room.sid, PARTICIPANT_RESOURCES):
                items.append(close_record(stored, reported, "webhook:room_finished", flag="no-leave"))
        finished_room = event.room.sid if event.event == "room_finished" else ""
        mark = WebhookMark(event.id, event.event, finished_room, epoch_ms(reported))
        outcomes = await self.store.ingest_webhook(project, mark, items)
        result.duplicate = outcomes is None
        for item, outcome in zip(items, outcomes or [], strict=False):
            if outcome is Outcome.ACCEPTED:
                if is_session_time(item.record):
                    if item.record.session_id not in result.closed:
                        result.closed.append(item.record.session_id)
                else:
                    result.usage.append(item.record.id)
        log.info(
            "webhook",
            extra={
                "project": project,
                "event": event.event,
                "webhook_id": event.id,
                "closed": result.closed,
                "usage": len(result.usage),
                "duplicate": result.duplicate,
            },
        )
        return result

    def _check_time(self, event: Any) -> None:
        """A webhook reported far outside the accepted window is refused, like a record would be."""
        if not event.created_at:
            raise BadRequest(400, "the webhook has no createdAt time")
        now = self._clock()
        reported = datetime.fromtimestamp(min(event.created_at, 2**33), tz=timezone.utc)
        if reported < now - self._limits.max_past:
            raise BadRequest(400, f"the webhook's createdAt ({reported.isoformat()}) is more than "
                             f"{self._limits.max_past.days} days in the past")  # fmt: skip
        if reported > now + self._limits.max_future:
            raise BadRequest(400, f"the webhook's createdAt ({reported.isoformat()}) is in the future")

    async def _targets(self, project: str, event: Any) -> tuple[list[Stored], datetime]:
        reported = datetime.fromtimestamp(event.created_at or 0, tz=timezone.utc)
        kind = event.event
        if kind == "agent_job_ended":
            if event.job.state.ended_at:
                reported = from_ms(event.job.state.ended_at // 1_000_000)
            if not event.job.id:
                return [], reported
            return await self.store.open_agent_sessions(project, session_id=event.job.id), reported
        if kind == "participant_left":
            p = event.participant
            if p.identity.startswith("agent-"):
                return await self.store.open_agent_sessions(project, session_id=p.identity[len("agent-") :]), reported
            if p.kind != models.ParticipantInfo.Kind.AGENT:
                return [], reported
            found = await self._in_room(project, event)
            name = p.attributes.get("lk.agent.name")
            if name:
                found = [s for s in found if s.record.agent_name == name]
            # Without the job id, only an unambiguous match is safe to close.
            return (found if len(found) == 1 else []), reported
        return await self._in_room(project, event), reported

    async def _in_room(self, project: str, event: Any) -> list[Stored]:
        if event.room.sid:
            return await self.store.open_agent_sessions(project, room_sid=event.room.sid)
        if event.room.name:
            return await self.store.open_agent_sessions(project, room=event.room.name)
        return []

    async def close_stale(
        self, now: datetime, after: timedelta, joins_after: timedelta | None = None, limit: int = 1000
    ) -> list[str]:
        """Close what stayed open: usages whose agent's last checkpoint ended more than ``after`` ago and
        that no webhook closed (a crashed worker, and no webhook configured or delivered), at that
        checkpoint's end; and, when ``joins_after`` is given, usages a webhook opened (a join, an egress
        or ingress start) whose end never came within that long, at the last time seen, flagged.
        Returns the sessions of what was closed."""
        # The agent's session time ends at its last checkpoint; any other usage it left open (a call that
        # went on after the agent left, a stream) is closed there too, flagged, so a webhook LiveKit sends
        # later for it still replaces the guess.
        found = [
            (project, close_record(stored, stored.record.end, "stale-checkpoint",
                                   flag="" if is_session_time(stored.record) else "no-end"))
            for project, stored in await self.store.stale_checkpoints(now - after, by_webhook=False, limit=limit)
        ]  # fmt: skip
        if joins_after is not None:
            for project, stored in await self.store.stale_checkpoints(now - joins_after, by_webhook=True, limit=limit):
                participant = stored.record.resource in PARTICIPANT_RESOURCES
                cause, flag = ("stale-join", "no-leave") if participant else ("stale", "no-end")
                # It happened, for an unknown time: at least one increment (1 ms, rounded up).
                end = max(stored.record.end, stored.record.start + timedelta(milliseconds=1))
                found.append((project, close_record(stored, end, cause, flag=flag)))
        closed: list[str] = []
        for project in sorted({p for p, _ in found}):
            items = [item for p, item in found if p == project]
            for item, outcome in zip(items, await self.store.ingest(project, items), strict=True):
                if outcome is Outcome.ACCEPTED and item.record.session_id not in closed:
                    closed.append(item.record.session_id)
        if closed:
            log.info("closed stale usage", extra={"sessions": closed})
        return closed


def close_record(stored: Stored, reported: datetime, cause: str, *, flag: str = "") -> Stored:
    """The final form of an open (or collector-closed) usage ending at ``reported``: never before the last
    checkpoint's end, rounded by the checkpoint's policy, ``meta.closed_by = cause`` (and ``meta.flag``
    when the end is the collector's guess). Amounts that are not time (bytes, events) stay as they are."""
    cp = stored.record
    floor_ms = int(cp.meta.get("checkpoint_end_ms", epoch_ms(cp.end))) if stored.by_webhook else epoch_ms(cp.end)
    start_ms = epoch_ms(cp.start)
    if RESOURCE_BASE_UNIT[cp.resource] is BaseUnit.MILLISECOND:
        end_ms = max(epoch_ms(reported), floor_ms)
        raw = max(end_ms - start_ms, 0)
    else:
        end_ms, raw = epoch_ms(cp.end), cp.raw
    policy = get_policy(cp.policy)
    meta: dict[str, str | int | bool] = {**cp.meta, "closed_by": cause, "checkpoint_end_ms": floor_ms}
    meta.pop("opened_by", None)
    if flag:
        meta["flag"] = flag
    record = policy.record(
        id=cp.id,
        session_id=cp.session_id,
        resource=cp.resource,
        raw=raw,
        start=cp.start,
        end=from_ms(start_ms + raw) if RESOURCE_BASE_UNIT[cp.resource] is BaseUnit.MILLISECOND else cp.end,
        status=Status.OK,
        room=cp.room,
        room_sid=cp.room_sid,
        agent_name=cp.agent_name,
        worker_id=cp.worker_id,
        customer=cp.customer,
        model=cp.model,
        provider=cp.provider,
        language=cp.language,
        attributes=cp.attributes,
        meta=meta,
    )
    return Stored(record, by_webhook=True)
