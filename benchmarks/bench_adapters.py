"""Overhead of metering a model in place: a metered against a bare model of the same class, in one run.

    .venv/bin/python benchmarks/bench_adapters.py [--items 10000] [--rounds 41]

Each round streams ``--items`` LLM chunks, STT frames and TTS text pushes through a scripted
provider (tests/fakes.py), once bare and once metered, alternating (ABBA) so drift hits both
alike. Times are the CPU time of this process (the runs are CPU-bound, and on a shared machine CPU
time is not inflated by other processes taking the core). The report gives the median of each, the
median of the per-round ratios (metered / bare; the target is at most 1.02) and the CPU time added
per item. The scripted providers do almost no work per item (about 2 µs per STT frame), so the
ratio is an upper bound: a real provider (resampling, encoding, network) spends far more per item.
The "STT (Inference)" row puts a provider in that does the per-frame work of LiveKit Inference's
own STT stream (50 ms chunking, base64, one JSON message per chunk), without the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fakes import FakeLLM, FakeSTT, FakeTTS, MemoryExporter, silence
from livekit import rtc
from livekit.agents import llm, stt, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS

from livekit_metering.adapters import MeteredLLM, MeteredSTT, MeteredTTS
from livekit_metering.meter import Meter


class InferenceLikeSTT(FakeSTT):
    """A streaming STT doing the per-frame work of LiveKit Inference's STT stream (inference/stt.py
    send_task): 50 ms chunking, base64 and a JSON message per chunk, minus the socket."""

    def stream(self, **_: Any) -> stt.RecognizeStream:
        return _InferenceLikeStream(stt=self, conn_options=DEFAULT_API_CONNECT_OPTIONS)


class _InferenceLikeStream(stt.RecognizeStream):
    async def _run(self) -> None:
        chunker = utils.audio.AudioByteStream(sample_rate=16000, num_channels=1, samples_per_channel=800)
        sent: list[str] = []
        async for data in self._input_ch:
            chunks = chunker.push(data.data) if isinstance(data, rtc.AudioFrame) else chunker.flush()
            for chunk in chunks:
                audio = base64.b64encode(chunk.data.tobytes()).decode("utf-8")
                sent.append(json.dumps({"type": "input_audio", "audio": audio}))


async def llm_run(model: llm.LLM[Any], items: int) -> None:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="benchmark")
    count = 0
    async with model.chat(chat_ctx=ctx) as stream:
        async for _ in stream:
            count += 1
    assert count == items + 1  # the chunks and the usage chunk


async def stt_run(model: stt.STT[Any], frames: list[Any]) -> None:
    stream = model.stream()
    for frame in frames:
        stream.push_frame(frame)
    stream.end_input()
    async for _ in stream:
        pass
    await stream.aclose()


async def tts_run(model: tts.TTS[Any], items: int) -> None:
    stream = model.stream()
    for _ in range(items):
        stream.push_text("a ")
    stream.end_input()
    async for _ in stream:
        pass
    await stream.aclose()


async def timed(run: Callable[[], Awaitable[None]]) -> float:
    gc.collect()
    gc.disable()  # a collection landing in one run and not the other is noise, not overhead
    try:
        start = time.process_time()
        await run()
        return time.process_time() - start
    finally:
        gc.enable()


async def compare(
    name: str, bare: Callable[[], Awaitable[None]], wrapped: Callable[[], Awaitable[None]], rounds: int
) -> tuple[str, float, float, float]:
    """Median of each, and the median of the per-round ratios."""
    await bare()  # warm up both paths
    await wrapped()
    bare_times: list[float] = []
    wrapped_times: list[float] = []
    for i in range(rounds):
        if i % 2 == 0:
            bare_times.append(await timed(bare))
            wrapped_times.append(await timed(wrapped))
        else:
            wrapped_times.append(await timed(wrapped))
            bare_times.append(await timed(bare))
    median_ratio = statistics.median(w / b for w, b in zip(wrapped_times, bare_times, strict=True))
    return name, statistics.median(bare_times), statistics.median(wrapped_times), median_ratio


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args()
    items, rounds = args.items, args.rounds

    meter = Meter(exporter=MemoryExporter(), keep_records=False)
    reply = " ".join(["w"] * items)
    bare_llm, bare_stt = FakeLLM(reply=reply), FakeSTT(report_usage=False)
    bare_tts = FakeTTS(streaming=True, seconds_per_char=0.0001)
    metered_llm = MeteredLLM(FakeLLM(reply=reply), meter=meter)
    metered_stt = MeteredSTT(FakeSTT(report_usage=False), meter=meter)
    metered_tts = MeteredTTS(FakeTTS(streaming=True, seconds_per_char=0.0001), meter=meter)
    bare_inference_stt = InferenceLikeSTT(report_usage=False)
    metered_inference_stt = MeteredSTT(InferenceLikeSTT(report_usage=False), meter=meter)
    frames = silence(items * 0.02)

    results = [
        await compare(
            f"LLM {items:,} chunks", lambda: llm_run(bare_llm, items), lambda: llm_run(metered_llm, items), rounds
        ),
        await compare(
            f"STT {items:,} frames", lambda: stt_run(bare_stt, frames), lambda: stt_run(metered_stt, frames), rounds
        ),
        await compare(
            f"STT {items:,} (Inference)",
            lambda: stt_run(bare_inference_stt, frames),
            lambda: stt_run(metered_inference_stt, frames),
            rounds,
        ),
        await compare(
            f"TTS {items:,} pushes", lambda: tts_run(bare_tts, items), lambda: tts_run(metered_tts, items), rounds
        ),
    ]
    cores = os.cpu_count()
    print(f"Python {platform.python_version()}, {platform.machine()}, {cores} cores, {rounds} rounds")
    print(f"{'stream':<24}{'bare ms':>9}{'metered ms':>12}{'median ratio':>14}{'µs/item':>9}")
    for name, bare, wrapped, median_ratio in results:
        per_item = (wrapped - bare) / items * 1e6
        print(f"{name:<24}{bare * 1e3:>9.1f}{wrapped * 1e3:>12.1f}{median_ratio:>14.3f}{per_item:>9.2f}")
    print("ms: median CPU time of each; median ratio: of metered / bare per round; µs/item: CPU time added per item")


if __name__ == "__main__":
    asyncio.run(main())
