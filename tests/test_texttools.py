"""Tool calls written as text (the local model's way): read back as calls, never shown as text,
and the history the model sees again always plain chat. A fake model stands in for it here;
tests/test_real_model_tools.py runs the real one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import ModelClientStreamingChunkEvent, TextMessage, ToolCallExecutionEvent
from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelCapabilities,
    ModelFamily,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import FunctionTool, StaticWorkbench, Tool, ToolSchema
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from roundtable.texttools import TextToolCalls

USAGE = RequestUsage(prompt_tokens=17, completion_tokens=5)


def harbour_code(harbour: str) -> str:
    """Today's entry code for a harbour."""
    return f"{harbour}: QUILLFISH-2071"


def tide(port: str, day: int) -> str:
    """The tide at a port on a day."""
    return "high"


TOOLS: list[Tool | ToolSchema] = [FunctionTool(harbour_code, description="Entry codes"), FunctionTool(tide, "Tides")]


class FakeModel(ChatCompletionClient):
    """Answers with `replies` in turn, each streamed in the chunks given (a str is one chunk),
    and remembers every request it got."""

    def __init__(self, *replies: str | Sequence[str]) -> None:
        self.replies = [[r] if isinstance(r, str) else list(r) for r in replies]
        self.requests: list[tuple[list[LLMMessage], dict[str, Any]]] = []
        self.closed = False

    def _next(self, messages: Sequence[LLMMessage], **kwargs: Any) -> list[str]:
        self.requests.append((list(messages), kwargs))
        return self.replies[len(self.requests) - 1]

    @staticmethod
    def _result(chunks: list[str]) -> CreateResult:
        return CreateResult(finish_reason="stop", content="".join(chunks), usage=USAGE, cached=False)

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
        return self._result(self._next(messages, tools=tools, tool_choice=tool_choice, extra=extra_create_args))

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
        chunks = self._next(messages, tools=tools, tool_choice=tool_choice, extra=extra_create_args)
        for chunk in chunks:
            yield chunk
        yield self._result(chunks)

    async def close(self) -> None:
        self.closed = True

    def actual_usage(self) -> RequestUsage:
        return USAGE

    def total_usage(self) -> RequestUsage:
        return RequestUsage(prompt_tokens=100, completion_tokens=50)

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return 42

    def remaining_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []) -> int:
        return 4000

    @property
    def capabilities(self) -> ModelCapabilities:
        return ModelCapabilities(vision=False, function_calling=False, json_output=False)

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            vision=False, function_calling=False, json_output=False, family=ModelFamily.UNKNOWN, structured_output=False
        )


ASK: list[LLMMessage] = [
    SystemMessage(content="You are a pilot."),
    UserMessage(content="Code for Port Elsewhere?", source="user"),
]


async def answer(*chunks: str, tools: Sequence[Tool | ToolSchema] = TOOLS) -> tuple[list[str], CreateResult, FakeModel]:
    """Stream one reply made of `chunks` through the wrapper: what was shown, and the result."""
    model = FakeModel(list(chunks))
    shown: list[str] = []
    result: CreateResult | None = None
    async for item in TextToolCalls(model).create_stream(ASK, tools=tools):
        if isinstance(item, str):
            shown.append(item)
        else:
            result = item
    assert result is not None
    return shown, result, model


async def created(text: str, tools: Sequence[Tool | ToolSchema] = TOOLS) -> CreateResult:
    return await TextToolCalls(FakeModel(text)).create(ASK, tools=tools)


def calls_of(result: CreateResult) -> list[tuple[str, dict[str, Any]]]:
    assert isinstance(result.content, list), result.content
    assert result.finish_reason == "function_calls"
    return [(c.name, json.loads(c.arguments)) for c in result.content]


# ------------------------------------------------------------------ reading calls


