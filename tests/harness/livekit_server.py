"""A real LiveKit server, a registered agent worker, a collector and a caller, on 127.0.0.1.

Used by ``tests/test_e2e_livekit.py`` and ``benchmarks/bench_e2e.py``. Nothing here stands in for
LiveKit: the server is the open-source ``livekit-server`` binary (installed by ``.ci/run`` with
``go install``, named by LIVEKIT_METERING_TEST_SERVER), the agent is a real ``AgentServer`` worker
process (``python -m livekit.agents start``) that registers with it, the caller is a ``livekit``
SDK participant. The one addition is :class:`WebhookTap`, on the line between the server and the
collector: it forwards every webhook unchanged (body and signature) and keeps a copy, so the tests
can compare what the server reported with what the collector made of it; it can also hold a room's
webhooks back, for the case where none arrive.

One :class:`Stack` serves a whole test module: the server and the worker take seconds to start,
and each test uses a room of its own, so tests never see each other's sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import numpy as np
from aiohttp import web
from livekit import api, rtc
from livekit.protocol import models

from livekit_metering.collector.testing import free_port, run_collector, sign
from livekit_metering.records import MeterRecord, Resource, Status, participant_usage_id

T = TypeVar("T")

SERVER_ENV = "LIVEKIT_METERING_TEST_SERVER"
API_KEY = "APIe2emetering"
API_SECRET = "e2e-metering-secret-for-loopback-only-0123"  # 32+ characters, as the server asks outside dev mode
AGENT_NAME = "metered-e2e"
AGENT_MODULE = Path(__file__).with_name("e2e_agent.py")
CHECKPOINT_INTERVAL = 1.0  # seconds, the agent's (LIVEKIT_METERING_CHECKPOINT_INTERVAL)
# How long the server keeps a room open once its last participant left (its default is 20 s);
# the agent then leaves with ROOM_CLOSED.
DEPARTURE_TIMEOUT = 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def until(
    check: Callable[[], Awaitable[T | None] | T | None], what: str, timeout: float = 60.0, every: float = 0.1
) -> T:
    """Poll ``check`` (sync or async) until it returns something other than None or False; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


# -- the server ---------------------------------------------------------------------------------------


def server_version(binary: str) -> str:
    """``livekit-server --version`` -> "1.13.5"; a clear error if the binary does not run."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"{SERVER_ENV}={binary} does not run as a LiveKit server: {exc}") from None
    return out.strip().rsplit(" ", 1)[-1]


class LiveKitServer:
    """``livekit-server --dev`` on loopback ports of its own, its webhooks sent to ``webhook_url``."""

    def __init__(self, binary: str, workdir: Path, webhook_url: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.webhook_url = webhook_url
        self.port = free_port()
        self.log = workdir / "livekit-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "bind_addresses": ["127.0.0.1"],
            "rtc": {
                "tcp_port": free_port(),
                "udp_port": free_port(socket.SOCK_DGRAM),
                "use_external_ip": False,
                "node_ip": "127.0.0.1",
                "enable_loopback_candidate": True,
            },
            "keys": {API_KEY: API_SECRET},
            "webhook": {"api_key": API_KEY, "urls": [self.webhook_url]},
            "logging": {"level": "info"},  # --dev alone logs at debug: megabytes per session
            "room": {"empty_timeout": 60, "departure_timeout": DEPARTURE_TIMEOUT},
        }

    def start(self, timeout: float = 30.0) -> None:
        path = self.workdir / "livekit-server.yaml"
        path.write_text(json.dumps(self.config(), indent=2))  # JSON is YAML
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "--dev", "--config", str(path)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"livekit-server exited with {self._proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise RuntimeError(f"livekit-server did not listen on {self.port} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        _stop(self._proc, signal.SIGTERM, group=False)

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log, lines)

    def api(self) -> api.LiveKitAPI:
        return api.LiveKitAPI(self.http_url, API_KEY, API_SECRET)


# -- the webhook tap ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Webhook:
    """One webhook as the server sent it, when it arrived, and what the collector answered."""

    event: Any  # livekit.protocol.webhook.WebhookEvent
    arrived_ms: int
    answer: int | None  # the collector's HTTP status; None: held back

    @property
    def name(self) -> str:
        return str(self.event.event)

    @property
    def identity(self) -> str:
        return str(self.event.participant.identity)

    @property
    def created_ms(self) -> int:
        """The server's time of the event: whole seconds (WebhookEvent.created_at)."""
        return int(self.event.created_at) * 1000

    @property
    def disconnect_reason(self) -> str:
        return models.DisconnectReason.Name(self.event.participant.disconnect_reason)


