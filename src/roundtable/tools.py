"""Tools an agent can call, and the journal that makes each call happen once per turn.

The config's `agents[].tools` become AutoGen workbenches: Python functions (`FunctionTool` in
a `StaticWorkbench`) and MCP servers (`McpWorkbench`, by stdio or streamable HTTP), one set per
agent process. Each conversation's participant sees them through `JournaledWorkbench`: the
manager records every call before it runs and after, keyed by conversation, turn and call
index, so a turn asked again (after any crash) replays what was recorded instead of calling again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import inspect
import json
import logging
import math
import re
import typing
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from autogen_core import CancellationToken, TopicId
from autogen_core.models import ChatCompletionClient
from autogen_core.tools import FunctionTool, StaticWorkbench, TextResultContent, ToolResult, ToolSchema, Workbench
from pydantic import BaseModel

from .config import AgentConfig, CodeConfig, ConfigError, McpServerConfig, ToolConfig
from .crashpoints import crash_point
from .messages import (
    CONTROL,
    MAX_TOOL_RESULT_CHARS,
    ToolCallDecision,
    ToolCallFinished,
    ToolCallStarted,
    call_signature,
    new_id,
    topic,
)

log = logging.getLogger("roundtable.tools")

#: How long a participant waits for the manager's word on one call before asking again, and
#: in all before giving up on the call (it is then not run, and the model is told why).
DECISION_RESEND = 3.0
DECISION_TIMEOUT = 60.0
#: How long an MCP server may take at agent start to start and list its tools.
MCP_LIST_TIMEOUT = 30.0


class ToolsUnavailable(Exception):
    """A tool could not be loaded or an MCP server could not be reached; the message says which."""


# ---------------------------------------------------------------- what a running tool can know


@dataclass(frozen=True)
class ToolCall:
    """The call being run. `key` is the same for every attempt of this call: pass it on to the
    outside system (as an idempotency key) so that even a call run twice has one effect."""

    conversation_id: str
    turn_id: str
    index: int  # the how-manieth call of this tool with these arguments in the turn
    key: str


_current_call: contextvars.ContextVar[ToolCall | None] = contextvars.ContextVar("roundtable_tool_call", default=None)


def current_call() -> ToolCall | None:
    """Inside a tool: the call being run (`current_call().key` is its idempotency key)."""
    return _current_call.get()


# ---------------------------------------------------------------- config -> workbenches


def load_object(path: str, where: str) -> Any:
    """`package.module:attribute`, or a ConfigError naming `where` and what is wrong."""
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:  # an import runs the user's code: anything can go wrong there
        raise ConfigError(f"{where}: cannot import {module_name!r}: {type(error).__name__}: {error}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{where}: {module_name!r} has no {attribute!r}")
        target = getattr(target, part)
    return target


def _in_a_thread(func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` as a coroutine function run by `asyncio.to_thread`, which (unlike the executor
    FunctionTool uses for plain functions) carries `current_call()` into the thread."""
    hints = typing.get_type_hints(func, include_extras=True)  # resolved here, in func's own module
    signature = inspect.signature(func, eval_str=True)

    async def call(**kwargs: Any) -> Any:
        return await asyncio.to_thread(func, **kwargs)

    call.__signature__ = signature  # type: ignore[attr-defined]  # what inspect.signature reads
    call.__annotations__ = hints
    call.__name__ = getattr(func, "__name__", "tool")
    call.__doc__ = func.__doc__
    return call


def function_tool(path: str, where: str) -> FunctionTool:
    func = load_object(path, where)
    if not callable(func):
        raise ConfigError(f"{where}: {path!r} is not a function")
    doc = (getattr(func, "__doc__", None) or "").strip()
    try:
        runnable = func if inspect.iscoroutinefunction(func) else _in_a_thread(func)
        return FunctionTool(runnable, description=doc or f"the function {path}", name=getattr(func, "__name__", None))
    except Exception as error:  # FunctionTool reads the signature: untyped or odd ones fail here
        raise ConfigError(f"{where}: {path!r} cannot be a tool: {error}") from None


def mcp_workbench(server: McpServerConfig) -> Workbench:
    from autogen_ext.tools.mcp import McpWorkbench, StdioServerParams, StreamableHttpServerParams

    if server.command is not None:
        params: Any = StdioServerParams(
            command=server.command,
            args=server.args,
            env=server.env or None,
            cwd=server.cwd,
            # This bounds every request of the session, the first of which waits for the server to
            # start: let start() and JournaledWorkbench time out first, as they say what timed out
            # (at this one the session ends with a bare BrokenResourceError).
            read_timeout_seconds=MCP_LIST_TIMEOUT + server.timeout,
        )
    else:
        assert server.url is not None  # the config checks one of the two is set
        params = StreamableHttpServerParams(url=server.url, headers=server.headers or None, timeout=server.timeout)
    for handler in logging.getLogger().handlers:  # where autogen-ext's MCP records end up; one of each
        handler.addFilter(_MCP_SESSION_LOG)
    return McpWorkbench(server_params=params)


