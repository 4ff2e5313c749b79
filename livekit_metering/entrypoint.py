"""``metered``: the entrypoint wrapper that meters each job's agent session.

It is a class instance, not a closure, so it pickles into the job process of the PROCESS
executor; and everything it installs lives on the job's own JobContext instance (no global
patching), so many jobs can share a process under the THREAD executor.

For each job it creates a SessionMeter, makes it the current meter around the user's entrypoint
(so the Metered STT/LLM/TTS adapters record into it), and wires these hooks, all per instance:

- ``ctx.connect`` override: the session starts when the connection completes, whether the
  entrypoint connects or ``AgentSession.start()`` connects for it; a ConnectError starts nothing;
- ``ctx.room.on("disconnected")``: the room ended (ROOM_DELETED, ROOM_CLOSED) or the agent was
  disconnected (any other reason), at the instant it happened, with the DisconnectReason;
- ``ctx.shutdown`` override: the instant and reason of an explicit shutdown;
- the entrypoint raising: "job crashed" at the instant it raised (the exception propagates unchanged);
- the job runner's shutdown request (the worker closing the job): the instant it is requested;
- a shutdown callback that writes the final record before its first ``await``, logs the cost
  line, and shuts the exporter down within the worker's shutdown window.

Where the agent runs (``hosting.py``) decides what its own time is billed as. Once connected, the
room around it is watched too (``room.py``: SIP callers, downstream data; ``voice_isolation.py``),
and the session's observability (``observability.py``) is counted as livekit-agents uploads it;
when its exporters run, the final count waits for the job runner's cleanup, which flushes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, overload

from . import budgets
from .budgets import JobBudget
from .costlog import log_summary, summarize
from .export.base import Exporter
from .export.fallback import file_instead, with_fallback
from .hosting import Hosting
from .meter import use_meter
from .observability import Observability
from .options import AttributesOption, CustomerOption, ExporterOption, InvalidOption, MeteringOptions
from .preview import CostPreview, maybe_attach_preview
from .rates import RatePolicy, get_policy
from .room import DataTransfer, SipCalls
from .session import Clock, EndCause, SessionMeter, register
from .voice_isolation import VoiceIsolation

if TYPE_CHECKING:
    from livekit.agents import JobContext

__all__ = ["InvalidOption", "MeteredEntrypoint", "MeteringOptions", "metered"]

logger = logging.getLogger("livekit_metering")

Entrypoint = Callable[["JobContext"], Awaitable[Any]]

_EXPORTER_SHUTDOWN_TIMEOUT = 8.0  # the worker kills a closing job ~10 s after it says it is shutting down

# Shutdown reasons of livekit-agents' job runner (ipc/job_proc_lazy_main.py), for the fallback
# when the end event itself was not seen.
_REASON_ROOM = "room disconnected"
_REASON_CRASH = "job crashed"


# -- the wrapper -------------------------------------------------------------------------------------


class MeteredEntrypoint:
    """A job entrypoint that meters the session. Create it with ``metered``; it pickles."""

    def __init__(self, fn: Entrypoint, options: MeteringOptions) -> None:
        if not callable(fn):
            raise TypeError(f"metered() wraps an async entrypoint (ctx: JobContext), got {fn!r}")
        self.__wrapped__ = fn
        self.options = options
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__name__ = getattr(fn, "__name__", type(self).__name__)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__doc__ = getattr(fn, "__doc__", None)

    def __repr__(self) -> str:
        return f"<metered {self.__module__}.{self.__qualname__}>"

    def __reduce__(self) -> str | tuple[Any, ...]:
        # Used as a decorator, the module attribute *is* this wrapper: pickle it by reference, and the
        # job process re-creates it by importing the module. Otherwise (metered(fn, ...)) pickle the
        # function by reference and the options by value.
        module = sys.modules.get(self.__module__)
        if module is not None and getattr(module, self.__qualname__, None) is self:
            return str(self.__qualname__)
        self.options.check_picklable()
        return (MeteredEntrypoint, (self.__wrapped__, self.options))

    async def __call__(self, ctx: JobContext) -> Any:
        hooks = _start(ctx, self.options)
        if hooks is None:
            return await self.__wrapped__(ctx)
        if hooks.budget is not None and not await hooks.budget.admit():
            return None  # refused before connecting (a customer over its budget): nothing is metered
        with use_meter(hooks.meter):
            try:
                return await self.__wrapped__(ctx)
            except Exception as exc:
                hooks.crashed(exc)
                raise


class _Decorator:
    """``@metered(...)`` before it gets the function: picklable, like the wrapper it makes."""

    def __init__(self, options: MeteringOptions) -> None:
        self.options = options

    def __call__(self, fn: Entrypoint) -> MeteredEntrypoint:
        return MeteredEntrypoint(fn, self.options)


@overload
def metered(
    fn: Entrypoint,
    /,
    *,
    file: str | os.PathLike[str] | None = ...,
    url: str | None = ...,
    exporter: ExporterOption | None = ...,
    policy: str | RatePolicy | None = ...,
    plan: str | None = ...,
    prices: str | os.PathLike[str] | None = ...,
    checkpoint_interval: float | None = ...,
    customer: CustomerOption | None = ...,
    attributes: AttributesOption | None = ...,
    preview: bool | None = ...,
    clock: Clock | None = ...,
    hosting: str | None = ...,
    phone_numbers: Iterable[str] | None = ...,
    budget: str | int | float | Decimal | None = ...,
    budget_warning: str | float | Decimal | None = ...,
    on_budget_warning: budgets.BudgetCallback | None = ...,
    on_limit: budgets.BudgetCallback | None = ...,
    customer_budget: budgets.CustomerCap | str | int | float | None = ...,
    customer_over_budget: str | None = ...,
    budget_fail_closed: bool | None = ...,
) -> MeteredEntrypoint: ...


@overload
def metered(
    fn: None = ...,
    /,
    *,
    file: str | os.PathLike[str] | None = ...,
    url: str | None = ...,
    exporter: ExporterOption | None = ...,
    policy: str | RatePolicy | None = ...,
    plan: str | None = ...,
    prices: str | os.PathLike[str] | None = ...,
    checkpoint_interval: float | None = ...,
    customer: CustomerOption | None = ...,
    attributes: AttributesOption | None = ...,
    preview: bool | None = ...,
    clock: Clock | None = ...,
    hosting: str | None = ...,
    phone_numbers: Iterable[str] | None = ...,
    budget: str | int | float | Decimal | None = ...,
    budget_warning: str | float | Decimal | None = ...,
    on_budget_warning: budgets.BudgetCallback | None = ...,
    on_limit: budgets.BudgetCallback | None = ...,
    customer_budget: budgets.CustomerCap | str | int | float | None = ...,
    customer_over_budget: str | None = ...,
    budget_fail_closed: bool | None = ...,
) -> Callable[[Entrypoint], MeteredEntrypoint]: ...


def metered(
    fn: Entrypoint | None = None,
    /,
    *,
    file: str | os.PathLike[str] | None = None,
    url: str | None = None,
    exporter: ExporterOption | None = None,
    policy: str | RatePolicy | None = None,
    plan: str | None = None,
    prices: str | os.PathLike[str] | None = None,
    checkpoint_interval: float | None = None,
    customer: CustomerOption | None = None,
    attributes: AttributesOption | None = None,
    preview: bool | None = None,
    clock: Clock | None = None,
    hosting: str | None = None,
    phone_numbers: Iterable[str] | None = None,
    budget: str | int | float | Decimal | None = None,
    budget_warning: str | float | Decimal | None = None,
    on_budget_warning: budgets.BudgetCallback | None = None,
    on_limit: budgets.BudgetCallback | None = None,
    customer_budget: budgets.CustomerCap | str | int | float | None = None,
    customer_over_budget: str | None = None,
    budget_fail_closed: bool | None = None,
) -> MeteredEntrypoint | Callable[[Entrypoint], MeteredEntrypoint]:
    """Meter the agent session of every job this entrypoint runs.

    Use it as ``@metered``, ``@metered(...)`` or ``metered(entrypoint, ...)``. Options left unset
    come from the environment of the job process, else a default:

    - ``file`` (LIVEKIT_METERING_FILE), ``url`` (LIVEKIT_METERING_URL): where records go, or
      ``exporter``: an Exporter instance, or a factory called once per job;
    - ``policy`` (LIVEKIT_METERING_POLICY): the rate policy id, default ``minute-increments``;
    - ``plan`` (LIVEKIT_METERING_PLAN, default ``ship``) and ``prices`` (LIVEKIT_METERING_PRICES,
      a price TOML file): for the cost log line;
    - ``checkpoint_interval`` (LIVEKIT_METERING_CHECKPOINT_INTERVAL, default 15 s): the most session
      time a hard crash can lose;
    - ``customer``: a callable ``(ctx) -> str | None``, or a key (LIVEKIT_METERING_CUSTOMER) looked up
      in the job metadata (a JSON object), then in the participants' attributes;
    - ``attributes``: a callable ``(ctx) -> dict[str, str]`` of labels for the records;
    - ``preview`` (LIVEKIT_METERING_PREVIEW): a live cost preview in the terminal and a summary
      table at the end; on by default in ``dev`` and ``console`` mode;
    - ``hosting`` (LIVEKIT_METERING_HOSTING): ``cloud``, ``self-hosted-on-cloud`` or ``self-hosted``;
      detected by default (see ``livekit_metering.hosting``);
    - ``phone_numbers`` (LIVEKIT_METERING_PHONE_NUMBERS, comma-separated): the project's LiveKit
      Phone Numbers, to tell their calls from third-party trunk calls (see ``livekit_metering.telephony``);
    - ``budget`` (LIVEKIT_METERING_SESSION_BUDGET), ``customer_budget`` (LIVEKIT_METERING_CUSTOMER_BUDGET),
      ``budget_warning``, ``on_budget_warning``, ``on_limit``, ``customer_over_budget``,
      ``budget_fail_closed``: a session's and a customer's spending caps (see ``livekit_metering.budgets``).

    A wrong keyword, or a wrong variable for an option left unset, raises InvalidOption here,
    saying what to write instead.
    """
    options = MeteringOptions(
        file=os.fspath(file) if file is not None else None,
        url=url,
        exporter=exporter,
        policy=policy,
        plan=plan,
        prices=os.fspath(prices) if prices is not None else None,
        checkpoint_interval=checkpoint_interval,
        customer=customer,
        attributes=attributes,
        preview=preview,
        clock=clock,
        hosting=hosting,
        phone_numbers=phone_numbers,  # type: ignore[arg-type]  # checked, and made a tuple, by MeteringOptions
        budget=budget,  # type: ignore[arg-type]  # checked, and made a Decimal, by MeteringOptions
        budget_warning=budget_warning,  # type: ignore[arg-type]  # the same
        on_budget_warning=on_budget_warning,
        on_limit=on_limit,
        customer_budget=customer_budget,  # type: ignore[arg-type]  # the same
        customer_over_budget=customer_over_budget,
        budget_fail_closed=budget_fail_closed,
    )
    options.check()  # the environment too: a typo fails here, at worker start-up, not in every job
    if fn is None:
        return _Decorator(options)
    return MeteredEntrypoint(fn, options)


# -- per-job hooks -----------------------------------------------------------------------------------


def _start(ctx: JobContext, options: MeteringOptions) -> _JobHooks | None:
    """Create the job's meter and install the hooks; on any failure, log it and run unmetered."""
    try:
        exporter, owned = _exporter_or_fallback(options)
        url = _livekit_url(ctx)
        hosting, hosting_source = options.resolved_hosting(url)
        attribution = _Attribution(ctx, options.resolved_customer(), options.attributes)
        meter = SessionMeter.for_job(
            ctx,
            exporter=exporter,
            policy=get_policy(options.resolved_policy()),
            checkpoint_interval=options.resolved_interval(),
            clock=options.clock,
            attribution=attribution,
            hosting=hosting,
            hosting_source=hosting_source,
        )
        hooks = _JobHooks(ctx, meter, options, exporter=exporter, owns_exporter=owned)
        hooks.budget = _budget(ctx, meter, options, attribution.customer)
        hooks.preview = maybe_attach_preview(
            meter, option=options.resolved_preview(), plan=options.resolved_plan(), prices=options.resolved_prices()
        )
        hooks.install()
        register(ctx, meter)
        return hooks
    except Exception:
        logger.exception("livekit-metering could not start metering job %s; it runs unmetered", _job_id(ctx))
        return None


