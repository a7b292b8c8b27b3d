"""`roundtable a2a`: the room as an A2A (v1.0) agent, on the official A2A SDK.

An A2A client sends a message: it starts a conversation whose id is the A2A context id, with
the message as its task. The client follows it by streaming: each message of the conversation
is a `working` status update whose message carries the author (metadata `author`), and the
end is a `transcript` artifact and a `completed` status (`failed` if the conversation ended
badly). A later message on the same context joins the conversation as a person's message.
Cancelling the task stops the conversation.

The process is a client of the host, like `roundtable chat`: it publishes starts and words
and follows conversations with the same observer as the terminal and the page. Every client
presents a bearer token (ROUNDTABLE_A2A_TOKEN or `a2a.token_file`); without one configured,
only a loopback address may be served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import clock
from .chat import QUIET_RESUME, START_TIMEOUT, publish_until_heard
from .config import A2AServerConfig, Config, ConfigError, read_token_file
from .messages import (
    CONTROL,
    MAX_CONTENT_CHARS,
    AgentStatus,
    ChatMessage,
    ConversationEnded,
    HumanMessage,
    ResumeConversation,
    SpeakerSelected,
    StartConversation,
    StopConversation,
    ToolCallEvent,
    UsageUpdate,
    new_id,
    topic,
)
from .security import LOOPBACK_NAMES

if TYPE_CHECKING:
    from a2a.server.agent_execution import RequestContext
    from a2a.server.events import EventQueue
    from a2a.types import AgentCard
    from autogen_core import AgentRuntime

log = logging.getLogger("roundtable.a2a")

TOKEN_ENV = "ROUNDTABLE_A2A_TOKEN"
JSONRPC_PATH = "/a2a/jsonrpc"
REST_PATH = "/a2a/rest"
#: A context id becomes a conversation id: what the rest of roundtable accepts as one.
CONTEXT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: Conversations one room follows at once; a client asking for more is told so (bounded memory).
MAX_FOLLOWED = 100
#: Finished A2A tasks kept for `GetTask`; the oldest go first.
KEEP_FINISHED = 1000
#: What a client may call itself (message metadata `author`); else this.
CLIENT_NAME = "a2a"
NAME = re.compile(r"^[\w .@-]{1,64}$")


def load_token(settings: A2AServerConfig) -> str | None:
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and settings.token_file:
        token = read_token_file(settings.token_file, "a2a.token_file")
    if token is None and settings.host not in LOOPBACK_NAMES:
        raise ConfigError(
            f"the A2A endpoint would listen on {settings.host} with no token: set {TOKEN_ENV} or a2a.token_file, "
            "or listen on 127.0.0.1"
        )
    return token


# ---------------------------------------------------------------- following conversations


@dataclass
class Followed:
    """One conversation an A2A task follows: what the observer heard of it, in order."""

    conversation_id: str
    events: asyncio.Queue[ChatMessage | ConversationEnded | AgentStatus] = field(default_factory=asyncio.Queue)
    heard: asyncio.Event = field(default_factory=asyncio.Event)
    last_heard: float = 0.0
    seen: set[str] = field(default_factory=set)  # message ids already passed on


class Followers:
    """The observer's sink for the whole process: routes each event to the task that follows
    its conversation (see observer.Sink)."""

    def __init__(self) -> None:
        self.followed: dict[str, Followed] = {}

    def _of(self, conversation_id: str) -> Followed | None:
        followed = self.followed.get(conversation_id)
        if followed is not None:
            followed.heard.set()
            followed.last_heard = clock.monotonic()
        return followed

    async def on_token(self, conversation_id: str, message_id: str, author: str, text: str) -> None:
        self._of(conversation_id)

    async def on_message(self, message: ChatMessage, streamed: bool) -> None:
        followed = self._of(message.conversation_id)
        if followed is not None and message.id not in followed.seen:
            followed.seen.add(message.id)
            followed.events.put_nowait(message)

    async def on_speaker(self, event: SpeakerSelected) -> None:
        self._of(event.conversation_id)

    async def on_ended(self, event: ConversationEnded) -> None:
        followed = self._of(event.conversation_id)
        if followed is not None:
            followed.events.put_nowait(event)

    async def on_status(self, event: AgentStatus) -> None:
        followed = self._of(event.conversation_id)
        if followed is not None:
            followed.events.put_nowait(event)

    async def on_tool(self, event: ToolCallEvent) -> bool | None:
        self._of(event.conversation_id)
        return None

    async def on_usage(self, event: UsageUpdate) -> None:
        self._of(event.conversation_id)


# ---------------------------------------------------------------- the executor


class RoomExecutor:
    """The A2A SDK's executor for the room (an `AgentExecutor`; made by `make_executor`)."""

    def __init__(self, runtime: AgentRuntime, followers: Followers, timeout: float) -> None:
        self._runtime = runtime
        self._followers = followers
        self._timeout = timeout

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        from a2a.helpers import new_task_from_user_message, new_text_part
        from a2a.server.tasks import TaskUpdater
        from a2a.types import TaskState
        from a2a.utils.errors import InvalidParamsError, UnsupportedOperationError

        if context.current_task is not None:
            state = TaskState.Name(context.current_task.status.state).removeprefix("TASK_STATE_").lower()
            raise UnsupportedOperationError(
                message=f"this task is {state}: send a new message on its context instead, without the task id"
            )
        text = context.get_user_input().strip()
        if not text:
            raise InvalidParamsError(message="the message has no text: say what the agents should work on")
        if len(text) > MAX_CONTENT_CHARS:
            raise InvalidParamsError(
                message=f"the message is {len(text)} characters long; the limit is {MAX_CONTENT_CHARS}"
            )
        conversation_id = context.context_id or new_id()
        if not CONTEXT_ID.match(conversation_id):
            raise InvalidParamsError(
                message="context_id: use 1 to 128 letters, digits and _ . : - (it becomes the conversation id)"
            )
        assert context.message is not None
        author = _author(context.message)
        following = conversation_id in self._followers.followed
        if not following and len(self._followers.followed) >= MAX_FOLLOWED:
            raise UnsupportedOperationError(
                message=f"this room follows {MAX_FOLLOWED} conversations already: try again when one has ended"
            )
        await event_queue.enqueue_event(new_task_from_user_message(context.message))
        updater = TaskUpdater(event_queue, context.task_id or "", conversation_id)
        if following:  # a follow-up: a person's words, in the room
            words = HumanMessage(conversation_id=conversation_id, author=author, content=text)
            await self._runtime.publish_message(words, topic(CONTROL, conversation_id))
            note = f"added to conversation {conversation_id} as {author}'s message"
            await updater.complete(updater.new_agent_message([new_text_part(note)], metadata={"author": "roundtable"}))
            return
        await self._follow(conversation_id, text, updater)

    async def _follow(self, conversation_id: str, task: str, updater: Any) -> None:
        from a2a.helpers import new_text_part
        from a2a.types import TaskState

        followed = Followed(conversation_id, last_heard=clock.monotonic())
        self._followers.followed[conversation_id] = followed

        def said(text: str, **metadata: Any) -> Any:
            return updater.new_agent_message([new_text_part(text)], metadata=metadata)

        try:
            start = StartConversation(conversation_id=conversation_id, task=task)
            if not await publish_until_heard(self._runtime, start, followed.heard, START_TIMEOUT):
                why = f"no manager took the conversation within {START_TIMEOUT:g} s: is `roundtable manager` running?"
                await updater.failed(said(why, author="roundtable"))
                return
            transcript: list[ChatMessage] = []
            deadline = clock.monotonic() + self._timeout
            while True:
                left = deadline - clock.monotonic()
                if left <= 0:
                    why = f"stopped following after {self._timeout:g} s (a2a.timeout); the conversation goes on"
                    await updater.failed(said(why, author="roundtable"))
                    return
                try:
                    event = await asyncio.wait_for(followed.events.get(), min(left, QUIET_RESUME))
                except asyncio.TimeoutError:
                    if clock.monotonic() - followed.last_heard >= QUIET_RESUME:  # ask for it again
                        resume = ResumeConversation(conversation_id=conversation_id)
                        await self._runtime.publish_message(resume, topic(CONTROL, conversation_id))
                    continue
                if isinstance(event, ChatMessage):
                    transcript.append(event)
                    meta = {"author": event.author, "kind": event.kind, "seq": event.seq}
                    await updater.update_status(TaskState.TASK_STATE_WORKING, said(event.content, **meta))
                elif isinstance(event, AgentStatus):
                    state = "is reachable again" if event.reachable else "is unreachable (no heartbeat); waiting for it"
                    await updater.update_status(
                        TaskState.TASK_STATE_WORKING, said(f"{event.agent} {state}", author="roundtable")
                    )
                else:
                    whole = "\n\n".join(f"{m.author}: {m.content}" for m in transcript)
                    await updater.add_artifact([new_text_part(whole)], name="transcript", last_chunk=True)
                    end = said(f"Conversation ended: {event.reason}", author="roundtable", reason=event.reason)
                    await (updater.complete(end) if event.ok else updater.failed(end))
                    return
        finally:
            self._followers.followed.pop(conversation_id, None)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        from a2a.helpers import new_text_part
        from a2a.server.tasks import TaskUpdater

        conversation_id = context.context_id or ""
        if conversation_id in self._followers.followed:
            stop = StopConversation(conversation_id=conversation_id, reason="stopped by the A2A client")
            await self._runtime.publish_message(stop, topic(CONTROL, conversation_id))
        updater = TaskUpdater(event_queue, context.task_id or "", conversation_id)
        await updater.cancel(updater.new_agent_message([new_text_part("stopped")], metadata={"author": "roundtable"}))


