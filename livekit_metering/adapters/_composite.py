"""Meter the models a composite adapter serves from, so usage is billed to the child that served.

livekit-agents' ``FallbackAdapter`` and ``StreamAdapter`` wrap other models. Metering the composite
as a whole would bill every request to whichever model it names at the time; instead the Metered
wrapper replaces each child with a metered child, in place, and re-points the composite's metrics
subscription at it. Recovery probes of a FallbackAdapter are real, billed requests and are
metered too, because they go through the metered child.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from livekit.agents import llm, stt, tts

from ._usage import logger

Wrap = Callable[[Any], Any]


def _swap(owner: Any, children: list[Any], wrap: Wrap) -> None:
    handler = owner._on_metrics_collected
    for i, child in enumerate(children):
        metered = wrap(child)
        if metered is child:
            continue
        child.off("metrics_collected", handler)
        metered.on("metrics_collected", handler)
        children[i] = metered


def _swap_one(owner: Any, attr: str, wrap: Wrap) -> None:
    child = getattr(owner, attr)
    metered = wrap(child)
    if metered is child:
        return
    handler = owner._on_metrics_collected
    child.off("metrics_collected", handler)
    metered.on("metrics_collected", handler)
    setattr(owner, attr, metered)


def adopt_children(model: Any, wrap: Wrap) -> bool:
    """If ``model`` is a composite adapter, meter its children in place and return True.

    ``wrap(child)`` returns the metered child (or the child itself when it is metered already).
    Returns False for a plain model, which the caller meters itself.
    """
    try:
        if isinstance(model, llm.FallbackAdapter):
            _swap(model, model._llm_instances, wrap)
        elif isinstance(model, stt.FallbackAdapter):
            _swap(model, model._stt_instances, wrap)
        elif isinstance(model, stt.StreamAdapter):
            _swap_one(model, "_stt", wrap)
        elif isinstance(model, tts.FallbackAdapter):
            _swap(model, model._tts_instances, wrap)
        elif isinstance(model, tts.StreamAdapter):
            _swap_one(model, "_wrapped_tts", wrap)
        else:
            return False
    except Exception:
        # a livekit-agents release that reshaped its adapters: meter the composite as one model
        logger.exception("livekit-metering could not meter the children of %s", type(model).__name__)
        return False
    return True
