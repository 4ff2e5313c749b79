"""The collector's aiohttp app: an app factory, typed AppKey state, resources opened in cleanup_ctx,
and handlers that only translate HTTP into calls on :class:`Collector`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from ..rates import get_policy
from .auth import AuthError, KeyRing, Project
from .config import Limits
from .ingest import BadRequest, check_batch, inflate
from .invoice_formats import invoice_list, rendered
from .invoices import Billing, month_of
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .openapi import openapi_spec
from .outlook import Outlook
from .phone_numbers import PhoneBook
from .pricing import Pricer
from .queries import BadQuery, Queries
from .settings import Settings
from .store.base import Outcome, Store, open_store
from .webhook_usage import UsageRules
from .webhooks import Webhooks

__all__ = ["COLLECTOR", "Collector", "CollectorConfig", "create_app"]

log = logging.getLogger("livekit_metering.collector")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class CollectorConfig:
    database: str = "metering.db"
    keys: KeyRing = field(default_factory=KeyRing.from_env)
    limits: Limits = field(default_factory=Limits)
    prices: str | None = None  # a user price TOML; None: the bundled book
    # A session whose last checkpoint is older than this, and that no webhook closed, is closed at
    # that checkpoint's end (a crashed worker without webhooks). None: never.
    close_stale_after: timedelta | None = timedelta(minutes=15)
    sweep_every: timedelta = timedelta(seconds=60)
    dashboard: Path | None = None  # None: the packaged dashboard directory
    # Billing: plans, webhook policy, phone numbers (``--config``); months are closed (invoices
    # issued) this long after they end (None: never); joins with no leave are closed this long after
    # they were last seen, flagged (None: never).
    settings: Settings = field(default_factory=Settings)
    invoice_grace: timedelta | None = timedelta(hours=24)
    close_joins_after: timedelta | None = timedelta(hours=24)
    clock: Callable[[], datetime] = field(default=utcnow)


class Collector:
    """Everything the handlers call: ingest, webhooks, queries. Knows nothing of HTTP."""

    def __init__(self, config: CollectorConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.keys = config.keys
        self.limits = config.limits
        self.metrics = Metrics()
        pricer = Pricer.bundled(config.prices)
        self.queries = Queries(store, pricer, config.limits)
        self.phones = PhoneBook(config.settings, self._credentials)
        self.webhooks = Webhooks(store, config.keys, rules=self._rules, limits=config.limits, clock=config.clock)
        self.billing = Billing(
            store,
            self.queries,
            pricer,
            plan_of=lambda project: config.settings.project(project).plan,
            grace=config.invoice_grace or timedelta(hours=24),
            write_rentals=self._write_rentals,
        )
        self.outlook = Outlook(store, pricer, lambda project: config.settings.project(project).plan, config.clock)

    @property
    def projects(self) -> list[str]:
        return sorted({self.keys.project_of(key) for key in self.keys.secrets()})

    def _credentials(self, project: str) -> tuple[str, str] | None:
        return next(
            ((k, s) for k, s in sorted(self.keys.secrets().items()) if self.keys.project_of(k) == project), None
        )

    def _rules(self, project: str) -> UsageRules:
        settings = self.config.settings
        return UsageRules(get_policy(settings.policy), self.phones.livekit_numbers(project), settings.customer_key)

    async def _write_rentals(self, project: str, month: str) -> None:
        await self.phones.refresh(project)
        await self.phones.write_rentals(self.store, project, month, get_policy(self.config.settings.policy))

    async def sweep(self) -> None:
        """Close stale usage, keep phone number rentals current, close the months that are due, warn of quotas."""
        now = self.config.clock()
        if self.config.close_stale_after is not None:
            closed = await self.webhooks.close_stale(now, self.config.close_stale_after, self.config.close_joins_after)
            self.metrics.closed_sessions.inc(len(closed))
        if self.config.invoice_grace is not None:
            for project in self.projects:
                await self._write_rentals(project, month_of(now))
                await self.billing.close_due(project, now)
        for project in self.projects:
            await self.outlook.check(project)

    async def ingest(self, project: str, body: bytes, encoding: str | None) -> list[dict[str, str]]:
        checked = check_batch(inflate(body, encoding, self.limits), self.limits, now=self.config.clock())
        valid = [c.item for c in checked if c.item is not None]
        outcomes = iter(await self.store.ingest(project, valid))
        results: list[dict[str, str]] = []
        counts: dict[str, int] = {}
        for c in checked:
            status, reason = (Outcome.REJECTED.value, c.reason) if c.item is None else _ANSWERS[next(outcomes)]
            results.append({"id": c.id, "status": status, "reason": reason})
            counts[status] = counts.get(status, 0) + 1
        for status, n in counts.items():
            self.metrics.records.labels(status).inc(n)
        log.info("ingest", extra={"project": project, "records": len(results), **counts})
        return results


_REASONS = {
    Outcome.DUPLICATE: "already stored (an identical resend, or a stale checkpoint)",
    Outcome.CONFLICT: "this id is stored, final, with a different payload",
}
_ANSWERS = {outcome: (outcome.value, _REASONS.get(outcome, "")) for outcome in Outcome}  # status, reason

COLLECTOR = web.AppKey("collector", Collector)
CONFIG = web.AppKey("config", CollectorConfig)


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """Bad input becomes a 4xx with a message; only a bug becomes a 500 (and is logged)."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.monotonic()
    collector = request.app.get(COLLECTOR)
    response: web.StreamResponse
    try:
        response = await handler(request)
    except AuthError as exc:
        response = _error(401, str(exc))
    except BadRequest as exc:
        response = _error(exc.status, exc.message)
    except BadQuery as exc:
        response = _error(400, str(exc))
    except web.HTTPRequestEntityTooLarge:
        limit = collector.limits.max_body_bytes if collector else 0
        response = _error(413, f"the body is larger than {limit} bytes; send smaller batches")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, exc.reason)
    except Exception:
        log.exception("unhandled error", extra={"route": route})
        response = _error(500, "internal error; the collector logged it")
    if collector is not None:
        collector.metrics.latency.labels(route).observe(time.monotonic() - started)
        collector.metrics.requests.labels(route, str(response.status)).inc()
    return response


