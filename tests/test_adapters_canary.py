"""Canary: the private livekit-agents 1.8.9 attributes the in-place metering relies on.

Metering observes the provider's own objects (livekit_metering/adapters/_hooks.py). Where it reads
a private attribute and a livekit-agents release renames it, a request goes unmetered, said once
at ERROR, and the agent is unchanged: this test fails first, naming the attribute to look at.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fake_realtime import FakeDuplexModel, FakeRealtimeModel
from fakes import FakeLLM, FakeSTT, FakeTTS
from livekit import rtc
from livekit.agents import llm, stt, tts
from livekit.agents.utils import aio


def _ctx() -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="hello")
    return ctx


async def test_streams_keep_the_tasks_channels_and_counters_the_hooks_read() -> None:
    recognize = FakeSTT().stream()
    assert isinstance(recognize._metrics_task, asyncio.Task)  # ends after the provider's last usage figure
    assert isinstance(recognize._task, asyncio.Task) and recognize._pushed_sr == 0
    await recognize.aclose()

    chat = FakeLLM().chat(chat_ctx=_ctx())
    assert isinstance(chat._event_ch, aio.Chan) and callable(chat._event_ch.send_nowait)  # every chunk
    assert chat._task is not None and chat.chat_ctx is not None
    await chat.aclose()

    synthesis = FakeTTS().stream()
    assert synthesis._mtc_text == "" and synthesis._task is not None  # the segment's forwarded text
    synthesis.push_text("abc")
    assert synthesis._mtc_text == "abc"
    synthesis.flush()
    assert synthesis._mtc_text == ""  # flush() moves it on
    await synthesis.aclose()

    chunked = FakeTTS(streaming=False).synthesize("abc")
    assert chunked._synthesize_task is not None
    await chunked.aclose()


def test_an_audio_frame_keeps_its_sample_count_in_a_field() -> None:
    frame = rtc.AudioFrame(b"\x00\x00" * 320, 16000, 1, 320)
    assert frame._samples_per_channel == frame.samples_per_channel == 320  # read once per frame pushed


async def test_a_channel_keeps_its_queue() -> None:
    channel: aio.Chan[Any] = aio.Chan()
    channel.send_nowait("queued")
    assert list(channel._queue) == ["queued"]  # a realtime response's items, already sent when it is created


async def test_composites_keep_their_children_where_the_metering_looks() -> None:
    one, two = FakeTTS(), FakeTTS()
    assert tts.FallbackAdapter([one, two])._tts_instances == [one, two]
    assert tts.StreamAdapter(tts=one)._wrapped_tts is one
    s1, s2 = FakeSTT(), FakeSTT()
    assert stt.FallbackAdapter([s1, s2])._stt_instances == [s1, s2]
    assert stt.StreamAdapter(stt=s1, vad=None)._stt is s1  # type: ignore[arg-type]
    l1 = FakeLLM()
    assert llm.FallbackAdapter([l1])._llm_instances == [l1]
    r1 = FakeRealtimeModel([])
    assert llm.RealtimeModelFallbackAdapter([r1])._models == [r1]
    d1 = FakeDuplexModel()
    assert llm.DuplexRealtimeAdapter(d1)._duplex_model is d1