def _budget(
    ctx: JobContext, meter: SessionMeter, options: MeteringOptions, customer_of: Callable[[], str | None]
) -> JobBudget | None:
    """The job's budgets, checked on every record its meter writes (None: no budget set)."""
    settings = options.resolved_budgets()
    if not settings.any:
        return None
    from .pricing import PriceBook

    prices = options.resolved_prices()
    budget = JobBudget(
        ctx,
        settings,
        book=PriceBook.of(prices),
        plan=options.resolved_plan(),
        session_id=meter.session_id,
        customer_of=customer_of,
        session_time=lambda: meter.duration_ms,
        policy=meter.policy,
        url=options.resolve("url"),
        api_key=os.environ.get("LIVEKIT_API_KEY") or None,
        api_secret=os.environ.get("LIVEKIT_API_SECRET") or None,
    )
    meter.on_record(budget.guard.observe)
    return budget


def _livekit_url(ctx: JobContext) -> str:
    """The LiveKit server URL of the job (what livekit-agents connects to and checks with is_cloud)."""
    info = getattr(ctx, "_info", None)
    return str(getattr(info, "url", "") or os.environ.get("LIVEKIT_URL", ""))


def _job_id(ctx: JobContext) -> str:
    try:
        return str(ctx.job.id)
    except Exception:
        return "?"