def _author(message: Any) -> str:
    """Who the client says is speaking (metadata `author`), if it is a plain name."""
    from google.protobuf.json_format import MessageToDict

    claimed = MessageToDict(message.metadata).get("author") if message.HasField("metadata") else None
    if isinstance(claimed, str) and NAME.match(claimed.strip()):
        return claimed.strip()
    return CLIENT_NAME


def make_executor(runtime: AgentRuntime, followers: Followers, timeout: float) -> Any:
    from a2a.server.agent_execution import AgentExecutor

    class Executor(RoomExecutor, AgentExecutor):
        pass

    return Executor(runtime, followers, timeout)


# ---------------------------------------------------------------- the card and the app


def agent_card(config: Config, base_url: str, with_token: bool) -> AgentCard:
    from a2a.types import (
        AgentCapabilities,
        AgentCard,
        AgentInterface,
        AgentSkill,
        HTTPAuthSecurityScheme,
        SecurityRequirement,
        SecurityScheme,
        StringList,
    )
    from a2a.utils import TransportProtocol

    who = ", ".join(f"{a.name} ({a.description})" if a.description else a.name for a in config.agents)
    security: dict[str, Any] = {}
    if with_token:
        scheme = HTTPAuthSecurityScheme(scheme="bearer", bearer_format="opaque")
        security = {
            "security_schemes": {"bearer": SecurityScheme(http_auth_security_scheme=scheme)},
            "security_requirements": [SecurityRequirement(schemes={"bearer": StringList(list=[])})],
        }
    return AgentCard(
        name="roundtable",
        description=f"A group chat of agents: {who or 'none configured'}. Send a task; follow the conversation.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(
                url=f"{base_url}{JSONRPC_PATH}", protocol_binding=TransportProtocol.JSONRPC, protocol_version="1.0"
            ),
            AgentInterface(
                url=f"{base_url}{REST_PATH}", protocol_binding=TransportProtocol.HTTP_JSON, protocol_version="1.0"
            ),
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id="group-chat",
                name="Group chat",
                description="The agents take turns on the task; each message streams back with its author.",
                tags=["group chat", "multi-agent"],
                examples=["Write a haiku about rain"],
            )
        ],
        **security,
    )


