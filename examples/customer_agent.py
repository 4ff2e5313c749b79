"""Cost attribution per customer: tag every record of a session with the customer it served.

The customer comes from the job's dispatch metadata, the usual place for it when your backend
dispatches the agent (``lk dispatch create --agent-name support --room call-42 --metadata
'{"customer_id": "acme"}'`` or ``AgentDispatchService.create_dispatch``). When the metadata has no
customer, the caller's participant attribute ``customer_id`` is used instead.

Every record of the session then carries ``customer``, so the collector, the dashboard and
``livekit-metering report --group-by customer`` split costs per customer; ``customer_costs.py``
turns that into a monthly charge-back.

    python examples/customer_agent.py dev
"""

from __future__ import annotations

import json

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli, inference

from livekit_metering.adapters import MeteredLLM, MeteredSTT, MeteredTTS
from livekit_metering.entrypoint import metered

server = AgentServer()


def customer_of(ctx: JobContext) -> str | None:
    """The customer a job serves: ``customer_id`` in the dispatch metadata, else in a participant's attributes.

    A module-level function (not a lambda) so it pickles into the job process with the entrypoint.
    It is asked again whenever a session record is written until it finds a customer, so a caller
    who joins after the agent still gets the session attributed.
    """
    try:
        metadata = json.loads(ctx.job.metadata or "{}")
    except ValueError:
        metadata = {}
    if isinstance(metadata, dict) and metadata.get("customer_id"):
        return str(metadata["customer_id"])
    for participant in ctx.room.remote_participants.values():
        customer = participant.attributes.get("customer_id")
        if customer:
            return customer
    return None


def plan_tier(ctx: JobContext) -> dict[str, str]:
    """Extra labels for every record (kept as ``attributes``): here the customer's support tier."""
    try:
        metadata = json.loads(ctx.job.metadata or "{}")
    except ValueError:
        return {}
    tier = metadata.get("tier") if isinstance(metadata, dict) else None
    return {"tier": str(tier)} if tier else {}


@server.rtc_session(agent_name="support")
@metered(customer=customer_of, attributes=plan_tier)
async def entrypoint(ctx: JobContext) -> None:
    session = AgentSession(
        vad=inference.VAD(),
        stt=MeteredSTT(inference.STT(model="deepgram/nova-3", language="en")),
        llm=MeteredLLM(inference.LLM(model="openai/gpt-4.1-mini")),
        tts=MeteredTTS(inference.TTS(model="cartesia/sonic-3", voice="9626c31c-bec5-4cca-baa8-f8ba9e84c8bc")),
    )
    await session.start(room=ctx.room, agent=Agent(instructions="You are a concise support agent."))


if __name__ == "__main__":
    cli.run_app(server)
