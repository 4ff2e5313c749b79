"""Metering models in place: STT seconds, LLM tokens, TTS characters, realtime tokens and seconds.

``MeteredSTT(stt)``, ``MeteredLLM(llm)`` (also a realtime or duplex model) and ``MeteredTTS(tts)``
instrument any livekit-agents model (plugins, LiveKit Inference, ``FallbackAdapter``,
``StreamAdapter``) in place and return it: the same object, behaving identically, writing one
meter record per individual usage to the current job's meter (or ``meter=``).
``metered_models`` / ``meter_session_models`` meter every model of a session at once.
"""

from .instrument import MeteredLLM, MeteredSTT, MeteredTTS, instrument, is_metered
from .llm import CHARS_PER_TOKEN
from .session import meter_session_models, metered_models
from .stt import DEFAULT_CHECKPOINT_INTERVAL

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_CHECKPOINT_INTERVAL",
    "MeteredLLM",
    "MeteredSTT",
    "MeteredTTS",
    "instrument",
    "is_metered",
    "meter_session_models",
    "metered_models",
]
