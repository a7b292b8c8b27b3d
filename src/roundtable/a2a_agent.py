"""A remote A2A agent in a participant's seat (`agents[].a2a`).

On its turn, the agent at the configured URL is sent one A2A message: the conversation so far
as text (the task first), with the same history as structured metadata, on an A2A context
whose id is the conversation's. What it streams back as artifact text becomes the turn's
tokens; its answer (the artifact text, else its final or input-required message) is the
turn's message. Everything goes through the official A2A SDK's client.

Its failures are a model's failures: one line each (`ExplainedError`), the turn ends with it,
and the manager deals with it as with a model's error. A connection that cannot be made is
tried again `max_retries` times; the whole turn is bounded by `timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from autogen_agentchat.agents import BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, ModelClientStreamingChunkEvent, TextMessage
from autogen_core import CancellationToken

from .models import ExplainedError

if TYPE_CHECKING:
    from a2a.types import Part, StreamResponse

    from .config import A2AAgentConfig

#: Seconds between attempts to reach an agent that cannot be reached, doubling each time.
RETRY_DELAY = 1.0


class A2AAgentError(ExplainedError):
    """The remote agent failed the turn; the message says how, in one line."""


def texts(parts: Sequence[Part]) -> str:
    return "".join(part.text for part in parts if part.WhichOneof("content") == "text")


def conversation_text(name: str, messages: Sequence[BaseChatMessage]) -> str:
    """The conversation as one message for an agent that knows nothing of roundtable."""
    lines = [f"[{m.source}] {m.to_text()}" for m in messages]
    return (
        f"You are {name}, one of several participants in a group chat. "
        "The first message is the task. The conversation so far:\n\n"
        + "\n\n".join(lines)
        + f"\n\nWrite {name}'s next message, and only that."
    )


class RemoteA2AAgent(BaseChatAgent):
    """An AgentChat agent whose every reply comes from a remote A2A agent."""

    def __init__(self, name: str, description: str, settings: A2AAgentConfig, conversation_id: str) -> None:
        super().__init__(name, description or f"the A2A agent at {settings.url}")
        self._settings = settings
        self._conversation_id = conversation_id

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        return None  # the history comes whole with each turn

    async def on_messages(self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken) -> Response:
        async for item in self.on_messages_stream(messages, cancellation_token):
            if isinstance(item, Response):
                return item
        raise A2AAgentError(f"the A2A agent at {self._settings.url} gave no answer")  # not reached

    async def on_messages_stream(
        self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
    ) -> AsyncGenerator[BaseAgentEvent | BaseChatMessage | Response, None]:
        """Tokens as the remote agent streams them, then its answer; bounded by `timeout`."""
        url, timeout = self._settings.url, self._settings.timeout
        # The exchange runs whole in one task of its own: the HTTP client's contexts must be
        # left in the task that entered them, which `wait_for` on each step would not keep.
        queue: asyncio.Queue[tuple[str, str] | BaseException | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for item in self._exchange(messages):
                    await queue.put(item)
                await queue.put(None)
            except Exception as error:
                await queue.put(error)

        task = asyncio.create_task(pump())
        deadline = asyncio.get_running_loop().time() + timeout
        streamed: list[str] = []
        answer: str | None = None
        try:
            while True:
                left = deadline - asyncio.get_running_loop().time()
                try:
                    item = await asyncio.wait_for(queue.get(), max(left, 0.0))
                except asyncio.TimeoutError:
                    raise A2AAgentError(f"the A2A agent at {url} did not answer within {timeout:g} s") from None
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                kind, text = item
                if kind == "chunk":
                    streamed.append(text)
                    yield ModelClientStreamingChunkEvent(content=text, source=self.name)
                else:
                    answer = text
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        content = "".join(streamed) or answer or ""
        if not content.strip():
            raise A2AAgentError(f"the A2A agent at {url} answered with no text")
        yield Response(chat_message=TextMessage(content=content, source=self.name))

    async def _exchange(self, messages: Sequence[BaseChatMessage]) -> AsyncIterator[tuple[str, str]]:
        """("chunk", text) for each piece of artifact text, ("answer", text) for a message."""
        import httpx
        from a2a.client import ClientConfig, ClientFactory
        from a2a.types import Message, Part, Role, SendMessageRequest

        url = self._settings.url
        headers = {}
        token = self._settings.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        history = [{"author": m.source, "content": m.to_text()} for m in messages]
        request = SendMessageRequest(
            message=Message(
                role=Role.ROLE_USER,
                message_id=str(uuid.uuid4()),
                context_id=self._conversation_id,
                parts=[Part(text=conversation_text(self.name, messages))],
                metadata={
                    "roundtable": {"conversation_id": self._conversation_id, "agent": self.name, "history": history}
                },
            )
        )
        async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(self._settings.timeout)) as http:
            client = await self._connect(ClientFactory(ClientConfig(streaming=True, httpx_client=http)), url)
            try:
                async for event in client.send_message(request):
                    for item in _read(event, url):
                        yield item
            except ExplainedError:
                raise
            except Exception as error:
                raise self._explained(error, "failed") from None
            finally:
                with contextlib.suppress(Exception):
                    await client.close()

    async def _connect(self, factory: Any, url: str) -> Any:
        """The SDK's client for the agent at `url` (its card read), trying again while it cannot
        be reached; a refusal (a bad token, say) is not tried again."""
        import httpx

        delay = RETRY_DELAY
        for attempt in range(self._settings.max_retries + 1):
            try:
                return await factory.create_from_url(url)
            except Exception as error:
                unreachable = isinstance(error, httpx.TransportError) or isinstance(
                    error.__cause__, httpx.TransportError
                )
                if not unreachable or attempt == self._settings.max_retries:
                    raise self._explained(error, "cannot be reached" if unreachable else "failed") from None
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("not reached")

    def _explained(self, error: BaseException, what: str) -> A2AAgentError:
        url = self._settings.url
        status = _status(error)
        if status in (401, 403):
            where = f"agents.{self.name}.a2a.token"
            return A2AAgentError(f"the A2A agent at {url} refused the token ({status}): check {where}")
        if what == "cannot be reached":
            return A2AAgentError(f"cannot reach the A2A agent at {url}: {_reason(error)}")
        return A2AAgentError(f"the A2A agent at {url} failed: {_reason(error)}")


def _read(event: StreamResponse, url: str) -> list[tuple[str, str]]:
    from a2a.types import TaskState

    kind = event.WhichOneof("payload")
    if kind == "artifact_update":
        text = texts(event.artifact_update.artifact.parts)
        return [("chunk", text)] if text else []
    if kind == "message":
        return [("answer", texts(event.message.parts))]
    if kind == "status_update":
        status = event.status_update.status
    elif kind == "task":
        task = event.task
        status = task.status
        done = [("chunk", t) for a in task.artifacts if (t := texts(a.parts))]
        if status.state == TaskState.TASK_STATE_COMPLETED and done:
            return done  # a whole task at once (an agent that does not stream)
    else:
        return []
    said = texts(status.message.parts)
    if status.state in (TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_INPUT_REQUIRED):
        return [("answer", said)] if said else []
    if status.state in (
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_REJECTED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_AUTH_REQUIRED,
    ):
        state = TaskState.Name(status.state).removeprefix("TASK_STATE_").lower().replace("_", " ")
        raise A2AAgentError(f"the A2A agent at {url} ended the turn {state}: {said[:200] or 'no reason given'}")
    return []  # submitted, working: progress, not the answer


def _status(error: BaseException) -> int | None:
    for candidate in (error, error.__cause__):
        response = getattr(candidate, "response", None)
        code = getattr(response, "status_code", None) or getattr(candidate, "status_code", None)
        if isinstance(code, int):
            return code
    text = str(error)
    for code in (401, 403):
        if f"HTTP Error {code}" in text:
            return code
    return None


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if len(text) < 12:  # a bare code or nothing: the kind of error says more
        text = f"{type(error).__name__} {text}".strip()
    return text[:200]