#: The code-execution tool's name, as the model sees it.
CODE_TOOL = "run_python"


def default_work_dir() -> Path:
    return Path.home() / ".cache" / "roundtable" / "work"


def code_tool(settings: CodeConfig, agent: str, conversation_id: str) -> FunctionTool:
    """`run_python` for one conversation: AutoGen's local command-line executor in a working
    directory of the conversation's own, so files one run writes are there for the next."""
    from autogen_core.code_executor import CodeBlock
    from autogen_ext.code_executors.local import LocalCommandLineCodeExecutor

    base = Path(settings.work_dir).expanduser() if settings.work_dir else default_work_dir()
    work = base / agent / re.sub(r"[^A-Za-z0-9_.-]", "_", conversation_id)
    work.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # It warns that it runs code on this machine: that is what `code:` asks for, and each
        # run is approved by a person unless the config says otherwise (README: Code execution).
        warnings.filterwarnings("ignore", message="Using LocalCommandLineCodeExecutor", category=UserWarning)
        executor = LocalCommandLineCodeExecutor(work_dir=work, timeout=max(1, math.ceil(settings.timeout)))

    async def run_python(code: Annotated[str, "a complete Python program; print() what you want to see"]) -> str:
        result = await executor.execute_code_blocks([CodeBlock(code=code, language="python")], CancellationToken())
        output = result.output.strip()
        if result.exit_code == _EXECUTOR_TIMEOUT:
            raise TimeoutError(f"the program ran longer than {executor.timeout} s and was stopped")
        if result.exit_code != 0:
            raise RuntimeError(f"the program exited with code {result.exit_code}: {output[-2000:]}")
        return output or "(the program printed nothing)"

    description = (
        "Run a Python program and get what it prints. Each run is a fresh process in the same"
        f" working directory; it may take up to {executor.timeout} s."
    )
    return FunctionTool(run_python, description=description, name=CODE_TOOL)


#: The exit code LocalCommandLineCodeExecutor gives a program it stopped for running too long.
_EXECUTOR_TIMEOUT = 124


def describe_server(server: McpServerConfig) -> str:
    return (
        f"MCP server {server.url}" if server.url else f"MCP server `{' '.join([server.command or '', *server.args])}`"
    )


@dataclass
class _McpSession:
    what: str  # describe_server(...)
    listed: bool = False  # its tools were listed: from then on a failure is news for the log


#: The MCP server whose session runs in the current task: McpWorkbench runs each session in a
#: task of its own, which `_start_and_list` starts and so gives this.
_mcp_session: contextvars.ContextVar[_McpSession | None] = contextvars.ContextVar("roundtable_mcp", default=None)