async def test_a_tool_call_block_becomes_a_function_call() -> None:
    result = await created('<tool_call>\n{"name": "harbour_code", "arguments": {"harbour": "Elsewhere"}}\n</tool_call>')
    assert calls_of(result) == [("harbour_code", {"harbour": "Elsewhere"})]
    assert result.usage == USAGE


async def test_two_blocks_become_two_calls_with_their_own_fresh_ids() -> None:
    text = (
        '<tool_call>{"name": "harbour_code", "arguments": {"harbour": "A"}}</tool_call>\n'
        '<tool_call>{"name": "tide", "arguments": {"port": "B", "day": 3}}</tool_call>'
    )
    first, second = await created(text), await created(text)
    assert calls_of(first) == [("harbour_code", {"harbour": "A"}), ("tide", {"port": "B", "day": 3})]
    ids = [c.id for r in (first, second) for c in r.content if isinstance(c, FunctionCall)]
    assert len(set(ids)) == 4 and all(ids)


async def test_a_fenced_call_with_string_arguments_and_no_closing_tag_is_still_a_call() -> None:
    fenced = '```xml\n<tool_call>\n```json\n{"name": "tide", "arguments": "{\\"port\\": \\"B\\", \\"day\\": 1}"}\n```'
    assert calls_of(await created(fenced)) == [("tide", {"port": "B", "day": 1})]
    unclosed = '<tool_call>\n  {"name": "harbour_code", "arguments": {"harbour": "C"}}  '
    assert calls_of(await created(unclosed)) == [("harbour_code", {"harbour": "C"})]


async def test_the_call_json_without_its_tags_is_a_call_of_a_known_tool_only() -> None:
    # Qwen2.5-Coder, asked for tags, mostly writes the bare JSON.
    bare = '{"name": "harbour_code", "arguments": {"harbour": "Elsewhere"}}'
    assert calls_of(await created(bare)) == [("harbour_code", {"harbour": "Elsewhere"})]
    assert calls_of(await created(f"```json\n{bare}\n```")) == [("harbour_code", {"harbour": "Elsewhere"})]
    for text in ('{"name": "Ada", "arguments": {"age": 3}}', '{"name": "harbour_code"}', 'He said {"name": 1}'):
        result = await created(text)
        assert result.content == text and result.finish_reason == "stop"


async def test_a_call_of_a_tool_the_agent_lacks_still_goes_to_autogen_which_tells_the_model() -> None:
    result = await created('<tool_call>{"name": "weather", "arguments": {}}</tool_call>')
    assert calls_of(result) == [("weather", {})]


async def test_a_malformed_call_is_an_answer_in_words_not_a_crash() -> None:
    for text in (
        '<tool_call>{"name": "tide", "arguments": {"port": </tool_call>',
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"name": "tide", "arguments": [1, 2]}</tool_call>',
        '<tool_call>{"name": "tide", "arguments": "not json"}</tool_call>',
        '<tool_call>{"name": "tide", "arguments": {}}</tool_call><tool_call>oops</tool_call>',
        "<tool_call>",
    ):
        result = await created(text)
        assert result.content == text, text
        assert result.finish_reason == "stop" and result.usage == USAGE


async def test_words_before_a_call_are_its_thought_and_a_made_up_response_after_it_is_dropped() -> None:
    text = (
        'Let me look.\n<tool_call>{"name": "tide", "arguments": {"port": "B", "day": 2}}</tool_call>\n'
        "<tool_response>low</tool_response>\nThe tide is low."
    )
    result = await created(text)
    assert calls_of(result) == [("tide", {"port": "B", "day": 2})]
    assert result.thought == "Let me look."


# ------------------------------------------------------------------ what the model is sent


