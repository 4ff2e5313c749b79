"""The options of ``metered``: keyword arguments, else environment variables, else defaults, each checked.

Every option is one ``Setting`` in ``SETTINGS``: its field, its environment variable and a check that
turns a value (a keyword argument, or the variable's text) into the value used, or raises ValueError
saying what is wrong and what to write instead. ``metered`` runs the checks when it decorates the
entrypoint (at worker start-up), on the keywords given and on the environment for the options left
unset, so a typo fails there with one line (:class:`InvalidOption`). In the job process, options are
resolved again from the environment; a value that went bad since is logged once and its default used,
because metering must never stop an agent.

Adding an option: a field on :class:`MeteringOptions`, a keyword in ``metered``, and a ``Setting``.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import budgets
from .export.base import Exporter
from .rates import RatePolicy, UnknownPolicy, get_policy

if TYPE_CHECKING:
    from livekit.agents import JobContext

    from .budgets import BudgetOptions
    from .hosting import Hosting
    from .session import Clock

__all__ = [
    "DEFAULT_CHECKPOINT_INTERVAL",
    "DEFAULT_PLAN",
    "SETTINGS",
    "InvalidOption",
    "MeteringOptions",
    "Setting",
]

logger = logging.getLogger("livekit_metering")

CustomerOption = str | Callable[["JobContext"], "str | None"]
AttributesOption = Callable[["JobContext"], Mapping[str, str]]
ExporterOption = Exporter | Callable[[], Exporter]

DEFAULT_PLAN = "ship"
DEFAULT_CHECKPOINT_INTERVAL = 15.0


class InvalidOption(ValueError):
    """A ``metered`` option or a LIVEKIT_METERING_* variable is wrong; the message says what to write instead."""


# -- checks: value -> value used, or ValueError(what is wrong; what to do) ------------------------------


def _path(value: Any) -> str:
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"must be a file path, got {type(value).__name__}")
    text = os.fspath(value)
    if not text:
        raise ValueError("is empty: give a file path such as records.jsonl")
    if Path(text).is_dir():
        raise ValueError("is a directory: give a file path inside it, such as records.jsonl")
    return str(text)


def _url(value: Any) -> str:
    from .export.client import check_url

    if not isinstance(value, str):
        raise ValueError(f"must be a URL string, got {type(value).__name__}")
    return check_url(value)


def _exporter(value: Any) -> ExporterOption:
    if not (is_exporter(value) or callable(value)):
        raise ValueError("must be an Exporter (export(batch), shutdown()) or a factory returning one")
    return cast(ExporterOption, value)


def _policy(value: Any) -> str | RatePolicy:
    try:
        return get_policy(value) if isinstance(value, RatePolicy) else get_policy(value).id
    except UnknownPolicy as exc:
        raise ValueError(str(exc)) from None


def _word(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value.strip()


def _prices(value: Any) -> str:
    from .pricing import InvalidPriceBook, PriceBook

    path = _path(value)
    if not Path(path).is_file():
        raise ValueError(f"no price file at {path}: give the path of a price TOML (see `livekit-metering prices`)")
    try:
        PriceBook.of(path)  # loaded once: the job reads it again through the same cache
    except InvalidPriceBook as exc:
        raise ValueError(str(exc)) from None
    return path


def _interval(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise ValueError(f"must be a positive number of seconds (default 15), got {value!r}")
    return float(value)


def _customer(value: Any) -> CustomerOption:
    if isinstance(value, str):
        return _word(value)
    if not callable(value):
        raise ValueError("must be a job-metadata key / participant attribute name, or a callable (ctx)")
    return cast(CustomerOption, value)


def _attributes(value: Any) -> AttributesOption:
    if not callable(value):
        raise ValueError("must be a callable (ctx) -> dict[str, str]")
    return cast(AttributesOption, value)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _switch(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"must be true or false (1 or 0), got {value!r}")


def _any(value: Any) -> Any:
    return value


def _hosting(value: Any) -> str:
    from .hosting import Hosting

    try:
        return Hosting(str(value).strip().lower()).value
    except ValueError:
        raise ValueError(f"must be one of {', '.join(repr(h.value) for h in Hosting)}") from None


def _phone_numbers(value: Any) -> tuple[str, ...]:
    from .telephony import parse_numbers

    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError('takes a list of numbers, e.g. ["+14155550100", "+18005550100"], not one string')
    numbers = tuple(str(n) for n in value)
    if not parse_numbers(numbers):
        raise ValueError("holds no phone number: give E.164 numbers such as +14155550100")
    return numbers


def _comma_separated(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


@dataclass(frozen=True)
class Setting:
    """One option: its ``MeteringOptions`` field, environment variable (if any), check and default;
    ``from_env`` turns the variable's text into what the keyword takes, when they differ."""

    field: str
    env: str | None
    check: Callable[[Any], Any]
    default: Any = None
    from_env: Callable[[str], Any] | None = None

    def where(self, *, from_env: bool, value: Any) -> str:
        if from_env:
            return f"{self.env}={value!r}"
        shown = repr(value) if isinstance(value, str | int | float) else "..."
        return f"metered({self.field}={shown})"