def _collector(request: web.Request) -> Collector:
    return request.app[COLLECTOR]


def _query_project(request: web.Request) -> Project:
    header = request.headers.get("Authorization") or request.query.get("token")
    return _collector(request).keys.verify(header)


async def post_records(request: web.Request) -> web.Response:
    collector = _collector(request)
    limit = collector.limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _error(413, f"the body is {request.content_length} bytes; the limit is {limit}, send smaller batches")
    body = await request.read()
    project = collector.keys.verify(request.headers.get("Authorization"), body)
    try:
        results = await collector.ingest(project.name, body, request.headers.get("Content-Encoding"))
    except (BadRequest, AuthError):
        raise
    except Exception:
        # The store failed (database down, disk full): nothing was acknowledged, the client retries.
        log.exception("store error", extra={"project": project.name})
        return _error(503, "the store is unavailable; retry later", **{"Retry-After": "1"})
    return web.json_response({"results": results})


async def post_webhook(request: web.Request) -> web.Response:
    collector = _collector(request)
    body = await request.read()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return _error(400, "the webhook body is not UTF-8 text")
    result = await collector.webhooks.handle(text, request.headers.get("Authorization"))
    collector.metrics.webhooks.labels(result.event or "unknown").inc()
    if result.closed:
        collector.metrics.closed_sessions.inc(len(result.closed))
    return web.json_response(result.to_json())


async def get_sessions(request: web.Request) -> web.Response:
    project = _query_project(request)
    return web.json_response(await _collector(request).queries.sessions(project.name, request.query))


async def get_session_records(request: web.Request) -> web.Response:
    project = _query_project(request)
    sid = request.match_info["session_id"]
    return web.json_response(await _collector(request).queries.session_records(project.name, sid))


async def get_usage(request: web.Request) -> web.Response:
    project = _query_project(request)
    return web.json_response(await _collector(request).queries.usage(project.name, request.query))


async def get_invoice(request: web.Request) -> web.Response:
    project = _query_project(request)
    return web.json_response(await _collector(request).queries.invoice(project.name, request.query))


async def get_quotas(request: web.Request) -> web.Response:
    project = _query_project(request)
    return web.json_response(await _collector(request).outlook.quotas(project.name, request.query))


async def get_forecast(request: web.Request) -> web.Response:
    project = _query_project(request)
    return web.json_response(await _collector(request).outlook.forecast(project.name, request.query))


async def get_spend(request: web.Request) -> web.Response:
    project = _query_project(request)
    return web.json_response(await _collector(request).outlook.spend(project.name, request.query))


