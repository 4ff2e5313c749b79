"""MeteredLLM: LLM tokens per request, from the provider's own usage figures.

Each ``chat()`` request is one individual usage, recorded as ``llm_input`` (uncached input
tokens), ``llm_input_cached`` (only when there are any) and ``llm_output``. The figures come from
the provider: the wrapped stream's ``LLMMetrics`` (which carries usage that arrived even after the
consumer stopped reading), else the last ``ChatChunk.usage`` seen. A cancelled or failed request
without provider figures is still recorded, as ``status=estimated`` from characters, with
``meta["estimate"]`` naming the method: never silently zero.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from typing import Any

from livekit.agents import llm
from livekit.agents.metrics import LLMMetrics
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr

from ..meter import Meter
from ..records import Resource, Status
from ._composite import adopt_children
from ._usage import Attribution, Forwarder, Meta, Span, never_raises, record, resolve_meter, status_of

__all__ = ["CHARS_PER_TOKEN", "MeteredLLM", "MeteredLLMStream"]

CHARS_PER_TOKEN = 4  # the estimate for requests whose provider figures never arrived
ESTIMATE_METHOD = f"ceil(chars/{CHARS_PER_TOKEN})"

# The stream a provider request belongs to. Set while the wrapped stream is created, so its tasks
# (among them the metrics task that emits LLMMetrics) inherit it and the wrapper can tell which
# request a metrics event belongs to, even after the consumer has closed the request.
_owner: contextvars.ContextVar[MeteredLLMStream | None] = contextvars.ContextVar(
    "livekit_metering_llm_stream", default=None
)


class MeteredLLM(llm.LLM[Any]):
    """Wraps any ``llm.LLM`` and records the tokens of every request it serves.

    Behaves exactly like the wrapped model: same model, provider, streams, chunks, errors and
    events; its ``metrics_collected`` events are re-emitted unchanged (so ``session.usage`` keeps
    working, with nothing counted twice). Records go to ``meter`` if given, else to the current
    job's meter (``current_meter()``). A ``FallbackAdapter`` is metered per child, so each request
    is billed to the model that actually served it.
    """

    def __init__(self, llm_: llm.LLM[Any], *, meter: Meter | None = None) -> None:
        super().__init__()
        self._wrapped = llm_
        self._meter = meter
        self._label = f"livekit_metering.MeteredLLM({llm_.label})"
        # a model metered already, or a composite whose children get metered: pass through
        self._delegating = isinstance(llm_, MeteredLLM) or adopt_children(llm_, lambda child: _metered(child, meter))
        llm_.on("metrics_collected", self._on_metrics_collected)
        self._forwarder = Forwarder(llm_, self, ("error", "llm_availability_changed"))

    @property
    def wrapped(self) -> llm.LLM[Any]:
        return self._wrapped

    @property
    def model(self) -> str:
        return self._wrapped.model

    @property
    def provider(self) -> str:
        return self._wrapped.provider

    @property
    def metrics_metadata(self) -> Any:
        return self._wrapped.metrics_metadata

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        kwargs: dict[str, Any] = {
            "chat_ctx": chat_ctx,
            "tools": tools,
            "parallel_tool_calls": parallel_tool_calls,
            "tool_choice": tool_choice,
            "extra_kwargs": extra_kwargs,
        }
        # keep the wrapped model's own default (a FallbackAdapter's differs from the base one)
        if conn_options is not DEFAULT_API_CONNECT_OPTIONS:
            kwargs["conn_options"] = conn_options
        if self._delegating:
            return self._wrapped.chat(**kwargs)
        return MeteredLLMStream(self, kwargs)

    def prewarm(self, *, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._wrapped.prewarm(loop=loop)

    async def aclose(self) -> None:
        # like FallbackAdapter: stop listening, leave the wrapped model to its owner
        self._wrapped.off("metrics_collected", self._on_metrics_collected)
        self._forwarder.close()
        await super().aclose()

    def _on_metrics_collected(self, metrics: Any) -> None:
        with never_raises("attributing LLM metrics"):
            if isinstance(metrics, LLMMetrics) and not self._delegating:
                owner = _owner.get()
                if owner is not None and owner._metered is self and not owner._finalized:
                    owner._provider_metrics = metrics
                elif owner is None or owner._metered is self:
                    # usage reported after its request was recorded, or by a request that did not
                    # go through this wrapper's chat(): billed all the same, as its own usage
                    meter = resolve_meter(self._meter)
                    _record_metrics(self, meter, meter.next_usage("llm"), metrics, Span(), {"late": True})
        self.emit("metrics_collected", metrics)


def _metered(child: Any, meter: Meter | None) -> Any:
    return child if isinstance(child, MeteredLLM) else MeteredLLM(child, meter=meter)


class MeteredLLMStream(llm.LLMStream):
    """One metered request: a transparent proxy over the wrapped model's stream.

    Unlike FallbackLLMStream it runs no task or channel of its own: the consumer reads the wrapped
    stream through ``__anext__``, which counts output characters on the way. That keeps the cost
    per chunk to a few attribute updates, and keeps errors, retries and spans exactly the wrapped
    model's.
    """

    def __init__(self, metered: MeteredLLM, kwargs: dict[str, Any]) -> None:
        # LLMStream.__init__ is deliberately not called: it would start a second main task,
        # channel and span for a request the wrapped stream already runs.
        self._metered = metered
        self._meter = resolve_meter(metered._meter)
        self._span = Span()
        self._usage = self._meter.next_usage("llm")  # named in request order
        self._output_chars = 0
        self._last_usage: llm.CompletionUsage | None = None
        self._provider_metrics: LLMMetrics | None = None
        self._finalized = False
        token = _owner.set(self)
        try:
            self._inner: llm.LLMStream = metered._wrapped.chat(**kwargs)
        finally:
            _owner.reset(token)
        with never_raises("watching an LLM request"):
            # the wrapped metrics task ends after its LLMMetrics are out: the request is complete
            self._inner._metrics_task.add_done_callback(lambda _: self._finalize())

    # What livekit-agents reads or writes on a stream besides its public API. Delegated one by
    # one rather than through __getattr__: a class with __getattr__ makes every attribute access
    # on it slower (CPython cannot specialize it), and this object sits on the hot path.
    @property
    def _llm(self) -> llm.LLM[Any]:  # type: ignore[override]
        return self._metered

    @property
    def _chat_ctx(self) -> llm.ChatContext:  # type: ignore[override]
        return self._inner._chat_ctx

    @property
    def _tools(self) -> list[llm.Tool]:  # type: ignore[override]
        return self._inner._tools

    @property
    def _conn_options(self) -> APIConnectOptions:  # type: ignore[override]
        return self._inner._conn_options

    @property
    def _task(self) -> asyncio.Task[None]:  # type: ignore[override]
        return self._inner._task

    @property
    def _llm_request_span(self) -> Any:  # type: ignore[override]
        return self._inner._llm_request_span

    # FallbackAdapter writes this on the streams of its children
    @property
    def _retry_on_chunk_sent(self) -> bool:
        return bool(self._inner._retry_on_chunk_sent)

    @_retry_on_chunk_sent.setter
    def _retry_on_chunk_sent(self, value: bool) -> None:
        self._inner._retry_on_chunk_sent = value

    @property
    def chat_ctx(self) -> llm.ChatContext:
        return self._inner.chat_ctx

    @property
    def tools(self) -> list[llm.Tool]:
        return self._inner.tools

    async def __anext__(self) -> llm.ChatChunk:
        chunk = await self._inner.__anext__()
        delta = chunk.delta
        if delta is not None:
            if delta.content:
                self._output_chars += len(delta.content)
            for call in delta.tool_calls:
                self._output_chars += len(call.name) + len(call.arguments)
        if chunk.usage is not None:
            self._last_usage = chunk.usage
        return chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._finalize()

    async def _run(self) -> None:  # never started: the wrapped stream runs the request
        raise NotImplementedError

    def _finalize(self) -> None:
        if self._finalized:
            return
        self._finalized = True
        with never_raises("recording an LLM request"):
            outcome, error = status_of(getattr(self._inner, "_task", None))
            meta: Meta = {"outcome": outcome.value, "output_chars": self._output_chars}
            if error:
                meta["error"] = error
            metrics = self._provider_metrics
            if metrics is not None and (metrics.prompt_tokens or metrics.completion_tokens):
                _record_metrics(self._metered, self._meter, self._usage, metrics, self._span, meta, outcome)
            elif self._last_usage is not None:
                reported = self._last_usage
                _record_tokens(
                    self._meter,
                    self._usage,
                    Attribution.of(self._metered._wrapped),
                    self._span,
                    reported.prompt_tokens,
                    reported.prompt_cached_tokens,
                    reported.completion_tokens,
                    outcome,
                    meta,
                )
            else:
                meta["estimate"] = ESTIMATE_METHOD
                meta["prompt_chars"] = prompt_chars = _prompt_chars(self._inner.chat_ctx)
                _record_tokens(
                    self._meter,
                    self._usage,
                    Attribution.of(self._metered._wrapped),
                    self._span,
                    _tokens(prompt_chars),
                    0,
                    _tokens(self._output_chars),
                    Status.ESTIMATED,
                    meta,
                )


def _tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _record_metrics(
    metered: MeteredLLM,
    meter: Meter,
    usage: str,
    metrics: LLMMetrics,
    span: Span,
    meta: Meta,
    status: Status = Status.OK,
) -> None:
    who = Attribution.of(metered._wrapped)
    if metrics.metadata is not None:
        # the model that produced the figures, as the wrapped stream labelled them
        who = Attribution(metrics.metadata.model_name or who.model, metrics.metadata.model_provider or who.provider)
    if metrics.request_id:
        meta = {**meta, "request_id": metrics.request_id[:256]}
    _record_tokens(
        meter,
        usage,
        who,
        span,
        metrics.prompt_tokens,
        metrics.prompt_cached_tokens,
        metrics.completion_tokens,
        status,
        meta,
    )


def _record_tokens(
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
    record(
        meter, Resource.LLM_INPUT, prompt - cached, usage=usage, span=span, who=who, status=status, end=end, meta=meta
    )
    if cached:
        record(
            meter, Resource.LLM_INPUT_CACHED, cached, usage=usage, span=span, who=who, status=status, end=end, meta=meta
        )
    record(meter, Resource.LLM_OUTPUT, completion, usage=usage, span=span, who=who, status=status, end=end, meta=meta)


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