def bounded_task_store() -> Any:
    """The SDK's in-memory task store, keeping at most KEEP_FINISHED finished tasks."""
    from collections import OrderedDict

    from a2a.server.tasks import InMemoryTaskStore
    from a2a.types import TaskState

    ended = {
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_REJECTED,
    }

    class BoundedTaskStore(InMemoryTaskStore):
        def __init__(self) -> None:
            super().__init__()
            self._finished: OrderedDict[str, Any] = OrderedDict()  # task id -> the context it was saved with

        async def save(self, task: Any, context: Any) -> None:
            await super().save(task, context)
            if task.status.state in ended:
                self._finished[task.id] = context
                self._finished.move_to_end(task.id)
                while len(self._finished) > KEEP_FINISHED:
                    oldest, saved_with = self._finished.popitem(last=False)
                    await super().delete(oldest, saved_with)

    return BoundedTaskStore()


def make_app(card: AgentCard, executor: Any, token: str | None) -> Any:
    """The Starlette app: the card (public), JSON-RPC and REST, each behind the bearer token."""
    from a2a.server.request_handlers import DefaultRequestHandler
    from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.types import ASGIApp, Receive, Scope, Send

    handler = DefaultRequestHandler(agent_executor=executor, task_store=bounded_task_store(), agent_card=card)
    card_routes = create_agent_card_routes(card)
    public = {route.path for route in card_routes if hasattr(route, "path")}

    class BearerToken:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if token is not None and scope["type"] == "http" and scope["path"] not in public:
                given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
                scheme, _, credential = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(credential.encode(), token.encode()):
                    response = JSONResponse(
                        {"error": "missing or wrong bearer token"},
                        status_code=401,
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                    await response(scope, receive, send)
                    return
            await self.app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        with contextlib.suppress(Exception):
            await handler.aclose()

    routes = [
        *card_routes,
        *create_jsonrpc_routes(handler, rpc_url=JSONRPC_PATH),
        *create_rest_routes(handler, path_prefix=REST_PATH),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BearerToken)], lifespan=lifespan)


# ---------------------------------------------------------------- the process


async def serve(config: Config, settings: A2AServerConfig, runtime: Any, sock: Any) -> None:
    """Follow conversations through `runtime` and serve the A2A endpoint on `sock` until a signal."""
    from .httpserve import serve_http
    from .observer import register_observer

    token = load_token(settings)
    followers = Followers()

    async def catch_up() -> None:  # after a lost connection: what was missed comes again
        for conversation_id in list(followers.followed):
            resume = ResumeConversation(conversation_id=conversation_id)
            await runtime.publish_message(resume, topic(CONTROL, conversation_id))

    runtime.on_reconnect(catch_up)
    await register_observer(runtime, f"a2a_{new_id()[:12]}", followers)
    base_url = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    card = agent_card(config, base_url, with_token=token is not None)

    app = make_app(card, make_executor(runtime, followers, settings.timeout), token)
    if token is None:
        log.warning(
            "the A2A endpoint has no token (set %s or a2a.token_file): anyone on this machine can use it", TOKEN_ENV
        )
    await serve_http(app, sock, f"a2a on {base_url} (agent card at {base_url}/.well-known/agent-card.json)")
