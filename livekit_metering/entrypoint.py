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
import pickle
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, overload

from . import budgets
from .budgets import BudgetOptions, JobBudget
from .costlog import log_summary, summarize
from .export.base import Exporter
from .hosting import HOSTING_ENV, Hosting, detect_hosting, parse_hosting
from .meter import use_meter
from .observability import Observability
from .preview import CostPreview, maybe_attach_preview
from .rates import RatePolicy, get_policy
from .room import DataTransfer, SipCalls
from .session import Clock, EndCause, SessionMeter, register
from .telephony import PHONE_NUMBERS_ENV, parse_numbers
from .voice_isolation import VoiceIsolation

if TYPE_CHECKING:
    from livekit.agents import JobContext

__all__ = ["MeteredEntrypoint", "MeteringOptions", "metered"]

logger = logging.getLogger("livekit_metering")

Entrypoint = Callable[["JobContext"], Awaitable[Any]]
CustomerOption = str | Callable[["JobContext"], "str | None"]
AttributesOption = Callable[["JobContext"], Mapping[str, str]]
ExporterOption = Exporter | Callable[[], Exporter]

_ENV_POLICY = "LIVEKIT_METERING_POLICY"
_ENV_PLAN = "LIVEKIT_METERING_PLAN"
_ENV_PRICES = "LIVEKIT_METERING_PRICES"
_ENV_INTERVAL = "LIVEKIT_METERING_CHECKPOINT_INTERVAL"
_ENV_CUSTOMER = "LIVEKIT_METERING_CUSTOMER"
_ENV_BUDGET = "LIVEKIT_METERING_SESSION_BUDGET"
_ENV_CUSTOMER_BUDGET = "LIVEKIT_METERING_CUSTOMER_BUDGET"
_ENV_BUDGET_WARNING = "LIVEKIT_METERING_BUDGET_WARNING"
_ENV_CUSTOMER_OVER = "LIVEKIT_METERING_CUSTOMER_OVER_BUDGET"
_ENV_FAIL_CLOSED = "LIVEKIT_METERING_BUDGET_FAIL_CLOSED"

DEFAULT_PLAN = "ship"
DEFAULT_CHECKPOINT_INTERVAL = 15.0
_EXPORTER_SHUTDOWN_TIMEOUT = 8.0  # the worker kills a closing job ~10 s after it says it is shutting down

# Shutdown reasons of livekit-agents' job runner (ipc/job_proc_lazy_main.py), for the fallback
# when the end event itself was not seen.
_REASON_ROOM = "room disconnected"
_REASON_CRASH = "job crashed"


