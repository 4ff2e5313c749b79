"""Run an entrypoint inside livekit-agents' real job runner (``ipc.job_proc_lazy_main._JobProc``), offline.

Only the boundary is fake: the IPC client to the worker (records what the job sends) and the
LiveKit room (``FakeRoom``: connect/disconnect and the ``disconnected`` event). Everything between,
the JobContext, the shutdown sequence, its reasons, ordering and timeouts, is the production code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from livekit import rtc
from livekit.agents import utils
from livekit.agents.ipc import job_proc_lazy_main as jplm
from livekit.agents.ipc import proto
from livekit.agents.job import JobAcceptArguments, JobExecutorType, JobProcess, RunningJobInfo
from livekit.protocol import agent as agent_pb
from livekit.protocol import models
from livekit.rtc._proto import stats_pb2 as stats_pb

JOB_ID = "AJ_test1"
ROOM = "room-1"
ROOM_SID = "RM_test1"
AGENT = "support-agent"
WORKER = "AW_test"


class ManualClock:
    """A clock the test moves by hand: ``monotonic`` from 1000 s, wall time from 2026-11-27T10:00:00Z."""

    WALL0 = 1795773600.0  # 2026-11-27T10:00:00Z

    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.WALL0 + (self.now - 1000.0)


class FakeParticipant:
    def __init__(
        self,
        identity: str,
        attributes: dict[str, str] | None = None,
        *,
        kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
        joined_at: datetime | None = None,
    ) -> None:
        self.sid = f"PA_{identity}"
        self.identity = identity
        self.attributes = attributes or {}
        self.kind = kind
        self.joined_at = joined_at


class FakeRoom(rtc.EventEmitter[str]):
    """Stands in for ``rtc.Room``: what the job runner and JobContext use of it, and nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self._info = models.Room()  # the runner sets _info.name
        self._connected = False
        self.local_participant = FakeParticipant("agent-" + JOB_ID)
        self.remote_participants: dict[str, FakeParticipant] = {}
        self.connect_error: Exception | None = None
        self.on_connect: Callable[[], None] | None = None
        self.on_disconnect: Callable[[], None] | None = None
        self.bytes_received = 0  # what the subscriber transport's counter says (get_rtc_stats)

    @property
    def name(self) -> str:
        return self._info.name

    def isconnected(self) -> bool:
        return self._connected

    async def connect(self, url: str, token: str, options: Any = None) -> None:
        await asyncio.sleep(0)
        if self.connect_error is not None:
            raise self.connect_error
        if self.on_connect is not None:
            self.on_connect()
        self._connected = True

    async def disconnect(self, *, reason: int = rtc.DisconnectReason.CLIENT_INITIATED) -> None:
        await asyncio.sleep(0)  # like rtc.Room, which waits on the FFI before anything happens
        if self.on_disconnect is not None:
            self.on_disconnect()
        if self._connected:
            self._connected = False
            self.emit("disconnected", reason)

    async def get_rtc_stats(self) -> rtc.RtcStats:
        if not self._connected:
            raise RuntimeError("the room isn't connected")
        await asyncio.sleep(0)  # one FFI round trip in rtc.Room
        transport = stats_pb.RtcStats(
            transport=stats_pb.RtcStats.Transport(transport=stats_pb.TransportStats(bytes_received=self.bytes_received))
        )
        return rtc.RtcStats(publisher_stats=[], subscriber_stats=[transport])

    def joins(self, participant: FakeParticipant) -> None:
        """A remote participant joins (the server's participant_connected)."""
        self.remote_participants[participant.identity] = participant
        self.emit("participant_connected", participant)

    def leaves(self, participant: FakeParticipant) -> None:
        """A remote participant leaves (the server's participant_disconnected)."""
        self.remote_participants.pop(participant.identity, None)
        self.emit("participant_disconnected", participant)

    def server_disconnects(self, reason: int) -> None:
        """The server ends the agent's connection (room deleted, participant removed, ...)."""
        self._connected = False
        self.emit("disconnected", reason)


class FakeWorkerClient:
    """The job process's IPC client: records every message the job sends to the worker."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, msg: Any) -> None:
        self.sent.append(msg)


@dataclass
class JobRun:
    room: FakeRoom | None
    sent: list[Any] = field(default_factory=list)

    @property
    def exit_reason(self) -> str | None:
        exiting = [m for m in self.sent if isinstance(m, proto.Exiting)]
        return exiting[-1].reason if exiting else None


def running_job(*, fake_job: bool = False, metadata: str = "", url: str = "ws://fake") -> RunningJobInfo:
    job = agent_pb.Job(
        id=JOB_ID,
        room=models.Room(sid=ROOM_SID, name=ROOM),
        type=agent_pb.JobType.JT_ROOM,
        agent_name=AGENT,
        metadata=metadata,
    )
    return RunningJobInfo(
        accept_arguments=JobAcceptArguments(name="", identity="agent-" + JOB_ID, metadata=""),
        job=job,
        url=url,
        token="",
        worker_id=WORKER,
        fake_job=fake_job,
    )


Driver = Callable[[FakeRoom | None, "utils.aio.Chan[Any]"], Awaitable[None]]


async def run_job(
    entry: Callable[[Any], Awaitable[Any]],
    *,
    during: Driver | None = None,
    room: FakeRoom | None = None,
    fake_job: bool = False,
    metadata: str = "",
    timeout: float = 20.0,
    url: str = "ws://fake",
) -> JobRun:
    """Run ``entry`` as one job to its end; ``during(room, channel)`` plays the server and the worker."""
    room = None if fake_job else (room or FakeRoom())
    original = jplm.rtc.Room
    if room is not None:
        # _JobProc does `rtc.Room()`, and jplm.rtc *is* livekit.rtc: a process-wide patch while the job runs.
        jplm.rtc.Room = lambda: room  # type: ignore[assignment]
    client = FakeWorkerClient()
    try:
        runner = jplm._JobProc(
            lambda proc: None, entry, None, session_end_timeout=5, executor_type=JobExecutorType.THREAD
        )
        runner._client = client  # type: ignore[assignment]
        runner._inf_client = jplm._InfClient(client)  # type: ignore[arg-type]
        runner._job_proc = JobProcess(executor_type=JobExecutorType.THREAD, user_arguments=None, http_proxy=None)
        channel: utils.aio.Chan[Any] = utils.aio.Chan()
        task = asyncio.create_task(runner.entrypoint(channel))
        start = proto.StartJobRequest()
        start.running_job = running_job(fake_job=fake_job, metadata=metadata, url=url)
        channel.send_nowait(start)
        if during is not None:
            await during(room, channel)
        await asyncio.wait_for(task, timeout)
        return JobRun(room=room, sent=client.sent)
    finally:
        jplm.rtc.Room = original  # type: ignore[misc]


async def until(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Wait (bounded) until ``predicate()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
