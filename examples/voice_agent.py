"""A LiveKit voice agent on LiveKit Inference (STT, LLM, TTS), metered the way LiveKit Cloud bills it.

Run it like any livekit-agents 1.8 agent (it needs a LiveKit project, so it cannot run offline):

    export LIVEKIT_URL=wss://<project>.livekit.cloud LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
    export LIVEKIT_METERING_URL=https://metering.example.com   # a collector; else a local JSON-lines file
    python examples/voice_agent.py dev                          # dev mode: live cost preview in the terminal

What is metered, per session (one job):
- agent session minutes, from the moment the agent connects until the room ends or it leaves
  (``@metered``), each session rounded up to whole minutes;
- STT seconds, LLM input/cached/output tokens and TTS characters, one record per request, from the
  models metered in place (``MeteredSTT``, ``MeteredLLM``, ``MeteredTTS``) with the model ids LiveKit bills.
At the end of the session a cost line is logged; the records go to the collector through a durable
outbox on disk, so a crash or a collector outage loses nothing.
"""

from __future__ import annotations

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli, inference

from livekit_metering.adapters import MeteredLLM, MeteredSTT, MeteredTTS
from livekit_metering.entrypoint import metered

STT_MODEL = "deepgram/nova-3"
LLM_MODEL = "openai/gpt-4.1-mini"
TTS_MODEL = "cartesia/sonic-3"
TTS_VOICE = "9626c31c-bec5-4cca-baa8-f8ba9e84c8bc"  # a Cartesia stock voice

server = AgentServer()


class Assistant(Agent):
    def __init__(self) -> None:
        super().__init__(
            instructions=(
                "You are a friendly voice assistant for a small bike shop. Keep answers short: "
                "one or two sentences, no lists, no emojis."
            )
        )


def build_session() -> AgentSession:
    """The session's models, each metered in place: the same objects, every request metered."""
    return AgentSession(
        vad=inference.VAD(),
        stt=MeteredSTT(inference.STT(model=STT_MODEL, language="en")),
        llm=MeteredLLM(inference.LLM(model=LLM_MODEL)),
        tts=MeteredTTS(inference.TTS(model=TTS_MODEL, voice=TTS_VOICE)),
    )


@server.rtc_session(agent_name="bike-shop")
@metered(plan="ship")  # the plan whose list prices the cost line and the dev preview use
async def entrypoint(ctx: JobContext) -> None:
    session = build_session()
    # start() connects the agent to the room: that is when LiveKit starts billing session minutes.
    await session.start(room=ctx.room, agent=Assistant())
    await session.generate_reply(instructions="Greet the caller and ask how you can help.")


if __name__ == "__main__":
    cli.run_app(server)