async def get_invoices(request: web.Request) -> web.Response:
    project = _query_project(request)
    return web.json_response(await invoice_list(_collector(request).store, project.name))


async def get_issued_invoice(request: web.Request) -> web.Response:
    project = _query_project(request)
    closed = await _collector(request).store.issued_invoice(project.name, request.match_info["number"])
    if closed is None:
        return _error(404, f"no invoice {request.match_info['number']!r}; GET /v1/invoices lists them")
    customer = request.match_info.get("customer")
    if customer is None:
        return rendered(closed.document, request.query.get("format") or "json", f"invoice-{closed.number}")
    if customer not in closed.statements:
        return _error(404, f"invoice {closed.number} has no statement for customer {customer!r}")
    name = f"statement-{closed.number}-{customer}"
    return rendered(closed.statements[customer], request.query.get("format") or "json", name)


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_spec(), dumps=lambda d: json.dumps(d, indent=1))


async def get_healthz(request: web.Request) -> web.Response:
    collector = _collector(request)
    try:
        await collector.store.count("__healthz__")
    except Exception as exc:
        return web.json_response({"status": "unavailable", "error": str(exc)}, status=503)
    return web.json_response({"status": "ok", "pid": os.getpid()})  # the pid tells `serve --workers` apart


async def get_metrics(request: web.Request) -> web.Response:
    collector = _collector(request)
    body = collector.metrics.render()
    try:
        body += await collector.outlook.gauges(collector.projects)
    except Exception:  # the store is down: the request metrics still answer
        log.exception("quota gauges failed")
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _dashboard_dir(config: CollectorConfig) -> Path:
    if config.dashboard is not None:
        return config.dashboard
    return Path(str(resources.files("livekit_metering.collector").joinpath("dashboard")))


async def get_dashboard(request: web.Request) -> web.StreamResponse:
    root = _dashboard_dir(request.app[CONFIG]).resolve()
    name = request.match_info.get("path") or "index.html"
    target = (root / name).resolve()
    if root not in target.parents and target != root:
        return _error(404, "not found")
    if target.is_dir():
        target = target / "index.html"
    if not target.is_file():
        return _error(404, f"no dashboard file {name!r}")
    return web.FileResponse(target)


async def dashboard_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard/")


async def _sweep(collector: Collector) -> None:
    """Sweep now and then; a failure is logged and retried at the next sweep."""
    while True:
        try:
            await collector.sweep()
        except Exception:
            log.exception("sweep failed")
        await asyncio.sleep(collector.config.sweep_every.total_seconds())


def create_app(config: CollectorConfig | None = None, *, store: Store | None = None) -> web.Application:
    """The collector app. The store opens when the app starts and closes after in-flight requests finish."""
    config = config or CollectorConfig()
    # auto_decompress off: the signature covers the body exactly as sent (gzip included), and
    # inflate() bounds the inflated size itself.
    app = web.Application(
        client_max_size=config.limits.max_body_bytes,
        middlewares=[_errors],
        handler_args={"auto_decompress": False},
    )
    app[CONFIG] = config

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        the_store = store or open_store(config.database)
        await the_store.open()
        app[COLLECTOR] = Collector(config, the_store)
        log.info("collector started", extra={"database": _redact(config.database), "projects": len(config.keys)})
        sweeper = asyncio.create_task(_sweep(app[COLLECTOR]))  # quota warnings, at least
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
            await the_store.close()
            log.info("collector stopped")

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/records", post_records)
    app.router.add_post("/v1/livekit/webhook", post_webhook)
    app.router.add_get("/v1/sessions", get_sessions)
    app.router.add_get("/v1/sessions/{session_id}/records", get_session_records)
    app.router.add_get("/v1/usage", get_usage)
    app.router.add_get("/v1/invoice", get_invoice)
    app.router.add_get("/v1/quotas", get_quotas)
    app.router.add_get("/v1/forecast", get_forecast)
    app.router.add_get("/v1/spend", get_spend)
    app.router.add_get("/v1/invoices", get_invoices)
    app.router.add_get("/v1/invoices/{number}", get_issued_invoice)
    app.router.add_get("/v1/invoices/{number}/statements/{customer}", get_issued_invoice)
    app.router.add_get("/openapi.json", get_openapi)
    app.router.add_get("/healthz", get_healthz)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/dashboard", dashboard_redirect)
    app.router.add_get("/dashboard/{path:.*}", get_dashboard)
    return app


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
