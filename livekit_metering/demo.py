"""``livekit-metering demo``: one real agent session, metered end to end, offline, with no keys.

What runs is the production path, with only the LiveKit server and the paid providers scripted:

- livekit-agents' real ``AgentServer`` (unregistered, as in ``dev``/``console``) launches a job with
  ``simulate_job`` into its real job runner (THREAD executor, so it stays in this process);
- the job's entrypoint is wrapped by ``metered`` and runs a real ``AgentSession`` whose STT, LLM
  and TTS are the scripted models of ``livekit_metering.scripted``, metered in place by
  ``MeteredSTT``, ``MeteredLLM`` and ``MeteredTTS``, with a scripted caller speaking through a fake microphone;
- every record goes through the durable outbox (SQLite on disk) to an embedded collector on
  127.0.0.1, backed by SQLite, signed with a key pair generated for the run;
- the same call runs twice: with the agent deployed to LiveKit Cloud (billed as agent session
  minutes) and self-hosted against LiveKit Cloud (billed as its own WebRTC connection minutes and
  downstream data), chosen with ``LIVEKIT_METERING_HOSTING`` for each job;
- at the end both sessions' records and the month's invoice are read back from the collector's
  query API and printed: the two cost previews side by side and the invoice preview.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .money import usd

if TYPE_CHECKING:
    from livekit.agents import JobContext, TurnHandlingOptions
    from rich.console import Console

    from .records import MeterRecord

__all__ = ["DemoError", "DemoResult", "run_demo"]

AGENT_NAME = "bike-shop-demo"
ROOM = "demo-call"
CUSTOMER = "acme-bikes"
INSTRUCTIONS = "You are the voice assistant of a bike shop. Answer in one or two short sentences."

# (what the caller says, what the scripted LLM answers)
SCRIPT: tuple[tuple[str, str], ...] = (
    (
        "Hi, do you repair electric bikes?",
        "Yes, we service most electric bikes, including motors and batteries. What seems to be the problem?",
    ),
    (
        "The battery dies after ten kilometres.",
        "That sounds like a worn battery. Bring it in and we will run a free capacity test while you wait.",
    ),
    (
        "Great, are you open on Saturday?",
        "We are open Saturday from nine to four. See you then, and thanks for calling!",
    ),
)

TURN_HANDLING: dict[str, Any] = {
    "turn_detection": "stt",
    "endpointing": {"min_delay": 0.1, "max_delay": 0.5},
    "interruption": {"enabled": False},
    "preemptive_generation": {"enabled": False},
}


class DemoError(RuntimeError):
    """The demo could not complete; the message says which step failed."""


@dataclass
class _Run:
    """What the runner hands the job (same process, THREAD executor) and what the job hands back."""

    script: Sequence[tuple[str, str]]
    console: Console
    plan: str
    quiet: bool = False  # the second call: same conversation, not printed again
    session_id: str = ""
    transcript: list[tuple[str, str]] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


_current: _Run | None = None


def demo_customer(ctx: JobContext) -> str:
    """The customer this demo call is attributed to (module level, so it pickles with the entrypoint)."""
    return CUSTOMER


async def demo_entrypoint(ctx: JobContext) -> None:
    """The agent: connect, hold a scripted conversation through a real AgentSession, hang up."""
    run = _current
    if run is None:  # pragma: no cover - only ever launched by run_demo
        raise DemoError("demo_entrypoint runs only inside run_demo()")
    try:
        run.session_id = ctx.job.id
        await _converse(ctx, run)
    except BaseException as exc:
        run.error = exc
        raise
    finally:
        run.done.set()
    ctx.shutdown("demo call ended")


async def _converse(ctx: JobContext, run: _Run) -> None:
    from livekit.agents import Agent, AgentSession

    from .adapters import MeteredLLM, MeteredSTT, MeteredTTS
    from .meter import current_meter
    from .preview import attach_preview
    from .scripted import FakeAudioInput, FakeAudioOutput, ScriptedLLM, ScriptedSTT, ScriptedTTS

    # Live running cost in the terminal: a listener on this job's meter (set up by ``metered``).
    if not run.quiet:
        attach_preview(current_meter(), plan=run.plan, console=run.console)
    await ctx.connect()  # agent session time starts here, as LiveKit bills it

    stt, llm = ScriptedSTT(), ScriptedLLM([reply for _, reply in run.script], cached_tokens=0)
    session: AgentSession[None] = AgentSession(
        stt=MeteredSTT(stt),
        llm=MeteredLLM(llm),
        tts=MeteredTTS(ScriptedTTS()),
        turn_handling=cast("TurnHandlingOptions", TURN_HANDLING),
    )
    session.input.audio = FakeAudioInput()
    session.output.audio = FakeAudioOutput()
    replies: list[str] = []
    states: list[str] = []

    def on_item(event: Any) -> None:
        item = event.item
        text = getattr(item, "text_content", None) or ""
        role = getattr(item, "role", "")
        if role in ("user", "assistant") and text:
            run.transcript.append((role, text))
            if role == "assistant":
                replies.append(text)
            if not run.quiet:
                who = "[bold cyan]caller[/]" if role == "user" else "[bold green]agent [/]"
                run.console.print(f"{who}  {text}", highlight=False)

    session.on("conversation_item_added", on_item)
    session.on("agent_state_changed", lambda event: states.append(event.new_state))
    await session.start(Agent(instructions=INSTRUCTIONS))
    await asyncio.sleep(0.3)  # a moment of silence before the caller speaks, streamed to STT like a real call
    for line, _ in run.script:
        before = len(replies)
        stt.say(line)
        for _ in range(400):  # bounded: 20 s per turn
            await asyncio.sleep(0.05)
            if len(replies) > before and states and states[-1] == "listening":
                break
        else:
            raise DemoError(f"the agent did not answer {line!r} within 20 s")
    await session.aclose()


@dataclass
class DemoResult:
    """``session_id``, ``records``, ``session_cost``: the call with the agent deployed to LiveKit Cloud;
    ``self_hosted_*``: the same call self-hosted against LiveKit Cloud; ``invoice``: both, for the month."""

    session_id: str
    records: list[MeterRecord]
    invoice: dict[str, Any]
    transcript: list[tuple[str, str]]
    session_cost: Decimal
    database: Path
    self_hosted_session_id: str = ""
    self_hosted_records: list[MeterRecord] = field(default_factory=list)
    self_hosted_cost: Decimal = Decimal(0)


# The two calls: where the agent runs, and how the demo names it.
HOSTINGS = (("cloud", "deployed to LiveKit Cloud"), ("self-hosted-on-cloud", "self-hosted on LiveKit Cloud"))


async def run_demo(
    *,
    console: Console | None = None,
    plan: str = "ship",
    workdir: Path | None = None,
    script: Sequence[tuple[str, str]] = SCRIPT,
    keep: Path | None = None,
) -> DemoResult:
    """Run the demo session; print the conversation, the running cost, the cost preview and the invoice.

    With ``keep``, every record is also appended to that JSON-lines file, as an agent with
    LIVEKIT_METERING_FILE writes it, for the ``report`` and ``invoice`` commands to read.
    """
    from rich.console import Console

    from .pricing import PriceBook, UnknownPlan

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: wide enough for the tables
            console = Console(width=110)
    try:
        PriceBook.bundled().plan(plan)  # before anything starts
    except UnknownPlan as exc:
        raise DemoError(str(exc)) from None
    if keep is not None:
        await asyncio.to_thread(_check_keep, keep)
    with _only_errors("livekit", "livekit.agents", "livekit_metering", "livekit_metering.collector"):
        if workdir is not None:
            await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
            return await _run_in(workdir, console, plan, script, keep)
        with tempfile.TemporaryDirectory(prefix="livekit-metering-demo-") as tmp:
            return await _run_in(Path(tmp), console, plan, script, keep)


@contextlib.contextmanager
def _only_errors(*names: str) -> Iterator[None]:
    """The worker's own logs (dev-mode notices about warm processes and loop stalls) would bury the
    demo's output: errors only while it runs, the levels as they were after (the demo may run in
    another program's process)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _check_keep(keep: Path) -> None:
    if keep.is_dir():
        raise DemoError(f"cannot keep the records in {keep}: it is a directory; give a file such as records.jsonl")
    if not keep.parent.is_dir():
        raise DemoError(f"cannot keep the records in {keep}: there is no directory {keep.parent}")