def _exporter_or_fallback(options: MeteringOptions) -> tuple[Exporter, bool]:
    """The configured exporter, with the local JSON-lines file behind it: a record is never lost to a
    destination that cannot be built, or that fails later."""
    try:
        exporter, owned = options.build_exporter()
    except Exception as exc:
        return file_instead(exc), True
    return with_fallback(exporter), owned


class _Attribution:
    """Customer and attributes of a job, from the user's options, asked each time a session record is written."""

    def __init__(self, ctx: JobContext, customer: CustomerOption | None, attributes: AttributesOption | None) -> None:
        self._ctx = ctx
        self._customer = customer
        self._attributes = attributes
        self._found: str | None = None

    def customer(self) -> str | None:
        """The job's customer, once found (then kept): the customer budget asks for it too."""
        if self._found is None and self._customer is not None:
            if isinstance(self._customer, str):
                self._found = _customer_by_key(self._ctx, self._customer)
            else:
                value = self._customer(self._ctx)
                self._found = str(value) if value is not None and value != "" else None
        return self._found

    def __call__(self) -> tuple[str | None, Mapping[str, str] | None]:
        customer = self.customer()
        attributes = None
        if self._attributes is not None:
            attributes = self._attributes(self._ctx)
            if not isinstance(attributes, Mapping):
                raise TypeError(f"attributes= returned {type(attributes).__name__}, not a dict[str, str]")
        return customer, attributes


