"""MeteredLLM: token records per request, from the provider's figures or an explicit estimate."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import FakeLLM, MemoryExporter, RaisingExporter
from livekit.agents import Agent, AgentSession, APIConnectionError, APIConnectOptions, inference, llm
from livekit.agents.metrics import LLMMetrics, ModelUsageCollector
from livekit.agents.testing import fake_job_context

from livekit_metering.adapters import MeteredLLM
from livekit_metering.meter import Meter, use_meter
from livekit_metering.records import Resource, Status


def _meter() -> Meter:
    return Meter(session_id="AJ_test", exporter=MemoryExporter())


def _total(meter: Meter, resource: Resource, **match: Any) -> int:
    return sum(
        r.raw for r in meter.records if r.resource is resource and all(getattr(r, k) == v for k, v in match.items())
    )


def _ctx(text: str = "Tell me a long story about billing systems please") -> llm.ChatContext:
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content=text)
    return ctx


async def test_text_session_totals_equal_the_provider_usage_and_session_usage() -> None:
    meter = _meter()
    inner = FakeLLM(reply="Sure, your balance is forty two dollars.", prompt_tokens=40, cached_tokens=25)
    metrics: list[Any] = []
    with fake_job_context():
        model = MeteredLLM(inner, meter=meter)
        model.on("metrics_collected", metrics.append)
        async with AgentSession(llm=model) as session:
            await session.start(Agent(instructions="You are a bank assistant."))
            for question in ("What is my balance?", "And in euros?"):
                result = await session.run(user_input=question)
                result.expect.next_event().is_message(role="assistant")
            (usage,) = [u for u in session.usage.model_usage if u.type == "llm_usage"]

    assert len(inner.reported) == 2
    uncached = sum(u.prompt_tokens - u.prompt_cached_tokens for u in inner.reported)
    cached = sum(u.prompt_cached_tokens for u in inner.reported)
    output = sum(u.completion_tokens for u in inner.reported)
    assert (uncached, cached, output) == (30, 50, 14)
    assert _total(meter, Resource.LLM_INPUT) == uncached
    assert _total(meter, Resource.LLM_INPUT_CACHED) == cached
    assert _total(meter, Resource.LLM_OUTPUT) == output
    # the wrapped model's metrics reached the session exactly once per request: no double counting
    assert len([m for m in metrics if isinstance(m, LLMMetrics)]) == 2
    assert (usage.input_tokens, usage.input_cached_tokens, usage.output_tokens) == (uncached + cached, cached, output)
    assert {r.id for r in meter.records} == {
        f"AJ_test/llm-{n}/{res}" for n in (1, 2) for res in ("llm_input", "llm_input_cached", "llm_output")
    }
    assert {(r.model, r.provider, r.status) for r in meter.records} == {("fake-llm-1", "fakeprovider", Status.OK)}


async def test_cancelled_request_in_a_session_is_estimated_where_session_usage_shows_zero() -> None:
    meter = _meter()
    inner = FakeLLM(reply=" ".join(["word"] * 200), chunk_delay=0.01)
    with fake_job_context():
        async with AgentSession(llm=MeteredLLM(inner, meter=meter)) as session:
            await session.start(Agent(instructions="You are a bank assistant."))
            handle = session.generate_reply(user_input="Tell me everything about my account.")
            for _ in range(1000):  # interrupt mid-stream: after a few chunks, long before the last
                if inner.chunks_sent >= 5:
                    break
                await asyncio.sleep(0.01)
            handle.interrupt()
            await handle.wait_for_playout()
            llm_usage = [u for u in session.usage.model_usage if u.type == "llm_usage"]

    framework_tokens = sum(u.input_tokens + u.output_tokens for u in llm_usage)
    assert framework_tokens == 0  # the provider's usage chunk never arrived
    assert inner.reported == []
    records = meter.records
    assert {r.status for r in records} == {Status.ESTIMATED}
    assert {r.meta["outcome"] for r in records} == {"cancelled"}
    assert {r.meta["estimate"] for r in records} == {"ceil(chars/4)"}
    output = next(r for r in records if r.resource is Resource.LLM_OUTPUT)
    assert output.raw == -(-int(output.meta["output_chars"]) // 4) > 0
    assert _total(meter, Resource.LLM_INPUT) > 0
    assert _total(meter, Resource.LLM_INPUT) + output.raw > framework_tokens


async def test_provider_usage_that_arrives_after_the_consumer_stopped_is_kept() -> None:
    meter = _meter()
    inner = FakeLLM(prompt_tokens=12, completion_tokens=9)  # no delay: usage is buffered at once
    stream = MeteredLLM(inner, meter=meter).chat(chat_ctx=_ctx())
    async for _ in stream:
        break
    await asyncio.sleep(0.01)
    await stream.aclose()
    assert {r.status for r in meter.records} == {Status.OK}
    assert (_total(meter, Resource.LLM_INPUT), _total(meter, Resource.LLM_OUTPUT)) == (12, 9)


async def test_failed_request_is_recorded_and_fails_exactly_like_the_wrapped_model() -> None:
    async def run(model: llm.LLM[Any]) -> tuple[str, list[bool], list[Any]]:
        errors: list[Any] = []
        metrics: list[Any] = []
        model.on("error", errors.append)
        model.on("metrics_collected", metrics.append)
        with pytest.raises(APIConnectionError) as raised:
            async with model.chat(chat_ctx=_ctx()) as stream:
                async for _ in stream:
                    pass
        return str(raised.value), [e.recoverable for e in errors], metrics

    bare = await run(FakeLLM(fail_after_chunks=3))
    meter = _meter()
    wrapped = await run(MeteredLLM(FakeLLM(fail_after_chunks=3), meter=meter))
    assert wrapped == bare  # same exception, same error events, same (absent) metrics
    assert {r.status for r in meter.records} == {Status.ESTIMATED}
    output = next(r for r in meter.records if r.resource is Resource.LLM_OUTPUT)
    assert output.meta["outcome"] == "error" and output.meta["error"] == "APIConnectionError"
    assert output.raw == -(-len("Hello! I am ") // 4) == 3  # the three chunks streamed before the failure


async def test_retries_are_the_wrapped_models_own_and_not_multiplied() -> None:
    options = APIConnectOptions(max_retry=2, retry_interval=0.0)

    async def run(model: llm.LLM[Any]) -> tuple[list[bool], str]:
        errors: list[Any] = []
        model.on("error", errors.append)
        response = await model.chat(chat_ctx=_ctx(), conn_options=options).collect()
        return [e.recoverable for e in errors], response.text

    bare_inner, wrapped_inner = FakeLLM(fail_attempts=1), FakeLLM(fail_attempts=1)
    bare = await run(bare_inner)
    meter = _meter()
    wrapped = await run(MeteredLLM(wrapped_inner, meter=meter))
    assert wrapped == bare and bare[0] == [True]  # one recoverable error event, forwarded once
    assert wrapped_inner.attempts == bare_inner.attempts == 2
    assert {r.id for r in meter.records} == {"AJ_test/llm-1/llm_input", "AJ_test/llm-1/llm_output"}
    assert _total(meter, Resource.LLM_OUTPUT) == wrapped_inner.reported[0].completion_tokens


async def test_fallback_adapter_usage_is_billed_to_the_child_that_served() -> None:
    meter = _meter()
    primary = FakeLLM(model="primary-1", provider="alpha", fail_after_chunks=0)
    backup = FakeLLM(model="backup-1", provider="beta", prompt_tokens=30, completion_tokens=7)
    adapter = llm.FallbackAdapter([primary, backup], retry_interval=0.0)
    model = MeteredLLM(adapter, meter=meter)
    assert (model.model, model.provider) == ("primary-1", "alpha")
    reemitted: list[Any] = []
    model.on("metrics_collected", reemitted.append)

    response = await model.chat(chat_ctx=_ctx()).collect()
    assert response.text.startswith("Hello!")
    for status in adapter._status:  # the recovery probe of the failed primary is a billed request too
        if status.recovering_task is not None:
            await status.recovering_task

    served = [r for r in meter.records if r.status is Status.OK]
    assert {(r.model, r.provider) for r in served} == {("backup-1", "beta")}
    assert (
        _total(meter, Resource.LLM_INPUT, status=Status.OK),
        _total(meter, Resource.LLM_OUTPUT, status=Status.OK),
    ) == (
        30,
        7,
    )
    # the failed request and the recovery probe of the primary: two estimated usages, each its prompt
    failed = sorted((r.id, r.raw, r.status, r.meta["outcome"]) for r in meter.records if r.model == "primary-1")
    prompt = -(-len("Tell me a long story about billing systems please") // 4)
    assert primary.attempts == 2 and failed == [
        ("AJ_test/llm-1/llm_input", prompt, Status.ESTIMATED, "error"),
        ("AJ_test/llm-1/llm_output", 0, Status.ESTIMATED, "error"),
        ("AJ_test/llm-3/llm_input", prompt, Status.ESTIMATED, "error"),
        ("AJ_test/llm-3/llm_output", 0, Status.ESTIMATED, "error"),
    ]
    assert [m.metadata.model_name for m in reemitted if isinstance(m, LLMMetrics)] == ["backup-1"]


async def test_fallback_children_metered_by_hand_are_not_wrapped_twice() -> None:
    meter = _meter()
    child = MeteredLLM(FakeLLM(prompt_tokens=5, completion_tokens=3), meter=meter)
    model = MeteredLLM(llm.FallbackAdapter([child]), meter=meter)
    await model.chat(chat_ctx=_ctx()).collect()
    assert (_total(meter, Resource.LLM_INPUT), _total(meter, Resource.LLM_OUTPUT)) == (5, 3)


async def test_records_go_to_the_current_meter_when_none_is_passed() -> None:
    meter = _meter()
    with use_meter(meter):
        stream = MeteredLLM(FakeLLM(prompt_tokens=4, completion_tokens=2)).chat(chat_ctx=_ctx())
    await stream.collect()
    assert _total(meter, Resource.LLM_INPUT) == 4


async def test_a_broken_exporter_does_not_break_the_session() -> None:
    exporter = RaisingExporter()
    meter = Meter(exporter=exporter)
    with fake_job_context():
        async with AgentSession(llm=MeteredLLM(FakeLLM(), meter=meter)) as session:
            await session.start(Agent(instructions="x"))
            result = await session.run(user_input="hello")
            result.expect.next_event().is_message(role="assistant")
    assert exporter.calls == 2 and meter.failures == 2 and meter.records == []


def test_livekit_inference_models_keep_provider_and_model() -> None:
    model = MeteredLLM(inference.LLM("openai/gpt-4.1-mini", api_key="k" * 32, api_secret="s" * 32))
    assert (model.model, model.provider) == ("openai/gpt-4.1-mini", "livekit")


async def test_metrics_usage_matches_framework_collector_for_completed_requests() -> None:
    meter = _meter()
    collector = ModelUsageCollector()
    model = MeteredLLM(FakeLLM(prompt_tokens=11, cached_tokens=4, completion_tokens=6), meter=meter)
    model.on("metrics_collected", collector)
    for _ in range(3):
        await model.chat(chat_ctx=_ctx()).collect()
    (usage,) = collector.flatten()
    assert usage.input_tokens == _total(meter, Resource.LLM_INPUT) + _total(meter, Resource.LLM_INPUT_CACHED) == 33
    assert usage.output_tokens == _total(meter, Resource.LLM_OUTPUT) == 18


async def test_wrapping_a_metered_model_again_does_not_count_twice() -> None:
    meter = _meter()
    model = MeteredLLM(MeteredLLM(FakeLLM(prompt_tokens=8, completion_tokens=5), meter=meter), meter=meter)
    collector = ModelUsageCollector()
    model.on("metrics_collected", collector)
    await model.chat(chat_ctx=_ctx()).collect()
    assert (_total(meter, Resource.LLM_INPUT), _total(meter, Resource.LLM_OUTPUT)) == (8, 5)
    (usage,) = collector.flatten()
    assert (usage.input_tokens, usage.output_tokens) == (8, 5)


async def test_outside_the_entrypoint_context_records_go_to_the_jobs_session_meter() -> None:
    from livekit.agents import get_job_context

    from livekit_metering.session import SessionMeter, register

    with fake_job_context(job_id="AJ_job"):
        ctx = get_job_context()
        job_meter = SessionMeter.for_job(ctx, exporter=MemoryExporter())
        register(ctx, job_meter)  # what `metered` does for a job
        # no use_meter() around this request: it is found through the JobContext
        await MeteredLLM(FakeLLM(prompt_tokens=6, completion_tokens=2)).chat(chat_ctx=_ctx()).collect()
    assert {(r.session_id, r.resource, r.raw) for r in job_meter.records} == {
        ("AJ_job", Resource.LLM_INPUT, 6),
        ("AJ_job", Resource.LLM_OUTPUT, 2),
    }