async def _run_in(
    directory: Path, console: Console, plan: str, script: Sequence[tuple[str, str]], keep: Path | None
) -> DemoResult:
    from livekit.agents import AgentServer, JobExecutorType

    from .collector.testing import run_collector
    from .entrypoint import metered
    from .export import Exporter, FanoutExporter, FileExporter
    from .export.outbox import Outbox

    key, secret = "APIdemo" + secrets.token_hex(4), secrets.token_urlsafe(32)  # ephemeral, this run only
    database = directory / "collector.db"
    async with run_collector(database, keys={key: (secret, "default")}) as url:
        console.print(f"[dim]collector on {url} (SQLite {database}); outbox {directory / 'outbox.db'}[/]")
        outbox = Outbox(directory / "outbox.db", url=url, api_key=key, api_secret=secret, interval=0.2)
        exporter: Exporter = outbox if keep is None else FanoutExporter(outbox, FileExporter(keep))
        entry = metered(demo_entrypoint, exporter=exporter, plan=plan, customer=demo_customer, checkpoint_interval=5)
        server = AgentServer(job_executor_type=JobExecutorType.THREAD, num_idle_processes=0, host="127.0.0.1", port=0)
        server.rtc_session(entry, agent_name=AGENT_NAME)
        started = asyncio.Event()
        server.on("worker_started", started.set)
        runs: list[tuple[_Run, list[MeterRecord]]] = []
        worker = asyncio.create_task(server.run(devmode=True, unregistered=True))
        try:
            await asyncio.wait_for(started.wait(), 60)
            for hosting, name in HOSTINGS:
                run = _Run(script=script, console=console, plan=plan, quiet=bool(runs))
                if run.quiet:
                    console.rule(f"[bold]The same call, with the agent {name}")
                else:
                    console.rule(f"[bold]A call to the {AGENT_NAME} agent {name} (scripted caller, STT, LLM and TTS)")
                await _call(server, run, hosting)
                runs.append((run, await _collected(url, key, secret, run.session_id, outbox)))
        finally:
            await server.aclose()
            await asyncio.wait_for(worker, 60)
            await asyncio.get_running_loop().run_in_executor(None, outbox.shutdown, 5.0)
        first = runs[0][1]
        month = first[0].start.strftime("%Y-%m") if first else datetime.now(timezone.utc).strftime("%Y-%m")
        invoice = await _get(url, key, secret, "/v1/invoice", month=month, plan=plan)
    result = _report(console, runs, invoice, plan, database)
    if keep is not None:
        console.print(
            f"The records are also in [bold]{keep}[/]: try [bold]livekit-metering report {keep}[/] "
            f"and [bold]livekit-metering invoice {keep} --plan {plan}[/]."
        )
    return result


