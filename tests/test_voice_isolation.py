"""Voice isolation: minutes of agent input audio through enhanced noise cancellation (Krisp BVC / BVC
Telephony, ai-coustics Voice Focus); plain noise cancellation is not metered.

The job-runner test runs livekit-agents' real ``_JobProc`` (console path, mock room) with a real
AgentSession whose RoomIO takes its noise cancellation from ``RoomOptions``, as an agent does.
What cannot run here is the native audio stream (it needs a live track in the Rust SDK): the stand-in
for ``rtc.AudioStream.from_track`` keeps the filter it is given as the real constructor does
(``_audio_filter_options`` / ``_processor``), and yields no frames until it is closed.
"""

from __future__ import annotations

import asyncio
import enum
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from harness.jobproc import JOB_ID, ManualClock, run_job
from livekit import rtc
from livekit.agents import Agent, AgentSession, JobContext, room_io

from livekit_metering.entrypoint import metered
from livekit_metering.export import read_records
from livekit_metering.records import MeterRecord, Resource, Status
from livekit_metering.scripted import ScriptedLLM
from livekit_metering.voice_isolation import isolation_model

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=timezone.utc)
PLUGIN_DIR = "/site-packages/livekit/plugins/noise_cancellation/resources/"
# what livekit-plugins-noise-cancellation 0.3.2's NC(), BVC() and BVCTelephony() give (their model files)
NC = rtc.NoiseCancellationOptions("140230", {"modelPath": PLUGIN_DIR + "c8.f.s.026300-1.0.0_3.1.kef"})
BVC = rtc.NoiseCancellationOptions("140230", {"modelPath": PLUGIN_DIR + "hs.c6.f.m.75df8f.kef"})
BVC_TELEPHONY = rtc.NoiseCancellationOptions("140230", {"modelPath": PLUGIN_DIR + "inb.bvc.hs.c6.w.s.23cdb3.kef"})


class EnhancerModel(enum.Enum):  # livekit-plugins-ai-coustics' models
    QUAIL_L = 0
    QUAIL_VF_L = 1


class Enhancer(rtc.FrameProcessor[rtc.AudioFrame]):
    """Shaped like ai-coustics' AICousticsAudioEnhancer: a frame processor that keeps its model."""

    def __init__(self, model: EnhancerModel) -> None:
        self._model = model

    @property
    def enabled(self) -> bool:
        return True

    @enabled.setter
    def enabled(self, value: bool) -> None:
        pass

    def _process(self, frame: rtc.AudioFrame) -> rtc.AudioFrame:
        return frame

    def _close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("options", "processor", "expected"),
    [
        (BVC.options, None, "krisp/bvc"),
        (BVC_TELEPHONY.options, None, "krisp/bvc-telephony"),
        (NC.options, None, None),  # plain noise cancellation: in every plan, not metered
        (None, Enhancer(EnhancerModel.QUAIL_VF_L), "ai-coustics/quail_vf_l"),  # Voice Focus
        (None, Enhancer(EnhancerModel.QUAIL_L), None),  # background noise suppression: included
        (None, None, None),
    ],
)
def test_which_noise_filters_isolate_voices(options: Any, processor: Any, expected: str | None) -> None:
    assert isolation_model(options, processor) == expected


def test_the_plugins_own_model_paths_are_used_when_it_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = type(sys)("livekit.plugins.noise_cancellation.plugin")
    plugin.model_path = lambda name: {"bvc": "/x/bvc-v9.kef", "bvct": "/x/bvct-v9.kef", "nc": "/x/nc-v9.kef"}[name]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "livekit.plugins.noise_cancellation.plugin", plugin)
    assert isolation_model({"modelPath": "/x/bvct-v9.kef"}) == "krisp/bvc-telephony"
    assert isolation_model({"modelPath": "/x/nc-v9.kef"}) is None


