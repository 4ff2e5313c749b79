"""Metered model wrappers: STT seconds, LLM tokens and TTS characters per individual usage.

``MeteredSTT(stt)``, ``MeteredLLM(llm)`` and ``MeteredTTS(tts)`` wrap any livekit-agents model
(plugins, LiveKit Inference, ``FallbackAdapter``, ``StreamAdapter``) and behave exactly like it,
while writing one meter record per request to the current job's meter (or one passed as
``meter=``). ``metered_models`` / ``meter_session_models`` meter every model of a session at once.
"""

from .llm import CHARS_PER_TOKEN, MeteredLLM, MeteredLLMStream
from .session import meter_session_models, metered_models
from .stt import DEFAULT_CHECKPOINT_INTERVAL, MeteredRecognizeStream, MeteredSTT
from .tts import MeteredSynthesizeStream, MeteredTTS

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_CHECKPOINT_INTERVAL",
    "MeteredLLM",
    "MeteredLLMStream",
    "MeteredRecognizeStream",
    "MeteredSTT",
    "MeteredSynthesizeStream",
    "MeteredTTS",
    "meter_session_models",
    "metered_models",
]
