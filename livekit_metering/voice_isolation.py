"""Voice isolation: the minutes of agent input audio that go through LiveKit's enhanced noise cancellation.

LiveKit bills Krisp BVC / BVC Telephony (``livekit-plugins-noise-cancellation``) and ai-coustics
Voice Focus (``livekit-plugins-ai-coustics``, the ``QUAIL_VF_*`` models) as voice isolation
minutes; plain noise cancellation (Krisp NC, ai-coustics ``QUAIL_L``) is included in every plan
and not metered.

AgentSession's RoomIO builds one ``rtc.AudioStream`` per subscribed input track, with the
``noise_cancellation`` of ``RoomOptions.audio_input`` (options, a frame processor, or a selector
called per track). One usage is one such stream whose filter isolates voices, from when the stream
is created until it is closed or the session ends. The RoomIO input is watched on its own instance
(its stream creation and closing), never replaced.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from .records import Resource
from .session import IntervalUsage, SessionMeter, SessionUsage

__all__ = ["VoiceIsolation", "isolation_model"]

logger = logging.getLogger("livekit_metering")

# Krisp model files of livekit-plugins-noise-cancellation (plugin.model_path), when the plugin cannot tell us.
_KRISP_FILES = {
    "hs.c6.f.m.75df8f.kef": "krisp/bvc",
    "inb.bvc.hs.c6.w.s.23cdb3.kef": "krisp/bvc-telephony",
}


def isolation_model(filter_options: Mapping[str, Any] | None = None, processor: Any = None) -> str | None:
    """The voice isolation model of an audio stream's noise filter (the options of its
    ``NoiseCancellationOptions``, or its frame processor), or None when it is not one."""
    if filter_options is not None:
        path = str(filter_options.get("modelPath", ""))
        if not path:
            return None
        plugin = sys.modules.get("livekit.plugins.noise_cancellation.plugin")
        model_path = getattr(plugin, "model_path", None)
        if callable(model_path):
            for name, model in (("bvc", "krisp/bvc"), ("bvct", "krisp/bvc-telephony")):
                try:
                    if path == model_path(name):
                        return model
                except Exception:
                    continue
        return _KRISP_FILES.get(os.path.basename(path))
    if processor is not None:
        enhancer = getattr(processor, "_model", None)  # ai-coustics' AICousticsAudioEnhancer keeps its EnhancerModel
        name = str(getattr(enhancer, "name", "") or "")
        if name.upper().startswith("QUAIL_VF"):
            return f"ai-coustics/{name.lower()}"
    return None


class VoiceIsolation(SessionUsage):
    """Watches one RoomIO audio input: each of its streams with a voice isolation filter is one usage."""

    def __init__(self, meter: SessionMeter, *, find_input: Callable[[], Any] | None = None) -> None:
        self.meter = meter
        self.find_input = find_input
        self.streams: list[IntervalUsage] = []
        self._open: IntervalUsage | None = None
        self._watched: Any = None

    def watch(self, audio_input: Any) -> bool:
        """Start watching ``audio_input`` (RoomIO's participant audio input); False when its layout is unknown."""
        if audio_input is None or audio_input is self._watched:
            return False
        create = getattr(audio_input, "_create_stream", None)
        close = getattr(audio_input, "_close_stream", None)
        if not (callable(create) and callable(close)):
            logger.debug("livekit-metering: unknown RoomIO audio input; voice isolation is not metered")
            return False
        self._watched = audio_input

        def create_stream(*args: Any, **kwargs: Any) -> Any:
            stream = create(*args, **kwargs)
            self._opened(stream, audio_input)
            return stream

        def close_stream(*args: Any, **kwargs: Any) -> Any:
            self._closed()
            return close(*args, **kwargs)

        audio_input._create_stream = create_stream
        audio_input._close_stream = close_stream
        current = getattr(audio_input, "_stream", None)
        if current is not None:  # a stream already runs: it is seen from now on
            self._opened(current, audio_input, clipped=True)
        return True

    def _opened(self, stream: Any, audio_input: Any, *, clipped: bool = False) -> None:
        try:
            self._closed()
            if self.meter.ended or not self.meter.started:
                return
            model = isolation_model(
                getattr(stream, "_audio_filter_options", None),
                getattr(stream, "_processor", None) or getattr(audio_input, "_processor", None),
            )
            if model is None:
                return
            usage = IntervalUsage(
                self.meter,
                Resource.VOICE_ISOLATION,
                usage=f"voice-isolation-{len(self.streams) + 1}",
                start=self.meter.clock.monotonic(),
                meta={"model": model},
                clipped_start=clipped,
            )
            self.streams.append(usage)
            self._open = usage
        except Exception:
            logger.exception("livekit-metering: voice isolation hook failed")

    def _closed(self) -> None:
        usage, self._open = self._open, None
        if usage is not None:
            usage.end()

    async def sample(self) -> None:
        # A session started (or restarted) since: watch its input too.
        if self.find_input is not None:
            self.watch(self.find_input())

    def checkpoint(self) -> None:
        for usage in self.streams:
            usage.checkpoint()

    def session_ended(self) -> None:
        for usage in self.streams:
            usage.session_ended()

    def finish(self) -> None:
        for usage in self.streams:
            usage.finish()