SETTINGS: dict[str, Setting] = {
    s.field: s
    for s in (
        Setting("file", "LIVEKIT_METERING_FILE", _path),
        Setting("url", "LIVEKIT_METERING_URL", _url),
        Setting("exporter", None, _exporter),
        Setting("policy", "LIVEKIT_METERING_POLICY", _policy),
        Setting("plan", "LIVEKIT_METERING_PLAN", _word, DEFAULT_PLAN),
        Setting("prices", "LIVEKIT_METERING_PRICES", _prices),
        Setting("checkpoint_interval", "LIVEKIT_METERING_CHECKPOINT_INTERVAL", _interval, DEFAULT_CHECKPOINT_INTERVAL),
        Setting("customer", "LIVEKIT_METERING_CUSTOMER", _customer),
        Setting("attributes", None, _attributes),
        Setting("preview", "LIVEKIT_METERING_PREVIEW", _switch),
        Setting("clock", None, _any),
        Setting("hosting", "LIVEKIT_METERING_HOSTING", _hosting),
        Setting("phone_numbers", "LIVEKIT_METERING_PHONE_NUMBERS", _phone_numbers, from_env=_comma_separated),
        Setting("budget", "LIVEKIT_METERING_SESSION_BUDGET", budgets.usd),
        Setting("budget_warning", "LIVEKIT_METERING_BUDGET_WARNING", budgets.fraction, Decimal("0.8")),
        Setting("on_budget_warning", None, budgets.callback, budgets.log_budget_warning),
        Setting("on_limit", None, budgets.callback, budgets.end_after_utterance),
        Setting("customer_budget", "LIVEKIT_METERING_CUSTOMER_BUDGET", budgets.customer_cap),
        Setting("customer_over_budget", "LIVEKIT_METERING_CUSTOMER_OVER_BUDGET", budgets.over_mode, "refuse"),
        Setting("budget_fail_closed", "LIVEKIT_METERING_BUDGET_FAIL_CLOSED", _switch, False),
    )
}


def _checked(setting: Setting, value: Any, *, from_env: bool) -> Any:
    try:
        if from_env and setting.from_env is not None:
            return setting.check(setting.from_env(value))
        return setting.check(value)
    except ValueError as exc:
        raise InvalidOption(f"{setting.where(from_env=from_env, value=value)}: {exc}") from None


def _env_text(setting: Setting) -> str | None:
    if setting.env is None:
        return None
    return os.environ.get(setting.env, "").strip() or None


def is_exporter(value: object) -> bool:
    # A class has export/shutdown attributes too: a class passed as exporter= is a factory.
    return isinstance(value, Exporter) and not isinstance(value, type)