class _McpSessionLog(logging.Filter):
    """autogen-ext logs a traceback when an MCP session ends on an error. At start that error is
    ToolsUnavailable's to report, so the record is dropped; later it becomes one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not record.name.startswith("autogen_ext.tools.mcp"):
            return True
        session = _mcp_session.get()
        if session is not None and not session.listed:
            return False
        what = session.what if session else "an MCP server"
        record.msg, record.args = "%s stopped answering: %s", (what, _one_line(error))
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


_MCP_SESSION_LOG = _McpSessionLog()


async def _start_and_list(workbench: Workbench, session: _McpSession) -> list[ToolSchema]:
    # No wait between the two: McpWorkbench.start only starts the session's task, and a request
    # queued after that task failed gets "MCP Actor not running" instead of the real error.
    token = _mcp_session.set(session)
    try:
        await workbench.start()
        return await workbench.list_tools()
    finally:
        _mcp_session.reset(token)


@dataclass
class AgentTools:
    """The tools of one agent process, shared by its conversations: `(source, workbench)`
    pairs, where source is the entry's index in `agents[].tools`."""

    settings: AgentConfig
    workbenches: list[tuple[int, Workbench]] = field(default_factory=list)
    listed: dict[int, list[ToolSchema]] = field(default_factory=dict)  # by source, at start
    code: list[tuple[int, CodeConfig]] = field(default_factory=list)  # a workbench per conversation

    @property
    def names(self) -> dict[int, list[str]]:
        return {source: [t["name"] for t in tools] for source, tools in self.listed.items()}

    @classmethod
    def from_config(cls, settings: AgentConfig) -> AgentTools:
        tools = cls(settings)
        functions: list[tuple[int, FunctionTool]] = []
        for i, entry in enumerate(settings.tools):
            where = f"agents.{settings.name}.tools[{i}]"
            if entry.function is not None:
                functions.append((i, function_tool(entry.function, where + ".function")))
            elif entry.mcp is not None:
                tools.workbenches.append((i, mcp_workbench(entry.mcp)))
            elif entry.code is not None:
                tools.code.append((i, entry.code))
        # One StaticWorkbench per function keeps each call's source (and so its policy) known.
        tools.workbenches[:0] = [(i, StaticWorkbench([tool])) for i, tool in functions]
        return tools

    async def start(self) -> None:
        """Start the MCP servers and list every tool; ToolsUnavailable names a server that fails."""
        for source, workbench in self.workbenches:
            entry = self.settings.tools[source]
            session = _McpSession(describe_server(entry.mcp) if entry.mcp else f"tool {entry.function}")
            try:
                listed = await asyncio.wait_for(_start_and_list(workbench, session), MCP_LIST_TIMEOUT)
            except Exception as error:
                detail = "timed out" if isinstance(error, asyncio.TimeoutError) else _one_line(error)
                raise ToolsUnavailable(f"{self.settings.name}: {session.what} is not available: {detail}") from None
            session.listed = True
            self.listed[source] = listed
            log.info("%s: tools %s", self.settings.name, ", ".join(t["name"] for t in listed) or "(none)")

    async def stop(self) -> None:
        for _, workbench in self.workbenches:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(workbench.stop(), 10)

    def policy(self, source: int) -> ToolConfig:
        return self.settings.tools[source]


def _one_line(error: BaseException) -> str:
    # MCP and anyio wrap failures in exception groups: the first leaf says what happened.
    while isinstance(inner := getattr(error, "exceptions", None), tuple) and inner:
        error = inner[0]
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def result_text(result: ToolResult) -> str:
    text = "\n".join(c.content for c in result.result if isinstance(c, TextResultContent))
    if len(text) > MAX_TOOL_RESULT_CHARS:
        text = text[:MAX_TOOL_RESULT_CHARS] + f"\n[cut: the result had {len(text)} characters]"
    return text


def _result(name: str, text: str, is_error: bool) -> ToolResult:
    return ToolResult(name=name, result=[TextResultContent(content=text)], is_error=is_error)


# ---------------------------------------------------------------- the journal


Publish = Callable[[BaseModel, TopicId], Awaitable[None]]


class Journal:
    """One conversation's side of the tool-call journal (a participant's, so one turn at a
    time). Before each call it asks the manager, which records the call and answers run,
    replay or skip; after a run it reports the result until the manager has stored it."""

    def __init__(self, agent: str, conversation_id: str, publish: Publish) -> None:
        self._agent = agent
        self._conversation_id = conversation_id
        self._publish = publish
        self._turn_id = ""
        self._attempt = ""
        self._seen: dict[str, int] = {}  # calls made this turn, by signature
        self._waiting: dict[tuple[str, str, int, str], asyncio.Future[ToolCallDecision]] = {}

    @property
    def conversation_id(self) -> str:
        return self._conversation_id

    def begin_turn(self, turn_id: str) -> None:
        """A new turn, or the same one asked again: either way a new attempt at it."""
        self._turn_id, self._attempt, self._seen = turn_id, new_id(), {}

    def on_decision(self, decision: ToolCallDecision) -> None:
        kind = "recorded" if decision.action == "recorded" else "decision"
        waiter = self._waiting.get((decision.turn_id, decision.call, decision.index, kind))
        if waiter is not None and not waiter.done():
            waiter.set_result(decision)

    async def _ask(self, message: ToolCallStarted | ToolCallFinished, call: str, kind: str) -> ToolCallDecision | None:
        """Send `message` until the manager answers it, within DECISION_TIMEOUT of its last
        word: while a person is asked to approve the call, the manager answers `wait` (and
        bounds that wait itself)."""
        loop = asyncio.get_running_loop()
        key = (message.turn_id, call, message.index, kind)
        deadline = loop.time() + DECISION_TIMEOUT
        send = True
        try:
            while loop.time() < deadline:
                waiter: asyncio.Future[ToolCallDecision] = loop.create_future()
                self._waiting[key] = waiter
                if send:
                    await self._publish(message, topic(CONTROL, self._conversation_id))
                try:
                    decision = await asyncio.wait_for(waiter, DECISION_RESEND)
                except asyncio.TimeoutError:
                    send = True
                    continue
                if decision.action != "wait":
                    return decision
                # A person's answer comes by itself; ask again only if it does not come soon.
                deadline, send = loop.time() + DECISION_TIMEOUT, False
            return None
        finally:
            self._waiting.pop(key, None)

    async def call(
        self, source: int, name: str, arguments: Mapping[str, Any], run: Callable[[], Awaitable[ToolResult]]
    ) -> ToolResult:
        text = json.dumps(dict(arguments), sort_keys=True, default=str)
        call = call_signature(name, text)
        index = self._seen.get(call, 0)
        self._seen[call] = index + 1
        started = ToolCallStarted(
            conversation_id=self._conversation_id,
            turn_id=self._turn_id,
            index=index,
            agent=self._agent,
            tool=name,
            arguments=text,
            source=source,
            attempt=self._attempt,
        )
        decision = await self._ask(started, call, "decision")
        if decision is None:
            return _result(name, "not run: the manager did not record the call in time", True)
        if decision.action in ("replay", "skip"):
            return _result(name, decision.result, decision.is_error or decision.action == "skip")
        token = _current_call.set(ToolCall(self._conversation_id, self._turn_id, index, decision.key))
        crash_point("agent.tool.before_run")
        try:
            result = await run()
        except Exception as error:  # a tool's failure is the model's to hear about, not a crash
            result = _result(name, f"the tool failed: {_one_line(error)}", True)
        finally:
            _current_call.reset(token)
        crash_point("agent.tool.after_run")
        finished = ToolCallFinished(
            conversation_id=self._conversation_id,
            turn_id=self._turn_id,
            call=call,
            index=index,
            agent=self._agent,
            result=result_text(result),
            is_error=result.is_error,
        )
        if await self._ask(finished, call, "recorded") is None:
            log.warning("%s: the manager did not confirm the result of %s; it may run again", self._agent, name)
        return result