def _customer_by_key(ctx: JobContext, key: str) -> str | None:
    """``key`` in the job metadata (a JSON object), else in the job's or a remote participant's attributes."""
    metadata = ctx.job.metadata
    if metadata:
        try:
            data = json.loads(metadata)
        except ValueError:
            data = None
        if isinstance(data, dict):
            value = data.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                return str(value)
    candidates: list[Any] = []
    if ctx.job.HasField("participant"):
        candidates.append(ctx.job.participant)
    try:
        candidates.extend(ctx.room.remote_participants.values())
    except Exception:
        pass
    for participant in candidates:
        attributes = getattr(participant, "attributes", None)
        if isinstance(attributes, Mapping):
            value = attributes.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def _disconnect_name(reason: Any) -> tuple[str, bool]:
    """The DisconnectReason's name, and whether it means the room itself ended."""
    from livekit import rtc

    try:
        name = rtc.DisconnectReason.Name(reason)
    except Exception:
        name = str(reason)
    return name, name in ("ROOM_DELETED", "ROOM_CLOSED")


def _cause_of(reason: str, *, user_initiated: bool) -> EndCause:
    """The end cause for a job-level shutdown reason of the job runner."""
    if user_initiated:
        return EndCause.SHUTDOWN
    if reason == _REASON_ROOM:
        return EndCause.AGENT_DISCONNECTED  # the runner drops the DisconnectReason; the room hook has it
    if reason == _REASON_CRASH:
        return EndCause.JOB_CRASHED
    return EndCause.WORKER_SHUTDOWN