async def test_tools_go_in_the_system_message_in_the_models_own_format_and_never_to_the_server() -> None:
    _, _, model = await answer("Hello.")
    [(messages, kwargs)] = model.requests
    assert kwargs["tools"] == [] and kwargs["tool_choice"] == "auto"
    system = messages[0]
    assert isinstance(system, SystemMessage)
    assert system.content.startswith("You are a pilot.\n\n# Tools\n")
    tools_json = system.content.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()
    listed = [json.loads(line) for line in tools_json]
    assert [t["function"]["name"] for t in listed] == ["harbour_code", "tide"]
    schema = {k: v for k, v in FunctionTool(harbour_code, "Entry codes").schema.items() if k != "strict"}
    assert listed[0] == {"type": "function", "function": schema}
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' in system.content
    assert "When a <tool_response> arrives, answer the original question using that result." in system.content
    last = messages[-1]
    assert isinstance(last, UserMessage) and last.content == (
        "Code for Port Elsewhere?\n\n(Tools you can call: harbour_code, tide.)"
    )


async def test_earlier_calls_and_results_are_sent_as_plain_text_never_empty_content() -> None:
    call = FunctionCall(id="c1", name="tide", arguments='{"port": "B", "day": 2}')
    history: list[LLMMessage] = [
        *ASK,
        AssistantMessage(content=[call], thought="Checking.", source="pilot"),
        FunctionExecutionResultMessage(
            content=[FunctionExecutionResult(content="low", name="tide", call_id="c1", is_error=False)]
        ),
    ]
    model = FakeModel("It is low.", "It is low.")
    wrapper = TextToolCalls(model)
    # With tools, and without (AutoGen's reflection on the result asks with none).
    assert (await wrapper.create(history, tools=TOOLS)).content == "It is low."
    assert (await wrapper.create(history, tool_choice="none")).content == "It is low."
    for messages, kwargs in model.requests:
        assert kwargs["tools"] == []
        assert all(isinstance(m.content, str) and m.content for m in messages), messages
        assert [type(m).__name__ for m in messages] == [
            "SystemMessage",
            "UserMessage",
            "AssistantMessage",
            "UserMessage",
        ]
        assert (
            messages[2].content
            == 'Checking.\n<tool_call>\n{"name": "tide", "arguments": {"port": "B", "day": 2}}\n</tool_call>'
        )
        assert messages[3].content == "<tool_response>\nlow\n</tool_response>"
        assert "When a <tool_response> arrives" in str(messages[0].content)
    with_tools, reflecting = (str(m[0].content) for m, _ in model.requests)
    assert "<tools>" in with_tools and "<tools>" not in reflecting


async def test_without_tools_everything_passes_straight_through() -> None:
    model = FakeModel(["<tool_call>", ' {"name": "tide"}'], "plain")
    wrapper = TextToolCalls(model)
    streamed = [item async for item in wrapper.create_stream(ASK, extra_create_args={"seed": 1})]
    assert streamed[:2] == ["<tool_call>", ' {"name": "tide"}']
    assert isinstance(streamed[2], CreateResult) and streamed[2].content == '<tool_call> {"name": "tide"}'
    assert (await wrapper.create(ASK)).content == "plain"
    for messages, kwargs in model.requests:
        assert messages == ASK
        assert kwargs["extra"] == {"seed": 1} or kwargs["extra"] == {}


async def test_the_wrapper_says_it_can_call_functions_and_passes_on_the_rest() -> None:
    model = FakeModel()
    wrapper = TextToolCalls(model)
    assert wrapper.model_info["function_calling"] is True
    assert wrapper.model_info["family"] == ModelFamily.UNKNOWN
    assert wrapper.capabilities["function_calling"] is True
    assert wrapper.actual_usage() == USAGE and wrapper.total_usage().prompt_tokens == 100
    assert wrapper.count_tokens(ASK) == 42 and wrapper.remaining_tokens(ASK) == 4000
    await wrapper.close()
    assert model.closed


# ------------------------------------------------------------------ streaming


async def test_a_streamed_call_never_shows_its_json() -> None:
    shown, result, _ = await answer(
        "<", "tool", "_ca", "ll>\n", '{"name": "tide", ', '"arguments": {"port": "B", ', '"day": 1}}\n</tool_call>'
    )
    assert shown == []
    assert calls_of(result) == [("tide", {"port": "B", "day": 1})]
    assert result.usage == USAGE


