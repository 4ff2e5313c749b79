"""Budgets: a cap on what one session spends, and a monthly cap per customer, checked on every record.

**Session budget** (``metered(budget=...)``, ``LIVEKIT_METERING_SESSION_BUDGET``): a cap in USD on the
session's usage at the configured plan's list prices (before included quotas and credits: what the
cost preview shows). Every record the session's meter writes is priced as it is written (a running
checkpoint replaces its earlier figure), and the running total compared with the warning level
(``budget_warning``, a fraction of the cap, 0.8 by default) and with the cap. Crossing the warning
calls ``on_budget_warning(ctx, event)`` once (default: a log line); reaching the cap calls
``on_limit(ctx, event)`` once (default: :func:`end_after_utterance`). The check is a few dictionary
lookups and Decimal additions where the record is written (no I/O); the callbacks run as tasks on the job's
event loop, never on the record's path.

**Customer budget** (``customer_budget=``, ``LIVEKIT_METERING_CUSTOMER_BUDGET``): a monthly cap per
customer (the ``customer=`` attribution), in USD at the same list prices, checked against the
collector's month-to-date for that customer (``GET /v1/spend``, other sessions only) plus this
session's running total. The collector's figure is read when the job starts and then at most every
``refresh`` seconds (5), in the background, while records come in. A customer already over its cap
when the job starts is refused before the agent connects (``customer_over_budget="refuse"``, the
default: nothing is metered) or let in and ended at once like a session budget (``"end"``); a
running session that takes it over the cap is ended like a session budget. A collector that cannot
be read at the start lets the job run with a warning (``budget_fail_closed=False``, the default) or
refuses it (``True``).

The session's final record says ``end_cause = budget`` when the session ended with
``ctx.shutdown()`` after its limit was reached (what the default ``on_limit`` does), with the cap
and the spending in its ``meta``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, cast

from .pricing import PriceBook
from .pricing.rows import PriceRow
from .rates import RatePolicy
from .records import MeterRecord

if TYPE_CHECKING:
    from livekit.agents import JobContext

__all__ = [
    "BudgetCallback",
    "BudgetEvent",
    "BudgetGuard",
    "CustomerSpend",
    "end_after_utterance",
    "log_budget_warning",
]

logger = logging.getLogger("livekit_metering")

Scope = Literal["session", "customer"]
_ZERO = Decimal(0)
FINISH_TIMEOUT = 30.0  # the longest the default on_limit waits for the utterance in progress


@dataclass(frozen=True)
class BudgetEvent:
    """A budget's warning level or cap was reached: by whom, of what, and how much is spent."""

    kind: Literal["warning", "limit"]
    scope: Scope
    cap: Decimal  # USD
    spent: Decimal  # USD counted against the cap when it was reached
    session_id: str
    customer: str = ""
    record_id: str = ""  # the record that crossed it ("" when it was crossed before any record)

    @property
    def reason(self) -> str:
        """The shutdown reason the default ``on_limit`` gives: ``budget`` or ``customer_budget``."""
        return "budget" if self.scope == "session" else "customer_budget"

    def describe(self) -> str:
        who = f"customer {self.customer!r}" if self.scope == "customer" else f"session {self.session_id}"
        what = "monthly budget" if self.scope == "customer" else "budget"
        return f"{who} has spent ${self.spent:.4f} of its ${self.cap} {what}"


BudgetCallback = Callable[["JobContext", BudgetEvent], "Awaitable[None] | None"]


def log_budget_warning(ctx: JobContext, event: BudgetEvent) -> None:
    """The default ``on_budget_warning``: one log line."""
    logger.warning("livekit-metering: %s (warning level reached)", event.describe())


