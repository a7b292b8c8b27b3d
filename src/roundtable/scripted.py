"""A scripted model: a deterministic stand-in for a real one, for tests and benchmarks.

It answers from a list of replies in turn, streams them word by word, and can
record every input it was given to a JSONL file so tests can check what the
model saw.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResult,
    LLMMessage,
    ModelCapabilities,  # pyright: ignore[reportDeprecated]
    ModelFamily,
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import Tool, ToolSchema


def _text_of(message: LLMMessage) -> str:
    content = getattr(message, "content", "")
    if isinstance(content, list) and content and all(isinstance(c, FunctionExecutionResult) for c in content):
        return "\n".join(c.content for c in content)  # what the tools returned
    return content if isinstance(content, str) else json.dumps(content, default=str)


#: A scripted reply "CALL name {json arguments}" is a tool call rather than text.
CALL_PREFIX = "CALL "


def _tool_call(reply: str, number: int) -> list[FunctionCall] | None:
    if not reply.startswith(CALL_PREFIX):
        return None
    name, _, arguments = reply[len(CALL_PREFIX) :].partition(" ")
    return [FunctionCall(id=f"call_{number}", name=name, arguments=arguments.strip() or "{}")]


def _spend_cpu(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


class ScriptedChatCompletionClient(ChatCompletionClient):
    """Replies come from `replies` in turn. `{n}` in a reply is the call number (from 1),
    `{last}` the text of the last input message. A word counts as a token: a reply longer
    than `max_tokens` words stops there, with finish_reason "length", as a real model's does.
    A reply "CALL name {"arg": 1}" is a call of the tool `name` (when the agent has tools).
    Usage is reported as a real model's is, counting words: the input's and the reply's."""

    def __init__(
        self,
        replies: Sequence[str],
        *,
        name: str = "scripted",
        token_delay: float = 0.0,
        record: str | None = None,
        max_tokens: int | None = None,
        cpu_ms: float = 0.0,
    ) -> None:
        if not replies:
            raise ValueError("a scripted model needs at least one reply")
        self._replies = list(replies)
        self._name = name
        self._token_delay = token_delay
        self._record = Path(record) if record else None
        self._max_tokens = max_tokens
        self._cpu_seconds = cpu_ms / 1000
        self._calls = 0
        self._usage = RequestUsage(prompt_tokens=0, completion_tokens=0)

    def _limited(self, content: str) -> tuple[list[str], Literal["stop", "length"]]:
        words = content.split(" ")
        if self._max_tokens is not None and len(words) > self._max_tokens:
            return words[: self._max_tokens], "length"
        return words, "stop"

    def _next_reply(self, messages: Sequence[LLMMessage]) -> str:
        self._calls += 1
        template = self._replies[(self._calls - 1) % len(self._replies)]
        last = _text_of(messages[-1]) if messages else ""
        if self._record is not None:
            entry = {"model": self._name, "call": self._calls, "input": [_text_of(m) for m in messages]}
            with self._record.open("a", encoding="utf-8") as out:
                out.write(json.dumps(entry) + "\n")
        return template.replace("{n}", str(self._calls)).replace("{last}", last[:200])

    async def _work(self) -> None:
        """The CPU the reply costs (`cpu_ms`), spent in this process as a model or a tool run
        beside the event loop spends it: on a thread of its own, so the process goes on hearing
        and sending (its heartbeats, its turn checks) meanwhile."""
        if self._cpu_seconds:
            await asyncio.to_thread(_spend_cpu, self._cpu_seconds)

    def _answer(
        self, messages: Sequence[LLMMessage], tools: Sequence[Tool | ToolSchema]
    ) -> tuple[CreateResult, list[str]]:
        """The next reply, and its words to stream (none for a tool call). Usage counts words."""
        reply = self._next_reply(messages)
        prompt = self.count_tokens(messages)
        calls = _tool_call(reply, self._calls) if tools else None
        if calls is not None:
            self._usage = RequestUsage(prompt_tokens=prompt, completion_tokens=len(reply.split()))
            return CreateResult(finish_reason="function_calls", content=calls, usage=self._usage, cached=False), []
        words, finish = self._limited(reply)
        self._usage = RequestUsage(prompt_tokens=prompt, completion_tokens=len(words))
        return CreateResult(finish_reason=finish, content=" ".join(words), usage=self._usage, cached=False), words

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[Any] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        await self._work()
        return self._answer(messages, tools)[0]

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[Any] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        await self._work()
        result, words = self._answer(messages, tools)
        for i, word in enumerate(words):
            if self._token_delay:
                await asyncio.sleep(self._token_delay)
            yield word if i == len(words) - 1 else word + " "
        yield result

    async def close(self) -> None:
        return None

    def actual_usage(self) -> RequestUsage:
        return self._usage

    def total_usage(self) -> RequestUsage:
        return self._usage

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return sum(len(_text_of(m).split()) for m in messages)

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return max(0, 100_000 - self.count_tokens(messages))

    @property
    def capabilities(self) -> ModelCapabilities:  # pyright: ignore[reportDeprecated]
        return ModelCapabilities(vision=False, function_calling=True, json_output=False)

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            vision=False,
            function_calling=True,
            json_output=False,
            family=ModelFamily.UNKNOWN,
            structured_output=False,
        )
