"""Meter every model of an AgentSession at once."""

from __future__ import annotations

from typing import Any

from livekit.agents import inference, llm, stt, tts

from ..meter import Meter
from .instrument import instrument
from .stt import DEFAULT_CHECKPOINT_INTERVAL

__all__ = ["meter_session_models", "metered_models"]


def metered_models(
    *,
    stt: stt.STT[Any] | str | None = None,
    llm: llm.LLM[Any] | llm.RealtimeModel | llm.DuplexModel | str | None = None,
    tts: tts.TTS[Any] | str | None = None,
    meter: Meter | None = None,
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
) -> dict[str, Any]:
    """The given models, metered in place, as keyword arguments for ``AgentSession``.

    ``AgentSession(**metered_models(stt="deepgram/nova-3:multi", llm=my_llm, tts=my_tts), vad=...)``.
    Model strings are LiveKit Inference models, built the way ``AgentSession`` builds them
    (``llm="openai/gpt-realtime"`` is a realtime model, ``"openai/gpt-live-1"`` a duplex one).
    Models left out are left out of the result, so the session's defaults still apply.
    """
    options: dict[str, Any] = {"meter": meter, "checkpoint_interval": checkpoint_interval}
    models: dict[str, Any] = {}
    if stt is not None:
        models["stt"] = instrument(inference.STT.from_model_string(stt) if isinstance(stt, str) else stt, **options)
    if llm is not None:
        models["llm"] = instrument(inference.llm_from_model_string(llm) if isinstance(llm, str) else llm, **options)
    if tts is not None:
        models["tts"] = instrument(inference.TTS.from_model_string(tts) if isinstance(tts, str) else tts, **options)
    return models


def meter_session_models(
    session: Any,
    *,
    meter: Meter | None = None,
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
) -> Any:
    """Meter the STT, LLM (or realtime model) and TTS of an ``AgentSession`` in place, before
    ``session.start()``; they stay the session's own objects. Returns the session.

    Models given to an ``Agent`` rather than to the session are not touched: meter those with
    ``metered_models`` or the Metered functions.
    """
    if getattr(session, "_started", False):
        raise RuntimeError(
            "meter_session_models(session) must be called before session.start(): the models' "
            "streams and realtime session are open already, and would go unmetered"
        )
    for model in (session._stt, session._llm, session._tts):
        if model is not None:
            instrument(model, meter=meter, checkpoint_interval=checkpoint_interval)
    return session