@dataclass(frozen=True)
class MeteringOptions:
    """The options of ``metered``. Unset ones are read from the environment in the job process."""

    file: str | None = None
    url: str | None = None
    exporter: ExporterOption | None = None
    policy: str | RatePolicy | None = None
    plan: str | None = None
    prices: str | None = None
    checkpoint_interval: float | None = None
    customer: CustomerOption | None = None
    attributes: AttributesOption | None = None
    preview: bool | None = None
    clock: Clock | None = None  # for tests: a controllable clock
    hosting: str | None = None
    phone_numbers: tuple[str, ...] | None = None
    budget: Any = None
    budget_warning: Any = None
    on_budget_warning: Any = None
    on_limit: Any = None
    customer_budget: Any = None
    customer_over_budget: Any = None
    budget_fail_closed: bool | None = None

    def __post_init__(self) -> None:
        for name, check in (
            ("budget", budgets.usd),
            ("budget_warning", budgets.fraction),
            ("on_budget_warning", budgets.callback),
            ("on_limit", budgets.callback),
            ("customer_budget", budgets.customer_cap),
            ("customer_over_budget", budgets.over_mode),
        ):
            value = getattr(self, name)
            if value is not None:
                try:
                    object.__setattr__(self, name, check(value))
                except ValueError as exc:
                    raise ValueError(f"metered({name}=...): {exc}") from None
        # Explicit options are checked where they are written (worker start-up), with a clear error.
        if self.hosting is not None:
            object.__setattr__(self, "hosting", parse_hosting(self.hosting).value)
        if self.phone_numbers is not None and not parse_numbers(self.phone_numbers):
            raise ValueError(f"phone_numbers= holds no phone number: {self.phone_numbers!r}")
        if self.checkpoint_interval is not None:
            _check_interval(self.checkpoint_interval, "checkpoint_interval=")
        if self.policy is not None:
            get_policy(self.policy)  # raises UnknownPolicy naming the known ones
        if self.customer is not None and not (isinstance(self.customer, str) or callable(self.customer)):
            raise TypeError("customer= must be a job-metadata key / participant attribute name, or a callable (ctx)")
        if self.attributes is not None and not callable(self.attributes):
            raise TypeError("attributes= must be a callable (ctx) -> dict[str, str]")
        if self.exporter is not None and not (_is_exporter(self.exporter) or callable(self.exporter)):
            raise TypeError("exporter= must be an Exporter (export(batch), shutdown()) or a factory returning one")
        if self.file is not None:
            object.__setattr__(self, "file", os.fspath(self.file))
        if self.prices is not None:
            object.__setattr__(self, "prices", os.fspath(self.prices))

    def check_picklable(self) -> None:
        """The PROCESS executor pickles the entrypoint with its options: fail early and say which one."""
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            try:
                pickle.dumps(value)
            except Exception as exc:
                fix = (
                    "pass a factory instead, called in each job: a class, a module-level function, "
                    "or functools.partial(FileExporter, path)"
                    if field.name == "exporter"
                    else "use a module-level function or class instead of a lambda, closure or open resource"
                )
                raise TypeError(
                    f"metered({field.name}=...) cannot be pickled into the job process ({exc}); {fix}"
                ) from None

    # -- resolution in the job process ---------------------------------------------------------------

    def resolved_policy(self) -> str | RatePolicy | None:
        return self.policy or _env(_ENV_POLICY)

    def resolved_plan(self) -> str:
        return self.plan or _env(_ENV_PLAN) or DEFAULT_PLAN

    def resolved_prices(self) -> str | None:
        return self.prices or _env(_ENV_PRICES)

    def resolved_interval(self) -> float:
        if self.checkpoint_interval is not None:
            return float(self.checkpoint_interval)
        text = _env(_ENV_INTERVAL)
        if text is None:
            return DEFAULT_CHECKPOINT_INTERVAL
        try:
            return _check_interval(float(text), f"{_ENV_INTERVAL}=")
        except ValueError:
            logger.error(
                "livekit-metering: %s=%r is not a positive number of seconds; using %s",
                _ENV_INTERVAL,
                text,
                DEFAULT_CHECKPOINT_INTERVAL,
            )
            return DEFAULT_CHECKPOINT_INTERVAL

    def resolved_customer(self) -> CustomerOption | None:
        return self.customer or _env(_ENV_CUSTOMER)

    def resolved_hosting(self, livekit_url: str) -> tuple[Hosting, str]:
        try:
            return detect_hosting(livekit_url, option=self.hosting)
        except ValueError as exc:  # a bad LIVEKIT_METERING_HOSTING: detect as if it were unset
            logger.error("livekit-metering: %s; detecting the hosting instead", exc)
            return detect_hosting(livekit_url, environ={k: v for k, v in os.environ.items() if k != HOSTING_ENV})

    def resolved_budgets(self) -> BudgetOptions:
        def env(name: str, check: Callable[[Any], Any]) -> Any:
            text = _env(name)
            if text is None:
                return None
            try:
                return check(text)
            except ValueError as exc:
                logger.error("livekit-metering: %s=%r %s; ignored", name, text, exc)
                return None

        fail_closed = self.budget_fail_closed
        if fail_closed is None:
            fail_closed = (_env(_ENV_FAIL_CLOSED) or "").lower() in ("1", "true", "yes", "on")
        return BudgetOptions(
            session=self.budget if self.budget is not None else env(_ENV_BUDGET, budgets.usd),
            customer=self.customer_budget
            if self.customer_budget is not None
            else env(_ENV_CUSTOMER_BUDGET, budgets.customer_cap),
            warn_at=self.budget_warning or env(_ENV_BUDGET_WARNING, budgets.fraction) or Decimal("0.8"),
            on_warning=self.on_budget_warning or budgets.log_budget_warning,
            on_limit=self.on_limit or budgets.end_after_utterance,
            customer_over=self.customer_over_budget or env(_ENV_CUSTOMER_OVER, budgets.over_mode) or "refuse",
            fail_closed=fail_closed,
        )

    def resolved_phone_numbers(self) -> frozenset[str] | None:
        return parse_numbers(self.phone_numbers if self.phone_numbers is not None else _env(PHONE_NUMBERS_ENV))

    def build_exporter(self) -> tuple[Exporter, bool]:
        """The job's exporter, and whether the job owns it (so shuts it down at its end)."""
        if self.exporter is None:
            from .export.config import default_exporter

            return default_exporter(url=self.url, file=self.file), True
        if _is_exporter(self.exporter):
            # An instance given by the user: each job process has its own unpickled copy, but under
            # the THREAD executor the jobs share it, and its owner shuts it down.
            return cast(Exporter, self.exporter), _job_owns_process()
        built = self.exporter()  # type: ignore[operator]
        if not _is_exporter(built):
            raise TypeError(f"metered(exporter=...) factory returned {built!r}, which is not an Exporter")
        return built, True