class StreamStandIn:
    """What ``rtc.AudioStream(...)`` keeps of its noise filter; an audio stream with no frames until closed."""

    def __init__(self, noise_cancellation: Any = None, **_: Any) -> None:
        self._audio_filter_options = None
        self._processor = None
        if isinstance(noise_cancellation, rtc.NoiseCancellationOptions):
            self._audio_filter_options = noise_cancellation.options
        elif isinstance(noise_cancellation, rtc.FrameProcessor):
            self._processor = noise_cancellation
        self._closed = asyncio.Event()

    def __aiter__(self) -> StreamStandIn:
        return self

    async def __anext__(self) -> Any:
        await self._closed.wait()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._closed.set()


class Track:
    def __init__(self, sid: str) -> None:
        self.sid = sid


class Publication:
    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.source = rtc.TrackSource.SOURCE_MICROPHONE
        self.audio_features: list[int] = []
        self.track = Track(sid)


class Caller:
    identity = "caller"
    kind = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD

    def __init__(self) -> None:
        self.track_publications: dict[str, Publication] = {}


def isolation_records(out: Path) -> list[MeterRecord]:
    return [r for r in read_records(out) if r.resource is Resource.VOICE_ISOLATION]


async def _session_with(noise_cancellation: Any, tmp_path: Path, *, connect_first: bool = False) -> list[MeterRecord]:
    """A session whose RoomIO applies ``noise_cancellation``: the caller's microphone for 95 s, a
    second track (a reconnect) for 20 s, still open when the session ends 10 s later."""
    clock, out = ManualClock(), tmp_path / "r.jsonl"

    async def entry(ctx: JobContext) -> None:
        clock.advance(1)
        if connect_first:  # else AgentSession.start() connects for the entrypoint
            await ctx.connect()
        session: AgentSession[None] = AgentSession(llm=ScriptedLLM(["Hi!"]))
        options = room_io.RoomOptions(audio_input=room_io.AudioInputOptions(noise_cancellation=noise_cancellation))
        await session.start(Agent(instructions="be brief"), room=ctx.room, room_options=options)
        await asyncio.sleep(0)
        audio_input = session._room_io._audio_input  # type: ignore[union-attr]
        caller = Caller()
        first, second = Publication("TR_mic"), Publication("TR_mic2")
        audio_input.set_participant(caller.identity)
        clock.advance(4)
        audio_input._on_track_available(first.track, first, caller)  # the room's track_subscribed
        clock.advance(95)
        audio_input._on_track_unsubscribed(first.track, first, caller)
        clock.advance(3)
        audio_input._on_track_available(second.track, second, caller)
        clock.advance(20)
        ctx.shutdown("call over")
        clock.advance(10)  # after the session's end: not metered
        await session.aclose()

    with mock.patch.object(rtc.AudioStream, "from_track", side_effect=lambda **kw: StreamStandIn(**kw)):
        await run_job(metered(entry, file=out, clock=clock), fake_job=True)
    return isolation_records(out)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.mark.parametrize("connect_first", [False, True])
async def test_each_stream_through_bvc_is_one_usage_rounded_up_to_minutes(tmp_path: Path, connect_first: bool) -> None:
    records = await _session_with(BVC, tmp_path, connect_first=connect_first)
    first, second = sorted(records, key=lambda r: r.start)
    assert (first.start, first.end, first.raw, first.quantity) == (at(5), at(100), 95_000, Decimal(2))
    assert (second.start, second.end, second.raw, second.quantity) == (at(103), at(123), 20_000, Decimal(1))
    assert first.status is second.status is Status.OK
    assert first.meta["model"] == "krisp/bvc" and "clipped" not in first.meta
    assert second.meta["clipped"] == "end"  # still open when the session ended
    assert (first.id, second.id) == (
        f"{JOB_ID}/voice-isolation-1/voice_isolation",
        f"{JOB_ID}/voice-isolation-2/voice_isolation",
    )


async def test_a_selector_choosing_bvc_telephony_per_track_is_metered(tmp_path: Path) -> None:
    records = await _session_with(lambda params: BVC_TELEPHONY, tmp_path)
    assert [r.meta["model"] for r in records] == ["krisp/bvc-telephony"] * 2


async def test_plain_noise_cancellation_is_not_metered(tmp_path: Path) -> None:
    assert await _session_with(NC, tmp_path) == []