async def _call(server: Any, run: _Run, hosting: str) -> None:
    """One call in the running worker; its job reads the hosting from the environment."""
    from .hosting import HOSTING_ENV

    global _current
    before = os.environ.get(HOSTING_ENV)
    os.environ[HOSTING_ENV] = hosting
    _current = run
    try:
        await server.simulate_job(ROOM, fake_job=True)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, run.done.wait, 120):
            raise DemoError("the demo call did not finish within 2 minutes")
        if run.error is not None:
            raise DemoError(f"the demo call failed: {run.error!r}") from run.error
    finally:
        _current = None
        if before is None:
            os.environ.pop(HOSTING_ENV, None)
        else:
            os.environ[HOSTING_ENV] = before


async def _get(url: str, key: str, secret: str, path: str, **query: str) -> Any:
    import aiohttp

    from .collector.testing import sign

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(url + path, params=query, headers={"Authorization": sign(key=key, secret=secret)}) as resp:
            if resp.status != 200:
                raise DemoError(f"the collector answered {resp.status} to {path}: {await resp.text()}")
            return await resp.json()


async def _collected(url: str, key: str, secret: str, session_id: str, outbox: Any) -> list[MeterRecord]:
    """The session's records as the collector stored them, once the final record of the agent's own
    time arrived (agent session minutes, or its connection minutes when self-hosted)."""
    from .records import MeterRecord, Status

    loop = asyncio.get_running_loop()
    for _ in range(100):  # bounded: about 30 s
        await loop.run_in_executor(None, outbox.flush, 0.3)
        data = await _get(url, key, secret, f"/v1/sessions/{session_id}/records")
        records = [MeterRecord.from_json({k: v for k, v in r.items() if k != "cost"}) for r in data["records"]]
        if any(r.meta.get("session_time") is True and r.status is Status.OK for r in records):
            return records
        await asyncio.sleep(0.05)
    raise DemoError(f"the collector never received the final record of session {session_id}")


