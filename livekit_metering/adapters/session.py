"""Meter every model of an AgentSession at once."""

from __future__ import annotations

from typing import Any

from livekit.agents import inference, llm, stt, tts

from ..meter import Meter
from .llm import MeteredLLM
from .stt import DEFAULT_CHECKPOINT_INTERVAL, MeteredSTT
from .tts import MeteredTTS

__all__ = ["meter_session_models", "metered_models"]


def metered_models(
    *,
    stt: stt.STT[Any] | str | None = None,
    llm: llm.LLM[Any] | str | None = None,
    tts: tts.TTS[Any] | str | None = None,
    meter: Meter | None = None,
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
) -> dict[str, Any]:
    """The given models, metered, as keyword arguments for ``AgentSession``.

    ``AgentSession(**metered_models(stt="deepgram/nova-3:multi", llm=my_llm, tts=my_tts), vad=...)``.
    Model strings are LiveKit Inference models, built the way ``AgentSession`` builds them.
    Models left out are left out of the result, so the session's defaults still apply.
    """
    models: dict[str, Any] = {}
    if stt is not None:
        model = inference.STT.from_model_string(stt) if isinstance(stt, str) else stt
        models["stt"] = _wrap(model, meter=meter, checkpoint_interval=checkpoint_interval)
    if llm is not None:
        models["llm"] = _wrap(inference.llm_from_model_string(llm) if isinstance(llm, str) else llm, meter=meter)
    if tts is not None:
        models["tts"] = _wrap(inference.TTS.from_model_string(tts) if isinstance(tts, str) else tts, meter=meter)
    return models


def meter_session_models(
    session: Any,
    *,
    meter: Meter | None = None,
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
) -> Any:
    """Wrap the STT, LLM and TTS of an ``AgentSession`` in place, before ``session.start()``.

    Models already metered are left as they are; a realtime model is not a ``llm.LLM`` and is
    left unmetered. Models given to an ``Agent`` rather than to the session are not touched: wrap
    those with ``metered_models`` or the Metered classes. Returns the session.
    """
    if getattr(session, "_started", False):
        raise RuntimeError(
            "meter_session_models(session) must be called before session.start(): the running "
            "agent activity has already subscribed to the unmetered models"
        )
    if session._stt is not None:
        session._stt = _wrap(session._stt, meter=meter, checkpoint_interval=checkpoint_interval)
    if isinstance(session._llm, llm.LLM):
        session._llm = _wrap(session._llm, meter=meter)
    if session._tts is not None:
        session._tts = _wrap(session._tts, meter=meter)
    return session


def _wrap(model: Any, **kwargs: Any) -> Any:
    if isinstance(model, (MeteredSTT, MeteredLLM, MeteredTTS)):
        return model
    if isinstance(model, stt.STT):
        return MeteredSTT(model, **kwargs)
    kwargs.pop("checkpoint_interval", None)
    if isinstance(model, llm.LLM):
        return MeteredLLM(model, **kwargs)
    if isinstance(model, tts.TTS):
        return MeteredTTS(model, **kwargs)
    raise TypeError(f"cannot meter {type(model).__name__}: expected a livekit-agents STT, LLM or TTS")
