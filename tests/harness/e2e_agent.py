"""The agent of the end-to-end tests, run as production runs one:

    LIVEKIT_URL=... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... LIVEKIT_METERING_URL=... \\
        python -m livekit.agents start tests/harness/e2e_agent.py

A real ``AgentServer`` worker (PROCESS executor) registers with the LiveKit server under
``metered-e2e`` and takes explicitly dispatched jobs. Each job, wrapped by ``metered``, runs a voice
``AgentSession`` on the room itself (RoomIO: the caller's real audio track in, the agent's track and
transcriptions out) with the scripted STT, LLM and TTS of ``livekit_metering.scripted`` in the
Metered adapters: only the paid providers are scripted. The dispatch metadata says what the caller
"says" (the scripted STT hears the next line once the caller's audio has reached it) and how the job
ends: ``shutdown`` (``ctx.shutdown()`` ``hold`` seconds after the conversation) or ``stay`` (until
the room ends it, or a kill).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, cast

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, TurnHandlingOptions

from livekit_metering import metered
from livekit_metering.adapters import MeteredLLM, MeteredSTT, MeteredTTS
from livekit_metering.demo import TURN_HANDLING
from livekit_metering.scripted import ScriptedLLM, ScriptedSTT, ScriptedTTS

AGENT_NAME = "metered-e2e"
INSTRUCTIONS = "You answer callers of the metering test line in one short sentence."
HEARD_BEFORE_SPEAKING = 0.5  # seconds of the caller's audio the STT receives before a line is "said"
TURN_TIMEOUT = 30.0


async def converse(ctx: JobContext) -> None:
    plan: dict[str, Any] = json.loads(ctx.job.metadata or "{}")
    script: list[tuple[str, str]] = [(line, reply) for line, reply in plan.get("script", [])]
    await ctx.connect()
    if plan.get("pid_file"):
        await asyncio.to_thread(Path(plan["pid_file"]).write_text, str(os.getpid()))

    stt = ScriptedSTT()
    # The STT stream's running figure at the session's checkpoint interval (MeteredSTT's own default is
    # 15 s), so a kill mid-session leaves it on disk too.
    interval = float(os.environ.get("LIVEKIT_METERING_CHECKPOINT_INTERVAL", "15"))
    session: AgentSession[None] = AgentSession(
        stt=MeteredSTT(stt, checkpoint_interval=interval),
        llm=MeteredLLM(ScriptedLLM([reply for _, reply in script])),
        tts=MeteredTTS(ScriptedTTS()),
        turn_handling=cast(TurnHandlingOptions, TURN_HANDLING),
    )
    replies: list[str] = []
    state: list[str] = ["initializing"]

    def on_item(event: Any) -> None:
        if getattr(event.item, "role", None) == "assistant":
            replies.append(event.item.text_content or "")

    session.on("conversation_item_added", on_item)
    session.on("agent_state_changed", lambda event: state.append(event.new_state))
    await session.start(Agent(instructions=INSTRUCTIONS), room=ctx.room)

    for line, _ in script:
        heard, answered = stt.audio_seconds + HEARD_BEFORE_SPEAKING, len(replies) + 1
        await _wait(lambda: stt.audio_seconds >= heard)  # noqa: B023 (awaited here) the caller's audio arrives
        stt.say(line)
        await _wait(lambda: len(replies) >= answered and state[-1] == "listening")  # noqa: B023
    if plan.get("end") == "shutdown":
        await asyncio.sleep(float(plan.get("hold", 0)))
        ctx.shutdown("conversation over")


async def _wait(condition: Any) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TURN_TIMEOUT
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"no progress within {TURN_TIMEOUT} s")
        await asyncio.sleep(0.05)


def no_load() -> float:
    """The worker's load as it reports it: 0, so a busy shared test machine never makes it refuse a job
    (its default, the machine's CPU use, refuses above 0.7)."""
    return 0.0


server = AgentServer(host="127.0.0.1", port=0, num_idle_processes=1, load_fnc=no_load)
server.rtc_session(metered(converse), agent_name=AGENT_NAME)