class JournaledWorkbench(Workbench):
    """A shared workbench seen through one conversation's journal. Starting and stopping
    belong to the agent process (`AgentTools`), not to a conversation."""

    def __init__(
        self,
        inner: Workbench,
        source: int,
        journal: Journal,
        timeout: float | None = None,
        listed: list[ToolSchema] | None = None,
    ) -> None:
        self._inner = inner
        self._source = source
        self._journal = journal
        self._timeout = timeout
        self._listed = listed

    async def list_tools(self) -> list[ToolSchema]:
        # The agent asks at every turn. The tools listed at start keep an MCP server that has
        # died from failing the whole turn: its calls fail instead, and the model hears why.
        return self._listed if self._listed is not None else await self._inner.list_tools()

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        cancellation_token: CancellationToken | None = None,
        call_id: str | None = None,
    ) -> ToolResult:
        async def run() -> ToolResult:
            call = self._inner.call_tool(name, arguments, cancellation_token, call_id)
            try:
                result = await (asyncio.wait_for(call, self._timeout) if self._timeout else call)
            except asyncio.TimeoutError:
                return _result(name, f"the tool did not answer within {self._timeout:g} s", True)
            if result.is_error and not result_text(result).strip():
                # A workbench words an error as str(exception), which can be empty: an MCP
                # server that died gives a bare ClosedResourceError.
                return _result(name, "the tool failed and gave no reason (an MCP server may have stopped)", True)
            return result

        return await self._journal.call(self._source, name, arguments or {}, run)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def reset(self) -> None:
        pass

    async def save_state(self) -> Mapping[str, Any]:
        return {}

    async def load_state(self, state: Mapping[str, Any]) -> None:
        pass


def journaled(tools: AgentTools, journal: Journal) -> list[Workbench]:
    """The agent's tools for one conversation, every call through its journal."""
    out: list[Workbench] = []
    for source, workbench in tools.workbenches:
        entry = tools.policy(source)
        timeout = entry.mcp.timeout if entry.mcp is not None else None
        out.append(JournaledWorkbench(workbench, source, journal, timeout, tools.listed.get(source)))
    for source, code in tools.code:
        runner = StaticWorkbench([code_tool(code, tools.settings.name, journal.conversation_id)])
        out.append(JournaledWorkbench(runner, source, journal))
    return out


# ---------------------------------------------------------------- your own agent


@dataclass(frozen=True)
class AgentContext:
    """What `agents[].factory` is called with, once per conversation. Give `workbench` to your
    agent for its tools: calls through it are journaled (run once per turn, shown, stored)."""

    name: str
    description: str
    system_message: str
    model_client: ChatCompletionClient
    workbench: Sequence[Workbench]
    conversation_id: str
