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

from ..hosting import NOT_BILLED_PROVIDER
from ..rates import get_policy
from .auth import AuthError, KeyRing, Project
from .config import Limits
from .ingest import BadRequest, check_batch, inflate, short
from .invoice_formats import invoice_list, rendered
from .invoices import Billing, month_of
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .openapi import openapi_spec
from .outlook import Outlook
from .phone_numbers import PhoneBook
from .pricing import Pricer
from .queries import BadQuery, Queries
from .settings import Settings
from .store.base import Outcome, Store, StoreLimit, open_store, redacted
from .webhook_usage import UsageRules
from .webhooks import Webhooks

__all__ = ["COLLECTOR", "DRAIN", "Collector", "CollectorConfig", "Drain", "create_app"]

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

        def plan_of(project: str) -> str:
            return config.settings.project(project).plan

        self.billing = Billing(
            store,
            self.queries,
            pricer,
            plan_of=plan_of,
            grace=timedelta(hours=24) if config.invoice_grace is None else config.invoice_grace,
            write_rentals=self._write_rentals,
        )
        self.outlook = Outlook(store, pricer, plan_of, config.clock)

    @property
    def projects(self) -> list[str]:
        return sorted({self.keys.project_of(key) for key in self.keys.secrets()})

    def _credentials(self, project: str) -> tuple[str, str] | None:
        return next(
            ((k, s) for k, s in sorted(self.keys.secrets().items()) if self.keys.project_of(k) == project), None
        )

    def _rules(self, project: str) -> UsageRules:
        settings = self.config.settings
        own_server = settings.project(project).livekit_server == "self-hosted"
        return UsageRules(
            get_policy(settings.policy),
            self.phones.livekit_numbers(project),
            settings.customer_key,
            provider=NOT_BILLED_PROVIDER if own_server else "",
        )

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
        try:
            outcomes = iter(await self.store.ingest(project, valid))
            refused = ""
        except StoreLimit as exc:  # this batch only: other batches and projects are stored as usual
            refused = short(str(exc))
        results: list[dict[str, str]] = []
        counts: dict[str, int] = {}
        for c in checked:
            if c.item is None or refused:
                status, reason = Outcome.REJECTED.value, c.reason or refused
            else:
                status, reason = _ANSWERS[next(outcomes)]
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


@dataclass
class Drain:
    """Requests being handled, and whether the collector is shutting down. aiohttp's own graceful
    shutdown stops reading from every connection at once, so a request whose body is still arriving
    could never finish: ``serve`` first stops listening, answers new requests on kept-alive
    connections 503 (retry elsewhere), and waits for ``idle`` before closing connections."""

    active: int = 0
    closing: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)


COLLECTOR = web.AppKey("collector", Collector)
CONFIG = web.AppKey("config", CollectorConfig)
DRAIN = web.AppKey("drain", Drain)
SESSION_COOKIE = "livekit_metering_session"

# Every response: never framed, never sniffed, no Referer leaves the page. The dashboard runs only its
# own script and styles, and talks only to this collector.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """Bad input becomes a 4xx with a message; only a bug becomes a 500 (and is logged)."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.monotonic()
    collector = request.app.get(COLLECTOR)
    drain = request.app[DRAIN]
    if drain.closing:
        closing = _error(503, "the collector is shutting down; retry", **{"Retry-After": "1"})
        closing.force_close()
        return closing
    drain.active += 1
    if collector is not None:
        collector.metrics.in_flight.inc()
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
    finally:
        drain.active -= 1
        if drain.active == 0 and drain.closing:
            drain.idle.set()
        if collector is not None:
            collector.metrics.in_flight.dec()
    if collector is not None:
        collector.metrics.latency.labels(route).observe(time.monotonic() - started)
        collector.metrics.requests.labels(route, str(response.status)).inc()
    return response


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def _collector(request: web.Request) -> Collector:
    return request.app[COLLECTOR]


def _query_project(request: web.Request) -> Project:
    """Queries: a read token in the Authorization header, else the dashboard's session cookie."""
    collector = _collector(request)
    header = request.headers.get("Authorization")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and not header:
        return collector.keys.from_session(cookie)
    return collector.keys.token(header, collector.limits.max_token_lifetime).for_reading()


async def _read_body(request: web.Request, limits: Limits) -> bytes | None:
    """The body, read within ``limits.body_timeout``; None when the client went away while sending it
    (nothing to answer: logged at INFO, and its buffers freed with the request)."""
    try:
        return await asyncio.wait_for(request.read(), limits.body_timeout.total_seconds())
    except asyncio.TimeoutError:
        raise BadRequest(
            408,
            f"the body did not arrive within {limits.body_timeout.total_seconds():.0f} s; send it faster or smaller",
        ) from None
    except ConnectionError as exc:
        # The exception stays on the request's payload stream; its traceback holds the frames that
        # held the partial body, in a cycle: cut it, so the body is freed now rather than at a full
        # garbage collection (rare with the thresholds serve sets).
        exc.__traceback__ = None
        log.info("client went away while sending its body", extra={"route": request.path})
        return None


async def post_records(request: web.Request) -> web.Response:
    collector = _collector(request)
    limits = collector.limits
    # The headers decide before a byte of the body is read: an unsigned flood costs no memory.
    token = collector.keys.token(request.headers.get("Authorization"), limits.max_token_lifetime).for_writing()
    if request.content_length is not None and request.content_length > limits.max_body_bytes:
        return _error(
            413,
            f"the body is {request.content_length} bytes; the limit is {limits.max_body_bytes}, send smaller batches",
        )
    body = await _read_body(request, limits)
    if body is None:
        return _error(400, "the body was cut short")
    project = token.check_body(body)
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
    # Signature, key and lifetime from the headers first; the sha256 claim is checked with the body.
    collector.keys.token(request.headers.get("Authorization"), collector.limits.max_token_lifetime).for_writing()
    body = await _read_body(request, collector.limits)
    if body is None:
        return _error(400, "the body was cut short")
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
    if "\x00" in name or len(name) > 200:
        return _error(404, "not found")
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


async def post_dashboard_session(request: web.Request) -> web.Response:
    """The dashboard's sign-in: a short-lived read token (from the link's #fragment, which no server
    or log sees) in exchange for an HttpOnly, SameSite=Strict session cookie."""
    collector = _collector(request)
    token = collector.keys.token(request.headers.get("Authorization"), collector.limits.max_token_lifetime)
    project = token.for_reading()
    lifetime = collector.limits.dashboard_session
    response = web.json_response({"project": project.name, "expires_in": int(lifetime.total_seconds())})
    response.set_cookie(
        SESSION_COOKIE,
        collector.keys.session_cookie(project, lifetime),
        max_age=int(lifetime.total_seconds()),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure or request.headers.get("X-Forwarded-Proto") == "https",
    )
    return response


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
        # Idle connections close after 75 s (aiohttp's own default is an hour); a body left unread
        # (a 401 or 413) is drained for at most 2 s so the client can read the answer, then cut.
        handler_args={"auto_decompress": False, "keepalive_timeout": 75.0, "lingering_time": 2.0},
    )
    app[CONFIG] = config
    app[DRAIN] = Drain()
    app.on_response_prepare.append(_security_headers)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        the_store = store or open_store(config.database)
        await the_store.open()
        app[COLLECTOR] = Collector(config, the_store)
        log.info("collector started", extra={"database": redacted(config.database), "projects": len(config.keys)})
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
    app.router.add_post("/dashboard/session", post_dashboard_session)
    app.router.add_get("/dashboard", dashboard_redirect)
    app.router.add_get("/dashboard/{path:.*}", get_dashboard)
    return app
