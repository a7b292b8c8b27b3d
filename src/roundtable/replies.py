"""A finished reply never stops mid-sentence: when the model ran out of tokens, it is cut
back to its last full sentence.

AgentChat's AssistantAgent does not say why generation stopped, so the participant's
model client is wrapped to remember the `finish_reason` of its last completion.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal

from autogen_core import CancellationToken
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from .wrapped import WrappedClient

#: The end of a sentence: its mark, any closing quotes or brackets, then a space or the end.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’»)\]]*(?=\s|$)")
ELLIPSIS = "…"


def cut_at_last_sentence(text: str) -> str:
    """`text` up to its last full sentence. With no full sentence at all, the whole text is
    kept and marked with an ellipsis, so a reader sees it was cut rather than finished."""
    text = text.rstrip()
    ends = list(_SENTENCE_END.finditer(text))
    if not ends:
        return text + ELLIPSIS if text else text
    return text[: ends[-1].end()]


def finish_reply(text: str, finish_reason: str | None) -> str:
    """The reply as it is stored and shown: cut back only when the token limit stopped it."""
    text = text.strip()
    return cut_at_last_sentence(text) if finish_reason == "length" else text


class FinishReasonRecorder(WrappedClient):
    """Delegates everything to `inner`, remembering why the last completion stopped and how
    many tokens the completions used since `tokens` was last set to 0 (a turn's usage).

    Tokens are the model's reported usage. A server that reports none while streaming
    (llama.cpp's) is counted one token per streamed chunk, which is how it sends them;
    its prompt tokens are then not counted."""

    def __init__(self, inner: ChatCompletionClient) -> None:
        super().__init__(inner)
        self.last_finish_reason: str | None = None
        self.tokens = 0

    def _count(self, result: CreateResult, streamed: int = 0) -> None:
        reported = result.usage.prompt_tokens + result.usage.completion_tokens
        self.tokens += reported or streamed

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        result = await self._inner.create(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        )
        self.last_finish_reason = result.finish_reason
        self._count(result)
        return result

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        self.last_finish_reason = None
        streamed = 0
        async for item in self._inner.create_stream(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        ):
            if isinstance(item, CreateResult):
                self.last_finish_reason = item.finish_reason
                self._count(item, streamed)
            else:
                streamed += 1
            yield item