_warned: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class MeteringOptions:
    """The options of ``metered``. Keywords are checked here; unset ones come from the environment."""

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
    budget: Decimal | None = None
    budget_warning: Decimal | None = None
    on_budget_warning: budgets.BudgetCallback | None = None
    on_limit: budgets.BudgetCallback | None = None
    customer_budget: budgets.CustomerCap | None = None
    customer_over_budget: str | None = None
    budget_fail_closed: bool | None = None

    def __post_init__(self) -> None:
        for name, setting in SETTINGS.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _checked(setting, value, from_env=False))

    def check(self) -> None:
        """What ``metered`` checks at decoration beyond each keyword: the environment variables of the
        options left unset, and the plan against the price book in use. Raises InvalidOption."""
        for name, setting in SETTINGS.items():
            text = _env_text(setting)
            if getattr(self, name) is None and text is not None:
                _checked(setting, text, from_env=True)
        from .pricing import PriceBook, UnknownPlan

        prices = self.resolve("prices")
        book = PriceBook.of(prices)
        plan = self.resolve("plan")
        try:
            book.plan(plan)
        except UnknownPlan as exc:
            where = SETTINGS["plan"].where(from_env=self.plan is None, value=plan)
            raise InvalidOption(f"{where}: {exc}") from None

    def resolve(self, name: str) -> Any:
        """The value of option ``name``: the keyword, else its environment variable, else the default.

        In the job process a variable that does not pass its check is logged once and the default used.
        """
        value = getattr(self, name)
        if value is not None:
            return value
        setting = SETTINGS[name]
        text = _env_text(setting)
        if text is None:
            return setting.default
        try:
            return _checked(setting, text, from_env=True)
        except InvalidOption as exc:
            if (name, text) not in _warned:
                _warned.add((name, text))
                logger.error("livekit-metering: %s; using the default (%s)", exc, setting.default)
            return setting.default

    # Named accessors for the options the job reads.
    def resolved_policy(self) -> str | RatePolicy | None:
        return cast("str | RatePolicy | None", self.resolve("policy"))

    def resolved_plan(self) -> str:
        return cast(str, self.resolve("plan"))

    def resolved_prices(self) -> str | None:
        return cast("str | None", self.resolve("prices"))

    def resolved_interval(self) -> float:
        return cast(float, self.resolve("checkpoint_interval"))

    def resolved_customer(self) -> CustomerOption | None:
        return cast("CustomerOption | None", self.resolve("customer"))

    def resolved_preview(self) -> bool | None:
        return cast("bool | None", self.resolve("preview"))

    def resolved_hosting(self, livekit_url: str) -> tuple[Hosting, str]:
        """Where the agent runs, and how that was decided (see ``hosting.detect_hosting``)."""
        from .hosting import HOSTING_ENV, detect_hosting

        try:
            return detect_hosting(livekit_url, option=self.hosting)
        except ValueError as exc:  # a bad LIVEKIT_METERING_HOSTING: detect as if it were unset
            logger.error("livekit-metering: %s; detecting the hosting instead", exc)
            return detect_hosting(livekit_url, environ={k: v for k, v in os.environ.items() if k != HOSTING_ENV})

    def resolved_phone_numbers(self) -> frozenset[str] | None:
        from .telephony import parse_numbers

        return parse_numbers(self.resolve("phone_numbers"))

    def resolved_budgets(self) -> BudgetOptions:
        from .budgets import BudgetOptions

        return BudgetOptions(
            session=self.resolve("budget"),
            customer=self.resolve("customer_budget"),
            warn_at=self.resolve("budget_warning"),
            on_warning=self.resolve("on_budget_warning"),
            on_limit=self.resolve("on_limit"),
            customer_over=self.resolve("customer_over_budget"),
            fail_closed=self.resolve("budget_fail_closed"),
        )

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

    def build_exporter(self) -> tuple[Exporter, bool]:
        """The job's exporter, and whether the job owns it (so shuts it down at its end)."""
        if self.exporter is None:
            from .export.config import exporter_for

            return exporter_for(url=self.resolve("url"), file=self.resolve("file")), True
        if is_exporter(self.exporter):
            # An instance given by the user: each job process has its own unpickled copy, but under
            # the THREAD executor the jobs share it, and its owner shuts it down.
            return cast(Exporter, self.exporter), _job_owns_process()
        built = self.exporter()  # type: ignore[operator]
        if not is_exporter(built):
            raise TypeError(f"metered(exporter=...) factory returned {built!r}, which is not an Exporter")
        return built, True


def _job_owns_process() -> bool:
    try:
        from livekit.agents import JobExecutorType, get_job_context

        ctx = get_job_context(required=False)
        return ctx is not None and ctx.proc.executor_type == JobExecutorType.PROCESS
    except Exception:
        return False