class WebhookTap:
    """Receives the server's webhooks, keeps a copy, forwards each unchanged to the collector."""

    MAX_BODY = 1 << 20

    def __init__(self, target: str) -> None:
        self.target = target  # the collector's webhook URL
        self.port = free_port()
        self._receiver = api.WebhookReceiver(api.TokenVerifier(API_KEY, API_SECRET))
        self._lock = threading.Lock()
        self._seen: list[Webhook] = []
        self._held_rooms: set[str] = set()
        self._held: list[tuple[bytes, dict[str, str]]] = []
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application(client_max_size=self.MAX_BODY)
        app.router.add_post("/webhook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    def hold(self, room: str) -> None:
        """Answer the server for ``room`` but keep its webhooks from the collector until ``release``."""
        with self._lock:
            self._held_rooms.add(room)

    async def release(self, room: str) -> list[int]:
        """Deliver the webhooks held for ``room`` now, in order; the collector's answers."""
        with self._lock:
            self._held_rooms.discard(room)
            held = [(body, headers) for body, headers in self._held if _room_of(body) == room]
            self._held = [item for item in self._held if _room_of(item[0]) != room]
        return [await self._forward(body, headers) for body, headers in held]

    def seen(self, room: str) -> list[Webhook]:
        with self._lock:
            return [w for w in self._seen if w.event.room.name == room]

    def find(self, room: str, name: str, identity: str | None = None) -> Webhook | None:
        for hook in self.seen(room):
            if hook.name == name and (identity is None or hook.identity == identity):
                return hook
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        arrived = now_ms()
        headers = {"Authorization": request.headers.get("Authorization", "")}
        if "Content-Type" in request.headers:
            headers["Content-Type"] = request.headers["Content-Type"]
        event = self._receiver.receive(body.decode(), headers["Authorization"])  # the server signed it
        with self._lock:
            held = event.room.name in self._held_rooms
            if held:
                self._held.append((body, headers))
        answer = None if held else await self._forward(body, headers)
        with self._lock:
            self._seen.append(Webhook(event, arrived, answer))
        return web.Response(status=200 if answer is None else answer)

    async def _forward(self, body: bytes, headers: dict[str, str]) -> int:
        assert self._http is not None
        async with self._http.post(self.target, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status


def _room_of(body: bytes) -> str:
    return str(json.loads(body).get("room", {}).get("name", ""))


# -- the agent worker -------------------------------------------------------------------------------------


class AgentWorker:
    """``python -m livekit.agents start tests/harness/e2e_agent.py``: registers with the server, ships
    its records to the collector through the durable outbox (LIVEKIT_METERING_URL)."""

    def __init__(self, workdir: Path, ws_url: str, collector_url: str) -> None:
        self.workdir = workdir
        self.ws_url = ws_url
        self.collector_url = collector_url
        self.outbox = workdir / "outbox.sqlite3"
        self.log = workdir / "worker.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_from = 0

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 120.0) -> None:
        env = {
            **os.environ,
            "LIVEKIT_URL": self.ws_url,
            "LIVEKIT_API_KEY": API_KEY,
            "LIVEKIT_API_SECRET": API_SECRET,
            "LIVEKIT_METERING_URL": self.collector_url,
            "LIVEKIT_METERING_OUTBOX": str(self.outbox),
            "LIVEKIT_METERING_CHECKPOINT_INTERVAL": str(CHECKPOINT_INTERVAL),
            "LIVEKIT_METERING_PREVIEW": "0",
            # The worker imports the agent as harness.e2e_agent; its job processes unpickle it from there.
            "PYTHONPATH": os.pathsep.join(p for p in (str(AGENT_MODULE.parents[1]), os.environ.get("PYTHONPATH")) if p),
        }
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            # A session of its own: a SIGKILL of the group takes the job processes with the worker.
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "livekit.agents", "start", str(AGENT_MODULE), "--log-format", "json"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the agent worker exited with {self._proc.returncode}:\n{self.log_tail()}")
            if any(line.get("message") == "registered worker" for line in self.log_lines()):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the agent worker did not register within {timeout:.0f} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the worker and its job processes at once: nothing of theirs runs after this."""
        assert self._proc is not None
        os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()

    def stop(self) -> None:
        _stop(self._proc, signal.SIGTERM, group=True)

    def log_lines(self) -> Iterator[dict[str, Any]]:
        """The worker's JSON log lines since it (re)started."""
        if not self.log.exists():
            return
        with self.log.open("rb") as f:
            f.seek(self._log_from)
            for raw in f:
                with contextlib.suppress(ValueError):
                    yield json.loads(raw)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log, lines)