async def test_a_streamed_bare_call_never_shows_its_json() -> None:
    shown, result, _ = await answer("{", '"name', '": "harbour_code", "arguments": {"harbour": "A"}}')
    assert shown == []
    assert calls_of(result) == [("harbour_code", {"harbour": "A"})]


async def test_words_before_a_streamed_call_show_and_the_call_does_not() -> None:
    shown, result, _ = await answer(
        "I will check", " the tide.\n", "```", "xml\n<tool_", 'call>{"name": "tide", "arguments": {}}'
    )
    assert "".join(shown) == "I will check the tide.\n"
    assert calls_of(result) == [("tide", {})]
    assert result.thought == "I will check the tide."


async def test_text_that_only_looks_like_a_call_at_first_is_shown_in_full_and_in_order() -> None:
    chunks = [
        "if a <",
        " b then <b>bold</b> ",
        "{",
        "x} ``",
        "`python\n",
        "print(1)\n```\n",
        '{"name": "Ada"',
        "} <tool_",
    ]
    shown, result, _ = await answer(*chunks)
    text = "".join(chunks)
    assert "".join(shown) == text == result.content
    assert result.finish_reason == "stop"
    # Held back only while it could still have been a call: "if a " went out before "<" arrived.
    assert shown[0] == "if a "


async def test_a_streamed_call_that_turns_out_malformed_is_shown_at_the_end() -> None:
    chunks = ["<tool_call>", '{"name": "tide", "arguments": {"port"', "</tool_call>"]
    shown, result, _ = await answer(*chunks)
    assert "".join(shown) == "".join(chunks) == result.content
    assert shown[-1] == "".join(chunks)  # nothing of it before the end


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from(["Tide", " is ", "<", "tool", "_call>", "{", '"name"', ": ", "`", "\n", "x", "}"]), max_size=14
    ),
    st.data(),
)
def test_however_a_text_is_cut_into_chunks_it_is_shown_whole_and_once(parts: list[str], data: st.DataObject) -> None:
    text = "".join(parts)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=6)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    shown, result, _ = asyncio.run(answer(*chunks))
    if isinstance(result.content, str):
        assert "".join(shown) == text == result.content
    else:
        assert text.startswith("".join(shown))


async def test_an_assistant_agent_streams_calls_the_tool_and_answers_from_its_result() -> None:
    """AutoGen's own loop, as the participant runs it: stream, tools, reflection on the result."""
    model = FakeModel(
        ["<tool", '_call>\n{"name": "harbour_code", ', '"arguments": {"harbour": "Elsewhere"}}\n</tool_call>'],
        ["The code is ", "QUILLFISH-2071."],
    )
    agent = AssistantAgent(
        "pilot",
        model_client=TextToolCalls(model),
        workbench=StaticWorkbench([FunctionTool(harbour_code, description="Entry codes")]),
        model_client_stream=True,
        reflect_on_tool_use=True,
    )
    chunks: list[str] = []
    results: list[FunctionExecutionResult] = []
    final = ""
    async for event in agent.on_messages_stream([TextMessage(content="Code?", source="user")], CancellationToken()):
        if isinstance(event, ModelClientStreamingChunkEvent):
            chunks.append(event.content)
        elif isinstance(event, ToolCallExecutionEvent):
            results += event.content
        elif isinstance(event, Response):
            final = event.chat_message.to_text()
    assert [r.content for r in results] == ["Elsewhere: QUILLFISH-2071"]
    assert final == "The code is QUILLFISH-2071." == "".join(chunks)
    reflection = model.requests[1][0]
    assert all(isinstance(m.content, str) and m.content for m in reflection)
    assert reflection[-1].content == "<tool_response>\nElsewhere: QUILLFISH-2071\n</tool_response>"
