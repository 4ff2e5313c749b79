"""One metered voice job in livekit-agents' real job runner, in a process of its own, for the observability tests.

livekit-agents' cloud telemetry is process-wide (the OpenTelemetry globals are set once), so each run
gets a fresh interpreter: ``python observability_job.py RECORDS_FILE RECORD JOB_ID`` with
``LIVEKIT_OBSERVABILITY_URL`` pointing at the test's stand-in for LiveKit Cloud. RECORD is ``on``
(``session.start(record=True)``), ``off`` (``record=False``), ``traces-off`` (``record={"traces": False}``)
or ``project`` (no ``record``: the project's setting, ``job.enable_recording``, which is on here).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from harness import jobproc
from livekit.agents import Agent, AgentSession, JobContext

from livekit_metering.adapters import MeteredLLM, MeteredSTT, MeteredTTS
from livekit_metering.entrypoint import metered
from livekit_metering.scripted import (
    FakeAudioInput,
    FakeAudioOutput,
    ScriptedLLM,
    ScriptedSTT,
    ScriptedTTS,
)

TURN_HANDLING: dict[str, Any] = {
    "turn_detection": "stt",
    "endpointing": {"min_delay": 0.1, "max_delay": 0.5},
    "interruption": {"enabled": False},
    "preemptive_generation": {"enabled": False},
}
RECORD: dict[str, Any] = {"on": True, "off": False, "traces-off": {"traces": False}}


async def converse(ctx: JobContext, record: str) -> None:
    await ctx.connect()
    stt = ScriptedSTT()
    session: AgentSession[None] = AgentSession(
        stt=MeteredSTT(stt),
        llm=MeteredLLM(ScriptedLLM(["We are open from nine to four."])),
        tts=MeteredTTS(ScriptedTTS()),
        turn_handling=TURN_HANDLING,  # type: ignore[arg-type]
    )
    session.input.audio = FakeAudioInput()
    session.output.audio = FakeAudioOutput()
    replies: list[str] = []
    session.on(
        "conversation_item_added",
        lambda ev: replies.append(ev.item.text_content or "") if getattr(ev.item, "role", "") == "assistant" else None,
    )
    options = {} if record == "project" else {"record": RECORD[record]}
    await session.start(Agent(instructions="You answer for a bike shop."), **options)
    stt.say("When are you open?")
    for _ in range(400):
        await asyncio.sleep(0.05)
        if replies and session.agent_state == "listening":
            break
    else:
        raise RuntimeError("the agent did not answer")
    ctx.shutdown("call over")


async def main(out: Path, record: str, job_id: str) -> None:
    async def entry(ctx: JobContext) -> None:
        await converse(ctx, record)

    # job.enable_recording is the project's setting the server sends with the job
    running = jobproc.running_job

    def with_recording(**kw: Any) -> Any:
        info = running(**kw)
        info.job.enable_recording = True
        return info

    jobproc.running_job = with_recording  # type: ignore[assignment]
    jobproc.JOB_ID = job_id
    await jobproc.run_job(metered(entry, file=out), fake_job=True, timeout=60)


if __name__ == "__main__":
    # the session's cost line on stdout, for the test to read
    handler = logging.StreamHandler(sys.stdout)
    handler.setLevel(logging.INFO)
    logging.getLogger("livekit_metering").addHandler(handler)
    logging.getLogger("livekit_metering").setLevel(logging.INFO)
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