def _is_exporter(value: object) -> bool:
    # A class has export/shutdown attributes too: a class passed as exporter= is a factory.
    return isinstance(value, Exporter) and not isinstance(value, type)


def _numbers_option(numbers: Iterable[str] | None) -> tuple[str, ...] | None:
    if numbers is None:
        return None
    if isinstance(numbers, str):
        raise ValueError(
            'phone_numbers= takes a list of numbers, e.g. ["+14155550100", "+18005550100"], not one string'
        )
    return tuple(str(n) for n in numbers)


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _check_interval(value: float, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{where} must be a positive number of seconds (default 15), got {value!r}")
    return float(value)


def _job_owns_process() -> bool:
    try:
        from livekit.agents import JobExecutorType, get_job_context

        ctx = get_job_context(required=False)
        return ctx is not None and ctx.proc.executor_type == JobExecutorType.PROCESS
    except Exception:
        return False


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
        phone_numbers=_numbers_option(phone_numbers),
        budget=budget,
        budget_warning=budget_warning,
        on_budget_warning=on_budget_warning,
        on_limit=on_limit,
        customer_budget=customer_budget,
        customer_over_budget=customer_over_budget,
        budget_fail_closed=budget_fail_closed,
    )
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
            policy=_policy_or_default(options),
            checkpoint_interval=options.resolved_interval(),
            clock=options.clock,
            attribution=attribution,
            hosting=hosting,
            hosting_source=hosting_source,
        )
        hooks = _JobHooks(ctx, meter, options, exporter=exporter, owns_exporter=owned)
        hooks.budget = _budget(ctx, meter, options, attribution.customer)
        hooks.preview = maybe_attach_preview(
            meter, option=options.preview, plan=options.resolved_plan(), prices=options.resolved_prices()
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
        book=PriceBook.load(prices) if prices else PriceBook.bundled(),
        plan=options.resolved_plan(),
        session_id=meter.session_id,
        customer_of=customer_of,
        session_time=lambda: meter.duration_ms,
        policy=meter.policy,
        url=options.url or _env("LIVEKIT_METERING_URL"),
        api_key=_env("LIVEKIT_API_KEY"),
        api_secret=_env("LIVEKIT_API_SECRET"),
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
    try:
        return options.build_exporter()
    except Exception:
        # Keep the records rather than lose them: the default JSON-lines file always works.
        from .export.config import default_records_file
        from .export.file import FileExporter

        path = Path(options.file) if options.file else default_records_file()
        logger.exception("livekit-metering could not build its exporter; writing records to %s instead", path)
        return FileExporter(path), True


def _policy_or_default(options: MeteringOptions) -> RatePolicy:
    policy = options.resolved_policy()
    try:
        return get_policy(policy)
    except Exception as exc:
        logger.error("livekit-metering: %s (from %s); using the default policy", exc, _ENV_POLICY)
        return get_policy(None)


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