def _runner_shutdown_future(ctx: JobContext) -> asyncio.Future[Any] | None:
    """The job runner's shutdown future, which resolves the instant any shutdown is requested.

    livekit-agents 1.8 has no public hook for "the worker asked this job to stop"; its runner
    (``_JobProc``) resolves ``_shutdown_fut`` then, and the ``on_shutdown`` callback it gives the
    JobContext closes over it. Found defensively: when the layout differs, return None and the
    end falls back to the (later) shutdown callback.
    """
    fn = getattr(ctx, "_on_shutdown", None)
    code = getattr(fn, "__code__", None)
    cells = getattr(fn, "__closure__", None)
    if code is None or not cells:
        return None
    for name, cell in zip(code.co_freevars, cells, strict=False):
        if name == "self":
            future = getattr(cell.cell_contents, "_shutdown_fut", None)
            if isinstance(future, asyncio.Future):
                return future
    return None


class _JobHooks:
    """The hooks of one job. Each one is guarded: metering's failures are logged, never raised into the agent."""

    def __init__(
        self,
        ctx: JobContext,
        meter: SessionMeter,
        options: MeteringOptions,
        *,
        exporter: Exporter,
        owns_exporter: bool,
    ) -> None:
        self.ctx = ctx
        self.meter = meter
        self.options = options
        self.exporter = exporter
        self.owns_exporter = owns_exporter
        self.preview: CostPreview | None = None
        self.budget: JobBudget | None = None
        self._runner_future: asyncio.Future[Any] | None = None
        self.observability = Observability(meter, ctx, livekit_url=_livekit_url(ctx))
        self.voice_isolation = VoiceIsolation(meter, find_input=self._room_audio_input)
        self._after_cleanup = False  # the summary and the exporter's shutdown wait for the runner's cleanup
        self._cleanup_hooked = False

    def install(self) -> None:
        ctx = self.ctx
        original_connect = ctx.connect
        original_shutdown = ctx.shutdown
        meter = self.meter

        async def connect(*args: Any, **kwargs: Any) -> None:
            await original_connect(*args, **kwargs)  # a ConnectError propagates: no session starts
            try:
                room = ctx.room.local_participant
                if meter.connected(participant_sid=str(room.sid or ""), participant_identity=str(room.identity or "")):
                    self._watch_room()
                    if self.budget is not None:
                        self.budget.connected()
            except Exception:
                logger.exception("livekit-metering: connect hook failed")

        def shutdown(reason: str = "user requested") -> None:
            try:
                why = reason or "user requested"
                reached = self.budget.reached if self.budget is not None else None
                if reached is None:
                    meter.end(EndCause.SHUTDOWN, shutdown_reason=why)
                else:  # after a budget's limit was reached, a shutdown is the budget's doing (on_limit's)
                    cap, spent = str(reached.cap), str(reached.spent)
                    meter.end(
                        EndCause.BUDGET, shutdown_reason=why, budget=reached.scope, budget_cap=cap, budget_spent=spent
                    )
            except Exception:
                logger.exception("livekit-metering: shutdown hook failed")
            original_shutdown(reason)

        ctx.connect = connect  # type: ignore[method-assign]
        ctx.shutdown = shutdown  # type: ignore[method-assign]
        ctx.room.on("disconnected", self._on_disconnected)
        future = self._runner_future = _runner_shutdown_future(ctx)
        if future is not None:
            future.add_done_callback(self._on_shutdown_requested)
        else:
            logger.debug("livekit-metering: no job-runner shutdown future; worker shutdowns end at the callback")
        ctx.add_shutdown_callback(self._on_job_shutdown)
        self.observability.install(on_session_start=self._session_starting)
        self._install_cleanup_hook()

    def _watch_room(self) -> None:
        """Once connected: the SIP callers, the downstream data and the voice isolation of the room's audio."""
        meter, room = self.meter, self.ctx.room
        calls = SipCalls(meter, room, livekit_numbers=self.options.resolved_phone_numbers())
        meter.add_usage(calls)
        calls.start()
        # A Cloud-deployed agent's own traffic is not billed as data transfer; a console job has no transport.
        if meter.hosting is not Hosting.CLOUD and not self.ctx.is_fake_job():
            data = DataTransfer(meter, room)
            meter.add_usage(data)
            data.sample_before_disconnect()
        meter.add_usage(self.voice_isolation)
        self.voice_isolation.watch(self._room_audio_input())

    def _session_starting(self) -> None:
        # AgentSession.start() creates its RoomIO right after this (no await between); its input
        # streams only come later, from a task: look for the input on the next loop turn.
        try:
            asyncio.get_running_loop().call_soon(lambda: self.voice_isolation.watch(self._room_audio_input()))
        except RuntimeError:
            pass

    def _room_audio_input(self) -> Any:
        session = getattr(self.ctx, "_primary_agent_session", None)
        return getattr(getattr(session, "_room_io", None), "_audio_input", None)

    def _install_cleanup_hook(self) -> None:
        # The job runner's cleanup flushes livekit-agents' telemetry exporters: the observability
        # count is final only after it. Observed on this job's instance, like connect and shutdown.
        original = getattr(self.ctx, "_on_cleanup", None)
        if not callable(original):
            return

        async def on_cleanup() -> None:
            try:
                await original()
            finally:
                await self._cleaned_up()

        self.ctx._on_cleanup = on_cleanup  # type: ignore[method-assign]
        self._cleanup_hooked = True

    async def _cleaned_up(self) -> None:
        try:
            self.observability.after_cleanup()
            if self._after_cleanup:
                self._summarize()
        except Exception:
            logger.exception("livekit-metering could not finish the observability of %s", self.meter.session_id)
        if self._after_cleanup and self.owns_exporter:
            await self._shutdown_exporter()

    # -- events --------------------------------------------------------------------------------------

    def _on_disconnected(self, reason: Any = 0, *_: Any) -> None:
        try:
            name, room_ended = _disconnect_name(reason)
            future = self._runner_future
            if name == "CLIENT_INITIATED" and future is not None and future.done():
                # The runner's own disconnect during a shutdown it was asked for: that request is the end.
                self._on_shutdown_requested(future)
            cause = EndCause.ROOM_ENDED if room_ended else EndCause.AGENT_DISCONNECTED
            self.meter.end(cause, disconnect_reason=name)
        except Exception:
            logger.exception("livekit-metering: disconnected hook failed")

    def _on_shutdown_requested(self, future: asyncio.Future[Any]) -> None:
        try:
            if future.cancelled() or future.exception() is not None:
                return
            info = future.result()
            reason = str(getattr(info, "reason", "") or "")
            cause = _cause_of(reason, user_initiated=bool(getattr(info, "user_initiated", False)))
            self.meter.end(cause, shutdown_reason=reason)
        except Exception:
            logger.exception("livekit-metering: shutdown-request hook failed")

    def crashed(self, exc: BaseException) -> None:
        try:
            self.meter.end(EndCause.JOB_CRASHED, shutdown_reason=_REASON_CRASH, error=type(exc).__name__)
        except Exception:
            logger.exception("livekit-metering: crash hook failed")

    async def _on_job_shutdown(self, reason: str) -> None:
        # Everything durable happens before the first await: a failing sibling callback makes the
        # runner cancel the rest, but a task always gets its first step.
        try:
            if not self.meter.ended:
                self.meter.end(_cause_of(reason, user_initiated=False), end_source="shutdown_callback")
            self.meter.note(shutdown_reason=reason)
            self.meter.finish()
            # While livekit-agents' exporters still run for this job, the summary waits for their last flush.
            self._after_cleanup = self._cleanup_hooked and self.observability.counting
            if not self._after_cleanup:
                self._summarize()
        except Exception:
            logger.exception("livekit-metering could not finish the session of %s", self.meter.session_id)
        if self.owns_exporter and not self._after_cleanup:
            await self._shutdown_exporter()

    def _summarize(self) -> None:
        summary = summarize(
            self.meter.records,
            session_id=self.meter.session_id,
            plan=self.options.resolved_plan(),
            prices=self.options.resolved_prices(),
        )
        if summary.connected or self.meter.records:
            log_summary(summary)
        if self.preview is not None:
            self.preview.close()

    async def _shutdown_exporter(self) -> None:
        try:
            # shutdown() may block on the network (the outbox flushing): keep the job's loop free.
            await asyncio.wait_for(asyncio.to_thread(self.exporter.shutdown), _EXPORTER_SHUTDOWN_TIMEOUT)
        except asyncio.TimeoutError:
            logger.warning("livekit-metering: the exporter did not shut down within %ss", _EXPORTER_SHUTDOWN_TIMEOUT)
        except Exception:
            logger.exception("livekit-metering: the exporter failed to shut down")
