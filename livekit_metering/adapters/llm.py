"""LLM tokens per request, from the provider's own usage figures.

Each ``chat()`` request is one individual usage, recorded as ``llm_input`` (uncached input
tokens), ``llm_input_cached`` (only when there are any) and ``llm_output``. The figures are the
provider's: the last ``ChatChunk.usage`` its stream produced, read or not (usage that arrives after
the consumer stopped reading counts). A cancelled or failed request without provider figures is
still recorded, as ``status=estimated`` from characters, with ``meta["estimate"]`` naming the
method: never silently zero.

Observed on the provider's own stream: every chunk it puts on its channel (``_event_ch.send_nowait``,
an instance attribute that keeps a reference to the chunk) and the end of its ``_task``, when the
request is recorded.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from livekit.agents import llm

from ..meter import Meter
from ..records import Resource, Status
from ._hooks import Hooks, metering_of, shadow, unmetered
from ._usage import Attribution, Meta, Span, never_raises, record, resolve_meter, status_of

__all__ = ["CHARS_PER_TOKEN", "ESTIMATE_METHOD", "HOOKS", "record_tokens"]

CHARS_PER_TOKEN = 4  # the estimate for requests whose provider figures never arrived
ESTIMATE_METHOD = f"ceil(chars/{CHARS_PER_TOKEN})"


def _chat(model: llm.LLM[Any], original: Any) -> Any:
    def chat(*args: Any, **kwargs: Any) -> llm.LLMStream:
        meter = _meter_of(model)
        span = Span(meter)
        stream: llm.LLMStream = original(*args, **kwargs)
        if meter is not None:
            _watch(model, meter, span, stream)
        return stream

    return chat


HOOKS: Hooks = {"chat": _chat}


def _meter_of(model: llm.LLM[Any]) -> Meter | None:
    with never_raises("resolving the meter of an LLM request"):
        return resolve_meter(metering_of(model).meter)
    return None


def _watch(model: llm.LLM[Any], meter: Meter, span: Span, stream: llm.LLMStream) -> None:
    with never_raises("watching an LLM request"):
        channel, task = getattr(stream, "_event_ch", None), getattr(stream, "_task", None)
        if not isinstance(task, asyncio.Task) or not callable(getattr(channel, "send_nowait", None)):
            unmetered(model, stream, "is not a livekit-agents 1.8 LLMStream")
            return
        chunks: list[llm.ChatChunk] = []
        keep = chunks.append

        def make(send: Any) -> Any:
            def send_nowait(chunk: llm.ChatChunk) -> None:
                send(chunk)  # raises (and keeps nothing) once the channel is closed
                keep(chunk)

            return send_nowait

        shadow(channel, "send_nowait", make)
        usage = meter.next_usage("llm")  # named in request order
        task.add_done_callback(lambda done: _finalize(model, meter, usage, span, stream, chunks, done))


def _finalize(
    model: llm.LLM[Any],
    meter: Meter,
    usage: str,
    span: Span,
    stream: llm.LLMStream,
    chunks: list[llm.ChatChunk],
    task: asyncio.Task[Any],
) -> None:
    with never_raises("recording an LLM request"):
        outcome, error = status_of(task)
        output_chars = 0
        reported: llm.CompletionUsage | None = None
        request_id = ""
        for chunk in chunks:
            delta = chunk.delta
            if delta is not None:
                if delta.content:
                    output_chars += len(delta.content)
                for call in delta.tool_calls:
                    output_chars += len(call.name) + len(call.arguments)
            if chunk.usage is not None:
                reported, request_id = chunk.usage, chunk.id
        meta: Meta = {"outcome": outcome.value, "output_chars": output_chars}
        if error:
            meta["error"] = error
        who = Attribution.of(model)
        if reported is not None:
            if request_id:
                meta["request_id"] = request_id[:256]
            figures = reported.prompt_tokens, reported.prompt_cached_tokens, reported.completion_tokens
            record_tokens(meter, usage, who, span, *figures, outcome, meta)
        else:
            meta["estimate"] = ESTIMATE_METHOD
            meta["prompt_chars"] = prompt_chars = _prompt_chars(stream.chat_ctx)
            estimated = estimated_tokens(prompt_chars), 0, estimated_tokens(output_chars)
            record_tokens(meter, usage, who, span, *estimated, Status.ESTIMATED, meta)


def estimated_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def record_tokens(
    meter: Meter,
    usage: str,
    who: Attribution,
    span: Span,
    prompt: int,
    cached: int,
    completion: int,
    status: Status,
    meta: Meta,
) -> None:
    """One request's records. ``prompt`` includes ``cached``; llm_input is the uncached part.

    llm_input and llm_output are always written (a cancelled request shows as such even with no
    output); llm_input_cached only when the provider served cached tokens.
    """
    end = span.end()
    cached = max(0, min(cached, prompt))
    fields: dict[str, Any] = {"usage": usage, "span": span, "who": who, "status": status, "end": end, "meta": meta}
    record(meter, Resource.LLM_INPUT, prompt - cached, **fields)
    if cached:
        record(meter, Resource.LLM_INPUT_CACHED, cached, **fields)
    record(meter, Resource.LLM_OUTPUT, completion, **fields)


def _prompt_chars(chat_ctx: llm.ChatContext) -> int:
    """Characters of the text a request sends: messages, tool calls and tool outputs."""
    chars = 0
    for item in chat_ctx.items:
        if item.type == "message":
            chars += sum(len(part) for part in item.content if isinstance(part, str))
        elif item.type == "function_call":
            chars += len(item.name) + len(item.arguments)
        elif item.type == "function_call_output":
            chars += len(item.output)
    return chars