async def end_after_utterance(ctx: JobContext, event: BudgetEvent) -> None:
    """The default ``on_limit``: let the agent finish the utterance in progress, then end the job.

    If the job's AgentSession is speaking (or generating the reply it is about to speak: its
    ``current_speech``), wait until that speech has played out, at most 30 s; an interruption by
    the user ends the wait too. Then ``ctx.shutdown(reason="budget")`` (``"customer_budget"`` for a
    customer budget), which ends the metered session at that instant, and close the AgentSession
    at once, interrupting anything queued after that speech: the job runner would close it only
    once the entrypoint returns (up to 15 s later), and it would go on answering until then.
    """
    session = None
    try:
        session = ctx.primary_session
    except Exception:  # no AgentSession started in this job
        pass
    speech = session.current_speech if session is not None else None
    if speech is not None and not speech.done():
        try:
            await asyncio.wait_for(speech.wait_for_playout(), FINISH_TIMEOUT)
        except asyncio.TimeoutError:
            logger.warning("livekit-metering: the utterance in progress took over %.0f s; ending now", FINISH_TIMEOUT)
    logger.warning("livekit-metering: %s; ending the session", event.describe())
    ctx.shutdown(reason=event.reason)
    if session is not None:
        await session.aclose()


class CustomerSpend:
    """The collector's month-to-date of one customer, without this session's records, kept fresh.

    ``base`` is None until a read succeeds. ``maybe_refresh`` starts a background read when the
    figure is older than ``refresh`` seconds and none is in flight; reads never block the caller.
    """

    def __init__(
        self,
        url: str,
        *,
        customer: str,
        session_id: str,
        plan: str,
        api_key: str | None,
        api_secret: str | None,
        refresh: float = 5.0,
        timeout: float = 2.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.customer = customer
        self.session_id = session_id
        self.plan = plan
        self.api_key = api_key
        self.api_secret = api_secret
        self.refresh = refresh
        self.timeout = timeout
        self.base: Decimal | None = None
        self.read_at = float("-inf")  # monotonic time of the last read (successful or not)
        self._reading = False

    async def read(self) -> Decimal:
        """Ask the collector now; raises on any failure (unreachable, refused, malformed)."""
        import aiohttp

        from .export.client import sign_body

        self.read_at = time.monotonic()
        headers = {}
        if self.api_key and self.api_secret:
            headers["Authorization"] = sign_body(None, self.api_key, self.api_secret)
        query = {"customer": self.customer, "plan": self.plan, "exclude_session": self.session_id}
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(f"{self.url}/v1/spend", params=query, headers=headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"the collector answered {resp.status}: {(await resp.text())[:200]}")
                doc = await resp.json()
        self.base = Decimal(str(doc["cost"]))
        return self.base

    def maybe_refresh(self, loop: asyncio.AbstractEventLoop, on_read: Callable[[], None]) -> None:
        """Read again in the background if the figure is ``refresh`` seconds old; then ``on_read()``."""
        if self._reading or time.monotonic() - self.read_at < self.refresh:
            return
        self._reading = True

        async def again() -> None:
            try:
                await self.read()
                on_read()
            except Exception as exc:
                logger.debug("livekit-metering: reading customer %r's month-to-date failed: %s", self.customer, exc)
            finally:
                self._reading = False

        _spawn(loop, again)


_tasks: set[asyncio.Task[Any]] = set()  # keep background tasks referenced until they finish


def _spawn(loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``make()`` as a task on ``loop``, from any thread."""

    def start() -> None:
        task = loop.create_task(make())
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    try:
        loop.call_soon_threadsafe(start)
    except RuntimeError:  # the job's loop is closed: nothing left to end
        pass


class BudgetGuard:
    """One session's spending against its budgets; ``observe`` is the meter's record listener.

    ``session_cap`` / ``customer_cap`` None: that budget is off. ``fire(callback, event)`` runs a
    user callback (set by ``for_job``: as a task on the job's loop, with its ``ctx``).
    """

    def __init__(
        self,
        *,
        book: PriceBook,
        plan: str,
        session_id: str,
        session_cap: Decimal | None = None,
        customer_cap: Decimal | None = None,
        warn_at: Decimal = Decimal("0.8"),
        on_warning: BudgetCallback = log_budget_warning,
        on_limit: BudgetCallback = end_after_utterance,
        customer: CustomerSpend | None = None,
        fire: Callable[[BudgetCallback, BudgetEvent], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        session_time: Callable[[], int] | None = None,
        policy: RatePolicy | None = None,
    ) -> None:
        self.book = book
        self.plan = plan
        self.session_id = session_id
        self.session_cap = session_cap
        self.customer_cap = customer_cap
        self.warn_at = warn_at
        self.on_warning = on_warning
        self.on_limit = on_limit
        self.customer = customer
        self.fire = fire or (lambda callback, event: None)
        self.loop = loop
        self.session_time = session_time
        self.policy = policy
        self.spent = Decimal(0)  # this session's usages at list prices, but for its own time (below)
        self._own: MeterRecord | None = None  # the session's own time: priced as it runs, not per checkpoint
        self._own_until = -1  # its figure is priced up to this many ms (the end of the increment begun)
        self._own_price = _ZERO
        self.reached: BudgetEvent | None = None  # the first limit reached
        self._prices: dict[str, Decimal] = {}
        self._rows: dict[tuple[Any, ...], PriceRow | None] = {}
        self._warned: set[Scope] = set()
        self._lock = threading.Lock()

    def observe(self, record: MeterRecord) -> None:
        """Price ``record`` into the session's total and check both budgets. Never raises."""
        try:
            if record.meta.get("session_time") is True and self.session_time is not None:
                self._own = record  # its figure runs on between checkpoints: ``total`` prices it now
                self.check(record.id)
                return
            # The price row for the record's model and day, looked up once per session.
            key = (record.resource, record.provider, record.model, record.language, record.start.date())
            if key in self._rows:
                row = self._rows[key]
            else:
                row = self._rows[key] = self.book.row_of(record, self.plan)
            # Unpriced usage counts as nothing: only what has a price can be held against a cap.
            price = self.book.price_with(record, row, self.plan) or _ZERO
            with self._lock:
                before = self._prices.get(record.id)
                self._prices[record.id] = price
                self.spent += price if before is None else price - before
            self.check(record.id)
            if self.customer is not None and self.loop is not None:
                self.customer.maybe_refresh(self.loop, self.check)
        except Exception:
            logger.exception("livekit-metering: the budget check failed for %s", record.id)

    @property
    def total(self) -> Decimal:
        """What the session has spent so far: its usages, and its own time up to now, rounded as billed."""
        own = self._own
        if own is None or self.session_time is None or self.policy is None:
            return self.spent
        elapsed = self.session_time()
        if elapsed > self._own_until:  # past the increment priced last (once a minute): price the next
            rule = self.policy.rule(own.resource)
            self._own_until = rule.billable(elapsed)
            figure = own.model_copy(update={"quantity": rule.quantity(elapsed)})
            self._own_price = self.book.price_of(figure, self.plan) or _ZERO
        return self.spent + self._own_price

    def check(self, record_id: str = "") -> None:
        """Compare what is spent with each budget; fire each warning and the first limit once."""
        fire: list[tuple[BudgetCallback, BudgetEvent]] = []
        with self._lock:
            total = self.total
            if self.session_cap is not None:
                self._against("session", self.session_cap, total, record_id, fire)
            if self.customer_cap is not None and self.customer is not None:
                spent = (self.customer.base or _ZERO) + total
                self._against("customer", self.customer_cap, spent, record_id, fire)
        for callback, event in fire:
            self.fire(callback, event)

    def _against(
        self, scope: Scope, cap: Decimal, spent: Decimal, record_id: str, fire: list[tuple[BudgetCallback, BudgetEvent]]
    ) -> None:
        if spent < cap * self.warn_at:
            return
        customer = self.customer.customer if self.customer is not None else ""
        if scope not in self._warned:
            self._warned.add(scope)
            fire.append(
                (self.on_warning, BudgetEvent("warning", scope, cap, spent, self.session_id, customer, record_id))
            )
        if self.reached is None and spent >= cap:
            self.reached = BudgetEvent("limit", scope, cap, spent, self.session_id, customer, record_id)
            fire.append((self.on_limit, self.reached))


def run_callback(ctx: JobContext, loop: asyncio.AbstractEventLoop) -> Callable[[BudgetCallback, BudgetEvent], None]:
    """``BudgetGuard.fire`` for a job: each callback as a task on the job's loop; its errors are logged."""

    def fire(callback: BudgetCallback, event: BudgetEvent) -> None:
        async def run() -> None:
            try:
                result = callback(ctx, event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("livekit-metering: the budget %s callback failed", event.kind)

        _spawn(loop, run)

    return fire


CustomerCap = Decimal | Callable[[str], "Decimal | str | int | None"]


# -- option checks: value -> value used, or ValueError(what is wrong; what to write) --------------------


def usd(value: Any) -> Decimal:
    """A positive amount of USD: a decimal string, an int, a Decimal (a float through its shortest repr)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise ValueError(f'must be an amount in USD such as "0.50", got {type(value).__name__}')
    try:
        amount = Decimal(str(value).strip())
    except ArithmeticError:
        raise ValueError(f'must be an amount in USD such as "0.50", got {value!r}') from None
    if not amount.is_finite() or amount <= 0 or amount > 10**9:
        raise ValueError(f"must be a positive amount in USD up to 1,000,000,000, got {value!r}")
    return amount


def customer_cap(value: Any) -> CustomerCap:
    """A monthly amount for every customer, or a callable (customer) -> amount | None (None: no cap)."""
    if callable(value) and not isinstance(value, str):
        return cast(CustomerCap, value)
    return usd(value)


def fraction(value: Any) -> Decimal:
    """The warning level: a fraction of the cap, above 0 and at most 1 (0.8: at 80 %)."""
    try:
        level = Decimal(str(value).strip()) if not isinstance(value, bool) else None
    except ArithmeticError:
        level = None
    if level is None or not level.is_finite() or not 0 < level <= 1:
        raise ValueError(f"must be a fraction of the budget above 0 and at most 1, such as 0.8, got {value!r}")
    return level


def over_mode(value: Any) -> Literal["refuse", "end"]:
    text = str(value).strip().lower() if isinstance(value, str) else ""
    if text not in ("refuse", "end"):
        raise ValueError(f'must be "refuse" (before connecting) or "end" (like a session budget), got {value!r}')
    return cast(Literal["refuse", "end"], text)


def callback(value: Any) -> BudgetCallback:
    if not callable(value):
        raise ValueError("must be a callable (ctx, event), sync or async")
    return cast(BudgetCallback, value)


REFRESH = 5.0  # seconds between reads of a customer's month-to-date while records come in
READ_TIMEOUT = 2.0


@dataclass(frozen=True)
class BudgetOptions:
    """The budget options of one job, resolved (see ``metered``)."""

    session: Decimal | None = None
    customer: CustomerCap | None = None
    warn_at: Decimal = Decimal("0.8")
    on_warning: BudgetCallback = log_budget_warning
    on_limit: BudgetCallback = end_after_utterance
    customer_over: Literal["refuse", "end"] = "refuse"
    fail_closed: bool = False

    @property
    def any(self) -> bool:
        return self.session is not None or self.customer is not None


class JobBudget:
    """The budgets of one job: the guard on its meter's records, the customer check before the
    entrypoint runs and once connected, and the limit reached (``reached``) for the final record."""

    def __init__(
        self,
        ctx: JobContext,
        options: BudgetOptions,
        *,
        book: PriceBook,
        plan: str,
        session_id: str,
        customer_of: Callable[[], str | None],
        url: str | None,
        session_time: Callable[[], int] | None = None,
        policy: RatePolicy | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.options = options
        self.customer_of = customer_of
        self.url = url
        self.api_key = api_key
        self.api_secret = api_secret
        self.loop = asyncio.get_running_loop()
        self.guard = BudgetGuard(
            book=book,
            plan=plan,
            session_id=session_id,
            session_time=session_time,
            policy=policy,
            session_cap=options.session,
            warn_at=options.warn_at,
            on_warning=options.on_warning,
            on_limit=options.on_limit,
            fire=run_callback(ctx, self.loop),
            loop=self.loop,
        )
        self._checked_customer = options.customer is None

    async def admit(self) -> bool:
        """Before the entrypoint runs: False when the job is refused (its customer is over its cap, or
        its month-to-date cannot be read and ``fail_closed``); the job is then shut down unconnected."""
        customer = self._customer()
        if customer is None:
            return True  # no customer budget, or the customer is not known before connecting
        over = await self._read(customer)
        if over is None:  # the collector could not be read
            if not self.options.fail_closed:
                return True
            logger.error(
                "livekit-metering: job %s refused: customer %r's month-to-date could not be read (fail closed)",
                self.guard.session_id,
                customer,
            )
            self.ctx.shutdown(reason="customer_budget_unavailable")
            return False
        if over and self.options.customer_over == "refuse":
            spend = self.guard.customer
            logger.warning(
                "livekit-metering: job %s refused before connecting: customer %r has spent $%s of its $%s "
                "monthly budget",
                self.guard.session_id,
                customer,
                spend.base if spend else "?",
                self.guard.customer_cap,
            )
            self.ctx.shutdown(reason="customer_budget")
            return False
        return True

    def connected(self) -> None:
        """The agent connected: the customer's month-to-date read at the start is compared now (one over
        its cap with ``customer_over="end"`` reaches its limit now); a customer found only now (a
        participant's attribute) is read and compared now."""
        if self._checked_customer:
            if self.guard.customer is not None:
                self.guard.check()
            return

        async def late() -> None:
            customer = self._customer()
            if customer is not None and await self._read(customer) is not None:
                self.guard.check()

        _spawn(self.loop, late)

    def _customer(self) -> str | None:
        """The customer whose cap applies, once known (None: no customer budget, or not known yet)."""
        if self._checked_customer:
            return None
        try:
            customer = self.customer_of()
        except Exception:
            logger.exception("livekit-metering: the customer option failed")
            return None
        if not customer:
            return None
        self._checked_customer = True
        cap = self.options.customer
        try:
            value = cap(customer) if callable(cap) else cap
            self.guard.customer_cap = None if value is None else Decimal(str(value))
        except Exception:
            logger.exception("livekit-metering: customer_budget= failed for customer %r", customer)
            return None
        if self.guard.customer_cap is None:
            return None
        self.guard.customer = CustomerSpend(
            self.url or "",
            customer=customer,
            session_id=self.guard.session_id,
            plan=self.guard.plan,
            api_key=self.api_key,
            api_secret=self.api_secret,
            refresh=REFRESH,
            timeout=READ_TIMEOUT,
        )
        return customer

    async def _read(self, customer: str) -> bool | None:
        """Read the customer's month-to-date: whether it is over its cap, None when it cannot be read."""
        spend, cap = self.guard.customer, self.guard.customer_cap
        assert spend is not None and cap is not None
        try:
            base = await spend.read()
        except Exception as exc:
            logger.warning(
                "livekit-metering: customer %r's month-to-date could not be read from %s (%s); %s",
                customer,
                self.url or "(no collector URL)",
                exc,
                "refusing the job (fail closed)" if self.options.fail_closed else "the job runs (fail open)",
            )
            return None
        return base >= cap

    @property
    def reached(self) -> BudgetEvent | None:
        return self.guard.reached