def _report(
    console: Console,
    runs: list[tuple[_Run, list[MeterRecord]]],
    invoice: dict[str, Any],
    plan: str,
    database: Path,
) -> DemoResult:
    from rich.table import Table

    from .preview import render_comparison
    from .pricing import PriceBook

    book = PriceBook.bundled()
    (deployed, records), (self_hosted, self_hosted_records) = runs
    console.print()
    console.print(
        f"The collector stored {len(records)} records for session [bold]{deployed.session_id}[/] and "
        f"{len(self_hosted_records)} for [bold]{self_hosted.session_id}[/] (customer {CUSTOMER}), "
        "sent through the outbox and signed."
    )
    console.print(
        render_comparison(
            {f"agent {name}": found for (_, name), (_, found) in zip(HOSTINGS, runs, strict=True)}, book, plan
        )
    )
    table = Table(title=f"Invoice preview: {plan} plan, {invoice.get('month')}", title_justify="left")
    for name, justify in (
        ("item", "left"),
        ("quantity", "right"),
        ("included", "right"),
        ("billable", "right"),
        ("amount", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for line in invoice.get("lines", []):
        table.add_row(
            str(line.get("description") or line.get("resource")),
            _plain(line.get("quantity")),
            _plain(line.get("included")),
            _plain(line.get("billable")),
            _usd(line.get("amount")),
        )
    table.add_section()
    due = "nothing due" if invoice.get("nothing_due") or "total" not in invoice else _usd(invoice["total"])
    table.add_row("[bold]Total due[/]", "", "", "", f"[bold]{due}[/]")
    console.print(table)
    local = book.invoice([*records, *self_hosted_records], plan=plan, month=str(invoice.get("month"))).to_json()
    if local == invoice:
        console.print("The collector's invoice preview matches the one computed here from both sessions' records.")
    else:
        console.print("[bold red]The collector's invoice preview differs from the one computed here.[/]")
    return DemoResult(
        session_id=deployed.session_id,
        records=records,
        invoice=invoice,
        transcript=deployed.transcript,
        session_cost=book.cost(records, plan=plan).total,
        database=database,
        self_hosted_session_id=self_hosted.session_id,
        self_hosted_records=self_hosted_records,
        self_hosted_cost=book.cost(self_hosted_records, plan=plan).total,
    )


def _usd(value: Any) -> str:
    return usd(None if value is None else Decimal(str(value)), places=2)  # invoice lines are in cents


def _plain(value: Any) -> str:
    if value is None or value == "":
        return ""
    try:
        number = Decimal(str(value))
    except ArithmeticError:
        return str(value)
    whole, _, frac = format(number.normalize(), "f").partition(".")
    return f"{int(whole):,}" + (f".{frac}" if frac else "")
