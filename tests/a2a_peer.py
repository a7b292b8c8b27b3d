"""A small A2A agent built with the official A2A SDK alone (no roundtable code), for tests: an
agent of another framework that joins a roundtable room as a participant.

    python tests/a2a_peer.py --port N [--token T] [--mode reply|fail|silent] [--record FILE]

reply: streams its answer as artifact text, a word at a time: "Peer K: I read N messages; the
last was from AUTHOR." fail: fails the task with a reason. silent: works forever, never answers.
Every message it is sent is recorded (text, context id, metadata) as a line of JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

import uvicorn
from a2a.helpers import new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, TaskState
from a2a.utils import TransportProtocol
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

READY = "peer ready"


class Peer(AgentExecutor):
    def __init__(self, mode: str, record: Path | None) -> None:
        self.mode = mode
        self.record = record
        self.turns = 0

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None
        metadata = MessageToDict(context.message.metadata)
        if self.record is not None:
            line = {"text": context.get_user_input(), "context_id": context.context_id, "metadata": metadata}
            with self.record.open("a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")
        await event_queue.enqueue_event(new_task_from_user_message(context.message))
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await updater.update_status(TaskState.TASK_STATE_WORKING, updater.new_agent_message([new_text_part("reading")]))
        if self.mode == "fail":
            await updater.failed(updater.new_agent_message([new_text_part("the peer's model is out of credit")]))
            return
        if self.mode == "silent":
            await asyncio.sleep(3600)
        self.turns += 1
        history = metadata.get("roundtable", {}).get("history", [])
        last = history[-1]["author"] if history else "nobody"
        words = f"Peer {self.turns}: I read {len(history)} messages; the last was from {last}.".split(" ")
        for i, word in enumerate(words):
            await updater.add_artifact(
                [new_text_part(word if i == 0 else " " + word)], artifact_id="answer", append=i > 0, last_chunk=False
            )
            await asyncio.sleep(0.01)
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await updater.cancel()


def app(port: int, token: str | None, mode: str, record: Path | None) -> Starlette:
    base = f"http://127.0.0.1:{port}"
    card = AgentCard(
        name="peer",
        description="a reviewer from another framework",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=f"{base}/rpc", protocol_binding=TransportProtocol.JSONRPC, protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="review", name="Review", description="reviews drafts", tags=["review"])],
    )
    handler = DefaultRequestHandler(agent_executor=Peer(mode, record), task_store=InMemoryTaskStore(), agent_card=card)
    routes = [*create_agent_card_routes(card), *create_jsonrpc_routes(handler, rpc_url="/rpc")]

    async def bearer(request: Request, call_next: Any) -> Response:
        if token and request.url.path == "/rpc" and request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"error": "bad token"}, status_code=401)
        response: Response = await call_next(request)
        return response

    server = Starlette(routes=routes, middleware=[Middleware(BaseHTTPMiddleware, dispatch=bearer)])
    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token")
    parser.add_argument("--mode", default="reply", choices=["reply", "fail", "silent"])
    parser.add_argument("--record")
    args = parser.parse_args()
    os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")
    record = Path(args.record) if args.record else None
    config = uvicorn.Config(app(args.port, args.token, args.mode, record), host="127.0.0.1", port=args.port)
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        print(READY, flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
