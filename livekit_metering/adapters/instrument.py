"""Meter a model in place: ``MeteredSTT``, ``MeteredLLM``, ``MeteredTTS`` and ``instrument``.

Each returns the model it is given, instrumented (see ``_hooks``): the same object, class, label,
attributes, methods, stream objects and events, with its usage written to the current job's meter
(or ``meter=``). Instrumenting a model again is a no-op. A composite (``FallbackAdapter``,
``StreamAdapter``, ``RealtimeModelFallbackAdapter``, ``DuplexRealtimeAdapter``) is left as it is
and its children are instrumented, so each request is billed to the child that served it,
recovery probes included. What cannot be instrumented in place raises ``TypeError`` here, never a
change of behaviour later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from livekit.agents import llm, stt, tts

from ..meter import Meter
from . import llm as llm_usage
from . import realtime
from . import stt as stt_usage
from . import tts as tts_usage
from ._hooks import Hooks, Metering, install, is_instrumented
from .stt import DEFAULT_CHECKPOINT_INTERVAL

__all__ = ["MeteredLLM", "MeteredSTT", "MeteredTTS", "instrument", "is_metered"]

M = TypeVar("M")

# leaf model kinds: the base class, its request-method hooks, what else to set up on the model
_KINDS: list[tuple[type, Hooks, Callable[[Any], None] | None]] = [
    (stt.STT, stt_usage.HOOKS, stt_usage.attach),
    (llm.LLM, llm_usage.HOOKS, None),
    (tts.TTS, tts_usage.HOOKS, None),
    (llm.RealtimeModel, realtime.REALTIME_HOOKS, None),
    (llm.DuplexModel, realtime.DUPLEX_HOOKS, None),
]

# composites and where they keep their children (private attributes of livekit-agents 1.8)
_COMPOSITES: list[tuple[type, str, bool]] = [
    (stt.FallbackAdapter, "_stt_instances", True),
    (stt.StreamAdapter, "_stt", False),
    (llm.FallbackAdapter, "_llm_instances", True),
    (tts.FallbackAdapter, "_tts_instances", True),
    (tts.StreamAdapter, "_wrapped_tts", False),
    (llm.RealtimeModelFallbackAdapter, "_models", True),
    (llm.DuplexRealtimeAdapter, "_duplex_model", False),
]


def instrument(model: M, *, meter: Meter | None = None, checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL) -> M:
    """Meter any livekit-agents STT, LLM, TTS, realtime or duplex model in place; return it."""
    if not checkpoint_interval > 0:
        raise ValueError(f"checkpoint_interval must be a positive number of seconds, got {checkpoint_interval!r}")
    children = _children(model)
    if children is not None:
        for child in children:
            instrument(child, meter=meter, checkpoint_interval=checkpoint_interval)
        return model
    if is_instrumented(model):
        return model
    for base, hooks, attach in _KINDS:
        if isinstance(model, base):
            install(model, hooks, Metering(meter, checkpoint_interval))
            if attach is not None:
                attach(model)
            return model
    raise TypeError(
        f"cannot meter {type(model).__name__}: expected a livekit-agents STT, LLM, TTS, RealtimeModel or DuplexModel"
    )


def is_metered(model: object) -> bool:
    """Whether ``model`` is instrumented (a composite: every one of its children)."""
    children = _children(model)
    if children is not None:
        return bool(children) and all(is_metered(child) for child in children)
    return is_instrumented(model)


# CamelCase: the public names of the former wrapper classes, kept
def MeteredSTT(
    stt_: stt.STT[Any], *, meter: Meter | None = None, checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
) -> stt.STT[Any]:
    """Meter an STT in place (seconds per recognition) and return it."""
    _expect(stt_, (stt.STT,), "MeteredSTT", "an stt.STT")
    return instrument(stt_, meter=meter, checkpoint_interval=checkpoint_interval)


def MeteredLLM(llm_: M, *, meter: Meter | None = None, checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL) -> M:
    """Meter an LLM (tokens per request), or a realtime or duplex model (tokens per response by
    modality, session seconds where billed by time), in place, and return it."""
    kinds = (llm.LLM, llm.RealtimeModel, llm.DuplexModel)
    _expect(llm_, kinds, "MeteredLLM", "an llm.LLM, RealtimeModel or DuplexModel")
    return instrument(llm_, meter=meter, checkpoint_interval=checkpoint_interval)


def MeteredTTS(tts_: tts.TTS[Any], *, meter: Meter | None = None) -> tts.TTS[Any]:
    """Meter a TTS in place (characters per request or segment) and return it."""
    _expect(tts_, (tts.TTS,), "MeteredTTS", "a tts.TTS")
    return instrument(tts_, meter=meter)


def _expect(model: object, kinds: tuple[type, ...], name: str, what: str) -> None:
    if not isinstance(model, kinds):
        raise TypeError(f"{name}() meters {what}, not {type(model).__name__}")


def _children(model: object) -> list[Any] | None:
    """The children of a livekit-agents composite, or None for a leaf model."""
    for composite, attr, many in _COMPOSITES:
        if isinstance(model, composite):
            if not hasattr(model, attr):
                raise TypeError(
                    f"cannot meter {type(model).__name__}: it no longer keeps its models in {attr} "
                    "(a livekit-agents release this version of livekit-metering does not know); meter its models"
                )
            value = getattr(model, attr)
            return list(value) if many else [value]
    return None