# -- the collector and the loop it shares with the tap ---------------------------------------------------------


class Stack:
    """The server, the tap, the collector and the worker of one test module.

    The tap and the collector run on an event loop in a thread of their own, so they outlive each
    test's loop; tests talk to the collector over HTTP like any client.
    """

    def __init__(self, binary: str, workdir: Path, *, close_stale_after: timedelta) -> None:
        self.binary = binary
        self.workdir = workdir
        self.close_stale_after = close_stale_after
        self.version = server_version(binary)
        self.collector_url = ""
        self.tap: WebhookTap
        self.server: LiveKitServer
        self.worker: AgentWorker
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="e2e-stack", daemon=True)
        self._exit = contextlib.AsyncExitStack()

    def start(self) -> Stack:
        self._thread.start()
        self.collector_url = self.call(self._start_services())
        self.server = LiveKitServer(self.binary, self.workdir, self.tap.url)
        self.server.start()
        self.worker = AgentWorker(self.workdir, self.server.ws_url, self.collector_url)
        self.worker.start()
        return self

    def ensure_worker(self) -> AgentWorker:
        if not self.worker.alive:
            self.worker.start()
        return self.worker

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.worker.stop()
        with contextlib.suppress(Exception):
            self.server.stop()
        with contextlib.suppress(Exception):
            self.call(self._exit.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start_services(self) -> str:
        url = await self._exit.enter_async_context(
            run_collector(
                f"sqlite:///{self.workdir}/collector.db",
                keys={API_KEY: (API_SECRET, "default")},
                close_stale_after=self.close_stale_after,
                sweep_every=timedelta(seconds=0.5),
            )
        )
        self.tap = WebhookTap(f"{url}/v1/livekit/webhook")
        await self.tap.start()
        self._exit.push_async_callback(self.tap.stop)
        return url

    async def release(self, room: str) -> list[int]:
        """``tap.release`` on the stack's loop, awaited from a test's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.tap.release(room), self._loop))


# -- talking to the collector ----------------------------------------------------------------------------------


class CollectorClient:
    """Signed reads of the collector's query API."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def get(self, path: str, **params: str) -> Any:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            headers = {"Authorization": sign(key=API_KEY, secret=API_SECRET)}
            async with http.get(self.url + path, params=params, headers=headers) as resp:
                assert resp.status == 200, f"{path}: {resp.status} {await resp.text()}"
                return await resp.json()

    async def session(self, room: str) -> dict[str, Any] | None:
        """The agent's session in ``room`` (one job per room here); the room's own usage from webhooks
        (``room:<sid>``, the caller's connection) is not a session of an agent."""
        sessions = [s for s in (await self.get("/v1/sessions", room=room))["sessions"] if s["agent_name"]]
        assert len(sessions) <= 1, f"one agent session per room, got {sessions}"
        return sessions[0] if sessions else None

    async def room_records(self, room: str) -> list[MeterRecord]:
        """Every record of ``room``: its agent's session and the usage its webhooks reported."""
        sessions = (await self.get("/v1/sessions", room=room))["sessions"]
        return [r for session in sessions for r in await self.records(session["session_id"])]

    async def records(self, session_id: str) -> list[MeterRecord]:
        data = await self.get(f"/v1/sessions/{session_id}/records")
        return [MeterRecord.from_json({k: v for k, v in r.items() if k != "cost"}) for r in data["records"]]

    async def usage(self, group_by: str) -> dict[tuple[str, str], Decimal]:
        """Billed quantity per (group key, resource) since yesterday: ``room`` sums the stored records,
        the other groupings read the roll-ups that invoices are made of."""
        since = (datetime.now(timezone.utc) - timedelta(days=1)).date().isoformat()
        data = await self.get("/v1/usage", group_by=group_by, since=since)
        usage: dict[tuple[str, str], Decimal] = {}
        for row in data["rows"]:
            key = (row["key"], row["resource"])
            usage[key] = usage.get(key, Decimal(0)) + Decimal(row["quantity"])
        return {key: quantity for key, quantity in usage.items() if quantity}

    async def all_records(self) -> list[MeterRecord]:
        """Every record of every session the collector holds."""
        sessions = (await self.get("/v1/sessions", limit="1000"))["sessions"]
        return [r for session in sessions for r in await self.records(session["session_id"])]


# -- the caller -------------------------------------------------------------------------------------------


@dataclass
class Caller:
    """A participant made with the ``livekit`` SDK: joins, publishes a 440 Hz tone in real time, reads
    the agent's transcriptions (the ``lk.transcription`` text streams), leaves."""

    ws_url: str
    room_name: str
    identity: str = "caller"
    room: rtc.Room = field(default_factory=rtc.Room)
    heard: list[tuple[str, str]] = field(default_factory=list)  # (identity, final text)
    left_ms: int | None = None
    _pump: asyncio.Task[None] | None = None
    _readers: set[asyncio.Task[None]] = field(default_factory=set)

    async def join(self) -> None:
        token = (
            api.AccessToken(API_KEY, API_SECRET)
            .with_identity(self.identity)
            .with_grants(api.VideoGrants(room_join=True, room=self.room_name))
            .to_jwt()
        )
        self.room.register_text_stream_handler("lk.transcription", self._on_transcription)
        await self.room.connect(self.ws_url, token)
        source = rtc.AudioSource(48_000, 1)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        self._pump = asyncio.create_task(self._speak(source))

    async def leave(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        await self.room.disconnect()
        self.left_ms = now_ms()

    def agent_said(self) -> list[str]:
        return [text for who, text in self.heard if who.startswith("agent-")]

    async def _speak(self, source: rtc.AudioSource) -> None:
        rate, n = 48_000, 960  # 20 ms frames
        phase = 0
        next_at = time.monotonic()
        while True:
            t = np.arange(phase, phase + n)
            samples = (np.sin(2 * np.pi * 440 * t / rate) * 6000).astype(np.int16)
            await source.capture_frame(rtc.AudioFrame(samples.tobytes(), rate, 1, n))
            phase += n
            next_at += n / rate
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def _on_transcription(self, reader: rtc.TextStreamReader, identity: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            if reader.info.attributes.get("lk.transcription_final") == "true":
                self.heard.append((identity, text))

        task = asyncio.ensure_future(read())
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)


# -- one session, ended one way ------------------------------------------------------------------------------

Script = list[tuple[str, str]]  # (what the caller says, what the scripted LLM answers)

# How a session ends, and who writes its final session-time record (None: the agent itself).
ENDS: dict[str, str | None] = {
    "shutdown": None,  # the agent calls ctx.shutdown() after the conversation
    "deleted": None,  # RoomService.DeleteRoom
    "left": None,  # the caller leaves; the server closes the room DEPARTURE_TIMEOUT later
    "killed": "webhook:participant_left",  # the worker and its job processes SIGKILLed; the caller leaves
    "stale": "stale-checkpoint",  # the job process SIGKILLed, the room's webhooks held back; the caller leaves
}


@dataclass
class SessionRun:
    """One session against the real server: what the collector stored and what the server reported."""

    end: str
    room: str
    room_sid: str
    records: list[MeterRecord]
    webhooks: list[Webhook]
    caller: Caller
    room_records: list[MeterRecord]  # the agent's session's records and the room's usage from webhooks
    marks: dict[str, int] = field(default_factory=dict)  # ms: "deleted", "killed"
    checkpoint: MeterRecord | None = None  # the collector's last checkpoint before a kill

    @property
    def session(self) -> MeterRecord:
        return session_time(self.records)

    def connection(self, identity: str) -> MeterRecord:
        """The participant's WebRTC ``connection`` usage, under the one id both sides give it."""
        sid = self.webhook("participant_joined", identity).event.participant.sid
        rid = participant_usage_id(self.room_sid, sid, Resource.CONNECTION)
        (found,) = [r for r in self.room_records if r.id == rid]
        return found

    @property
    def agent(self) -> str:
        return f"agent-{self.session.session_id}"

    def webhook(self, name: str, identity: str | None = None) -> Webhook:
        found = [w for w in self.webhooks if w.name == name and (identity is None or w.identity == identity)]
        assert len(found) == 1, (name, identity, [(w.name, w.identity) for w in self.webhooks])
        return found[0]

    def presence_ms(self, identity: str) -> tuple[int, int]:
        """(joined, left) of a participant as the server reported them: ParticipantInfo.joined_at_ms,
        and the participant_left event's time (WebhookEvent.created_at, whole seconds)."""
        joined = self.webhook("participant_joined", identity).event.participant.joined_at_ms
        return int(joined), self.webhook("participant_left", identity).created_ms


async def run_session(stack: Stack, end: str, script: Script, *, workdir: Path, hold: float = 0.0) -> SessionRun:
    """Create a room dispatching the metered agent, join it as the caller, let the agent answer every
    line, wait ``hold`` seconds, end the session the ``end`` way, and wait for the collector's final
    record of it."""
    assert end in ENDS, end
    collector = CollectorClient(stack.collector_url)
    room = unique_room(end)
    pid_file = workdir / f"{room}.pid"
    if end == "stale":
        stack.tap.hold(room)
    metadata = {
        "script": script,
        "end": "shutdown" if end == "shutdown" else "stay",
        "hold": hold,
        "pid_file": str(pid_file),
    }
    created = await create_room(stack.server, room, json.dumps(metadata))
    caller = Caller(stack.server.ws_url, room)
    marks: dict[str, int] = {}
    checkpoint = None
    await caller.join()
    try:
        replies = [reply for _, reply in script]
        await until(lambda: caller.agent_said() == replies, f"the agent's replies {replies}, heard by the caller")
        if end != "shutdown":
            await asyncio.sleep(hold)
        if end == "shutdown":
            await until(lambda: _agent_left(stack, room), "the agent leaving the room")
        elif end == "deleted":
            marks["deleted"] = now_ms()
            await delete_room(stack.server, room)
            await until(lambda: stack.tap.find(room, "room_finished"), "room_finished")
        elif end in ("killed", "stale"):
            checkpoint = await _checkpoint_stored(collector, room)
            if end == "killed":
                stack.worker.kill()
            else:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            marks["killed"] = now_ms()
    finally:
        await caller.leave()
    # The collector has answered the room's last webhook (or, held back, the tap has it).
    await until(lambda: stack.tap.find(room, "room_finished"), "room_finished")
    timeout = 60.0 + (stack.close_stale_after.total_seconds() if end == "stale" else 0)
    records = await _final_records(collector, room, ENDS[end], timeout)
    room_records = await collector.room_records(room)
    return SessionRun(end, room, created.sid, records, stack.tap.seen(room), caller, room_records, marks, checkpoint)


def only(records: list[MeterRecord], resource: Resource) -> MeterRecord:
    found = [r for r in records if r.resource is resource]
    assert len(found) == 1, found
    return found[0]


def session_time(records: list[MeterRecord]) -> MeterRecord:
    """The job's record of the agent's own time: its ``agent_session`` when it wrote one, else the
    ``connection`` marked ``meta.session_time`` (a self-hosted agent's time, from it or from webhooks)."""
    own = [r for r in records if r.resource is Resource.AGENT_SESSION]
    found = own or [r for r in records if r.meta.get("session_time") is True]
    assert len(found) == 1, found
    return found[0]


def _agent_left(stack: Stack, room: str) -> Webhook | None:
    for hook in stack.tap.seen(room):
        if hook.name == "participant_left" and hook.event.participant.kind == models.ParticipantInfo.Kind.AGENT:
            return hook
    return None


async def _checkpoint_stored(collector: CollectorClient, room: str) -> MeterRecord:
    """A periodic checkpoint of the room's session (not the zero-length one at connect), once stored
    together with one of its STT stream's (a kill before that would leave the stream unrecorded)."""

    async def stored() -> MeterRecord | None:
        session = await collector.session(room)
        if session is None:
            return None
        records = await collector.records(session["session_id"])
        found = session_time(records)
        stt = any(r.resource is Resource.STT and r.raw > 0 for r in records)
        return found if found.status is Status.CHECKPOINT and found.raw > 0 and stt else None

    return await until(stored, f"a checkpoint of the session in {room}")


async def _final_records(
    collector: CollectorClient, room: str, closed_by: str | None, timeout: float
) -> list[MeterRecord]:
    """The session's records once its session-time record is final and closed by ``closed_by`` (None:
    the agent's own final record). A webhook may close a session before the agent's final record
    arrives (the agent leaves the room before its job has shipped it); the agent's figure then wins."""

    async def final() -> list[MeterRecord] | None:
        session = await collector.session(room)
        if session is None or session["state"] != "closed":
            return None
        records = await collector.records(session["session_id"])
        s = session_time(records)
        return records if s.is_final and s.meta.get("closed_by") == closed_by else None

    return await until(final, f"the agent session in {room} closed by {closed_by or 'the agent'}", timeout)


def unique_room(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_room(server: LiveKitServer, room: str, metadata: str) -> Any:
    """Create ``room`` with an explicit dispatch of the metered agent (RoomService.CreateRoom)."""
    lk = server.api()
    try:
        request = api.CreateRoomRequest(
            name=room, agents=[api.RoomAgentDispatch(agent_name=AGENT_NAME, metadata=metadata)]
        )
        return await lk.room.create_room(request)
    finally:
        await lk.aclose()


async def delete_room(server: LiveKitServer, room: str) -> None:
    lk = server.api()
    try:
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
    finally:
        await lk.aclose()


def _stop(proc: subprocess.Popen[bytes] | None, sig: signal.Signals, *, group: bool, timeout: float = 20.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        proc.wait()


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
