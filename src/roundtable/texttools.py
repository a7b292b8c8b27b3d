"""Tool calls for models that write them as text: the Qwen2.5/Hermes `<tool_call>` format,
done on our side of an OpenAI-compatible server whose own tool support does not work with
streaming (llama-cpp-python's). The model gets plain chat; its calls are read from its words.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from enum import Enum
from typing import Any, Literal

from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    AssistantMessage,
    CreateResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelCapabilities,  # pyright: ignore[reportDeprecated]
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

from .wrapped import WrappedClient

OPEN = "<tool_call>"
CLOSE = "</tool_call>"

# The model's own chat template words tools this way, so this is what it was trained to follow.
TOOLS_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""
TOOLS_HINT = "Use the provided tools when they help."
# Small models otherwise call the tool again, or ignore its answer.
RESPONSE_HINT = "When a <tool_response> arrives, answer the original question using that result."

_CALL_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|\Z)", re.DOTALL)
_FENCE_OPEN = re.compile(r"```[\w-]*[ \t]*")
_FENCE_LINE = re.compile(r"^\s*```[\w-]*\s*$", re.MULTILINE)
_SKIP = re.compile(r"\s*(?:```[\w-]*[ \t]*\n\s*)?")
_BARE_START = re.compile(r'^[ \t]*(?:```[\w-]*[ \t]*\n\s*)?\{\s*"name"\s*:', re.MULTILINE)
_DECODER = json.JSONDecoder()


def tool_schema(tool: Tool | ToolSchema) -> ToolSchema:
    return tool.schema if isinstance(tool, Tool) else tool


def render_tools(tools: Sequence[Tool | ToolSchema]) -> str:
    """The system-prompt section that tells the model which tools it has and how to call them."""
    lines = []
    for tool in tools:
        schema = tool_schema(tool)
        function: dict[str, Any] = {"name": schema["name"]}
        if "description" in schema:
            function["description"] = schema["description"]
        if "parameters" in schema:
            function["parameters"] = schema["parameters"]
        lines.append(json.dumps({"type": "function", "function": function}, ensure_ascii=False))
    return TOOLS_PROMPT.format(tools="\n".join(lines)) + f"\n\n{TOOLS_HINT} {RESPONSE_HINT}"


def _call_text(call: FunctionCall) -> str:
    try:
        arguments: Any = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        arguments = call.arguments
    body = json.dumps({"name": call.name, "arguments": arguments}, ensure_ascii=False)
    return f"{OPEN}\n{body}\n{CLOSE}"


def tools_reminder(tools: Sequence[Tool | ToolSchema]) -> str:
    return f"(Tools you can call: {', '.join(tool_schema(t)['name'] for t in tools)}.)"


def as_plain_chat(messages: Sequence[LLMMessage], system: str | None, reminder: str | None = None) -> list[LLMMessage]:
    """`messages` with tool calls and results written out as text, `system` (if any) added to
    the first system message and `reminder` to the last message if the user wrote it. No
    message is left without text content."""
    out: list[LLMMessage] = []
    for message in messages:
        if isinstance(message, AssistantMessage) and not isinstance(message.content, str):
            calls = "\n".join(_call_text(c) for c in message.content)
            text = f"{message.thought.strip()}\n{calls}" if message.thought and message.thought.strip() else calls
            out.append(AssistantMessage(content=text, source=message.source))
        elif isinstance(message, FunctionExecutionResultMessage):
            text = "\n".join(f"<tool_response>\n{r.content}\n</tool_response>" for r in message.content)
            out.append(UserMessage(content=text, source="tool"))
        else:
            out.append(message)
    last = out[-1] if out else None
    if reminder and isinstance(last, UserMessage) and isinstance(last.content, str) and last.source != "tool":
        out[-1] = UserMessage(content=f"{last.content}\n\n{reminder}", source=last.source)
    if system:
        if out and isinstance(out[0], SystemMessage):
            out[0] = SystemMessage(content=f"{out[0].content}\n\n{system}")
        else:
            out.insert(0, SystemMessage(content=system))
    return out


def _as_call(parsed: Any, bare: bool) -> FunctionCall | None:
    if not isinstance(parsed, dict) or not isinstance(parsed.get("name"), str) or not parsed["name"]:
        return None
    if bare and "arguments" not in parsed and "parameters" not in parsed:
        return None  # a JSON answer that happens to have a "name", not a call
    arguments = parsed.get("arguments", parsed.get("parameters", {}))
    if isinstance(arguments, str):  # some models quote the arguments object
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return FunctionCall(id=f"call_{uuid.uuid4().hex[:24]}", name=parsed["name"], arguments=json.dumps(arguments))


def _decode(text: str, at: int) -> tuple[Any, int] | None:
    """The JSON value at `at` (after whitespace and a code fence line) and where it ends."""
    skip = _SKIP.match(text, at)
    try:
        return _DECODER.raw_decode(text, skip.end() if skip else at)
    except json.JSONDecodeError:
        return None


def _tagged_call(body: str) -> FunctionCall | None:
    decoded = _decode(body, 0)  # whatever follows the object is ignored
    return None if decoded is None else _as_call(decoded[0], bare=False)


def _bare_calls(text: str, names: Collection[str]) -> tuple[list[FunctionCall], str] | None:
    start = _BARE_START.search(text)
    if start is None:
        return None
    calls: list[FunctionCall] = []
    at = start.start()
    while (decoded := _decode(text, at)) is not None and (call := _as_call(decoded[0], bare=True)) is not None:
        if call.name not in names:
            break
        calls.append(call)
        at = decoded[1]
    return (calls, text[: start.start()]) if calls else None


def parse_calls(text: str, names: Collection[str]) -> tuple[list[FunctionCall], str] | None:
    """The tool calls in `text` and the words before them; None when there are none or any of
    them is not a well-formed call (then the whole text is the answer). A call is a
    `<tool_call>` block (of any tool: AutoGen tells the model when it has no such tool), or,
    since this model often leaves the tags out, a line starting with a block's JSON that
    names one of the tools in `names`."""
    blocks = list(_CALL_BLOCK.finditer(text))
    if blocks:
        calls = [_tagged_call(b.group(1)) for b in blocks]
        if any(c is None for c in calls):
            return None
        # Words between the calls are kept; anything after the last one is the model playing
        # the tool's part (writing its own <tool_response>), which is dropped.
        words = text[: blocks[0].start()] + "".join(text[a.end() : b.start()] for a, b in itertools.pairwise(blocks))
        found: tuple[list[FunctionCall], str] | None = ([c for c in calls if c is not None], words)
    else:
        found = _bare_calls(text, names)
    return None if found is None else (found[0], _FENCE_LINE.sub("", found[1]).strip())


class _Opening(Enum):
    NO = 0
    MAYBE = 1
    YES = 2


def _prefix_verdict(rest: str, whole: str) -> _Opening:
    if rest.startswith(whole):
        return _Opening.YES
    return _Opening.MAYBE if whole.startswith(rest) else _Opening.NO


def _bare_opening(rest: str) -> _Opening:
    """Whether `rest` starts like `{"name":`, the JSON of a call without its tags."""
    if not rest.startswith("{"):
        return _Opening.NO
    rest = rest[1:].lstrip()
    key = '"name"'
    verdict = _prefix_verdict(rest, key)
    if verdict is not _Opening.YES:
        return verdict
    rest = rest[len(key) :].lstrip()
    return _Opening.MAYBE if not rest else _Opening.YES if rest[0] == ":" else _Opening.NO


def _opening(tail: str, line_start: bool) -> _Opening:
    """Whether `tail` starts a tool call (`<tool_call>`, perhaps after a code fence line, or at
    the start of a line a call's bare JSON), may still turn out to once more text comes, or cannot."""
    rest = tail
    if rest.startswith("`"):
        if not rest.startswith("```"):
            return _Opening.MAYBE if "```".startswith(rest) else _Opening.NO
        fence = _FENCE_OPEN.match(rest)
        rest = rest[fence.end() if fence else 3 :]
        if not rest:
            return _Opening.MAYBE
        if rest[0] != "\n":
            return _Opening.NO
        rest = rest.lstrip()
        if not rest:
            return _Opening.MAYBE
    tagged = _prefix_verdict(rest, OPEN)
    if tagged is not _Opening.NO or not line_start:
        return tagged
    return _bare_opening(rest)


def _at_line_start(text: str, i: int) -> bool:
    while i > 0 and text[i - 1] in " \t":
        i -= 1
    return i == 0 or text[i - 1] == "\n"


class HoldBack:
    """Decides how much of a growing reply may be shown: everything up to where a tool call
    starts or could be starting, so that a call's JSON never shows as text."""

    def __init__(self) -> None:
        self.text = ""
        self.shown = 0
        self.calling = False

    def add(self, chunk: str) -> str:
        """Take the next chunk; return the text that may be shown now."""
        self.text += chunk
        if self.calling:
            return ""
        end = len(self.text)
        for i in range(self.shown, len(self.text)):
            if self.text[i] not in "<`{":
                continue
            verdict = _opening(self.text[i:], _at_line_start(self.text, i))
            if verdict is _Opening.NO:
                continue
            self.calling = verdict is _Opening.YES
            end = i
            break
        shown, self.shown = self.text[self.shown : end], end
        return shown

    def rest(self) -> str:
        """What was held back, to show when the reply turned out to be text after all."""
        rest, self.shown = self.text[self.shown :], len(self.text)
        return rest


class TextToolCalls(WrappedClient):
    """Wraps `inner` so that a model without working tool calls (over the API) gets its tools in
    the system prompt and its `<tool_call>` blocks become FunctionCalls; earlier calls and
    results in the history are written out the same way. Without tools, and without tool
    calls in the history, everything passes straight through."""

    @staticmethod
    def _tools_in_use(
        tools: Sequence[Tool | ToolSchema], tool_choice: Tool | Literal["auto", "required", "none"]
    ) -> Sequence[Tool | ToolSchema]:
        if tool_choice == "none":
            return []
        if isinstance(tool_choice, Tool):
            return [tool_choice]
        return tools

    @staticmethod
    def _needs_rewriting(messages: Sequence[LLMMessage], tools: Sequence[Tool | ToolSchema]) -> bool:
        return bool(tools) or any(
            isinstance(m, FunctionExecutionResultMessage)
            or (isinstance(m, AssistantMessage) and not isinstance(m.content, str))
            for m in messages
        )

    def _plain(self, messages: Sequence[LLMMessage], tools: Sequence[Tool | ToolSchema]) -> list[LLMMessage]:
        if not tools:
            # AutoGen's reflection on a tool's result: the model still needs to know what a
            # <tool_response> is for.
            return as_plain_chat(messages, RESPONSE_HINT)
        # A persona in the system message ("You are a writer ...") easily outweighs the tools
        # listed after it: naming them next to the request makes this model use them.
        return as_plain_chat(messages, render_tools(tools), tools_reminder(tools))

    @staticmethod
    def _result(inner: CreateResult, tools: Sequence[Tool | ToolSchema]) -> CreateResult:
        if not tools or not isinstance(inner.content, str):
            return inner
        parsed = parse_calls(inner.content, [tool_schema(t)["name"] for t in tools])
        if parsed is None:
            return inner
        calls, words = parsed
        return CreateResult(
            finish_reason="function_calls",
            content=calls,
            usage=inner.usage,
            cached=inner.cached,
            logprobs=inner.logprobs,
            thought=words or inner.thought,
        )

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
        active = self._tools_in_use(tools, tool_choice)
        if not self._needs_rewriting(messages, tools):
            return await super().create(
                messages,
                tools=tools,
                tool_choice=tool_choice,
                json_output=json_output,
                extra_create_args=extra_create_args,
                cancellation_token=cancellation_token,
            )
        result = await self._inner.create(
            self._plain(messages, active),
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        )
        return self._result(result, active)

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
        active = self._tools_in_use(tools, tool_choice)
        if not self._needs_rewriting(messages, tools):
            async for item in super().create_stream(
                messages,
                tools=tools,
                tool_choice=tool_choice,
                json_output=json_output,
                extra_create_args=extra_create_args,
                cancellation_token=cancellation_token,
            ):
                yield item
            return
        held = HoldBack()
        streamed = 0  # the model's chunks, shown or held back
        async for item in self._inner.create_stream(
            self._plain(messages, active),
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        ):
            if isinstance(item, str):
                streamed += 1
                shown = held.add(item) if active else item
                if shown:
                    yield shown
                continue
            if not (item.usage.prompt_tokens or item.usage.completion_tokens):
                # llama.cpp reports no usage while streaming; it sends one token per chunk,
                # and a call held out of the stream cost its tokens all the same.
                item = item.model_copy(update={"usage": RequestUsage(prompt_tokens=0, completion_tokens=streamed)})
            result = self._result(item, active)
            if isinstance(result.content, str):
                rest = held.rest()
                if rest:
                    yield rest
            yield result

    @property
    def capabilities(self) -> ModelCapabilities:  # pyright: ignore[reportDeprecated]
        return ModelCapabilities(**{**self._inner.capabilities, "function_calling": True})

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(**{**self._inner.model_info, "function_calling": True})
