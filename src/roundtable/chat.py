"""`roundtable chat`: start a conversation from the terminal and print it as it happens."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TextIO

from autogen_core import AgentRuntime

from . import clock
from .config import CONNECT_TIMEOUT, ConfigError
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
    ToolCallEvent,
    Usage,
    UsageUpdate,
    new_id,
    topic,
)
from .observer import register_observer
from .security import Security
from .worker import WorkerRuntime, connect_worker, stop_worker

#: How long to wait for the manager to take a new conversation before giving up.
START_TIMEOUT = 15.0
START_RETRY_EVERY = 1.0
#: After this long without a word of the conversation, ask the manager for it again.
QUIET_RESUME = 15.0


@dataclass
class Outcome:
    reason: str
    ok: bool
    messages: list[ChatMessage] = field(default_factory=list)


_TOOL_MARKS = {
    "done": ("⚙", "->"),
    "error": ("✗", "failed:"),
    "skipped": ("↷", "skipped:"),
    "denied": ("⊘", "not run:"),
    "awaiting": ("?", "needs approval."),
}


#: How much of a call's arguments its line shows; a call awaiting approval shows them whole.
ARGUMENTS_SHOWN = 80


def call_details(event: ToolCallEvent, max_lines: int = 60) -> str:
    """A call's arguments, one per line, multi-line values indented below their name: what a
    person reads before approving it (a program to run, say)."""
    try:
        arguments = json.loads(event.arguments)
        items = arguments.items() if isinstance(arguments, dict) else [("arguments", arguments)]
    except ValueError:
        items = [("arguments", event.arguments)]
    lines: list[str] = []
    for name, value in items:
        text = value if isinstance(value, str) else json.dumps(value)
        if "\n" in text:
            lines += [f"    {name}:"] + [f"      {line}" for line in text.splitlines()]
        else:
            lines.append(f"    {name}: {text}")
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], f"    … ({len(lines) - max_lines} more lines)"]
    return "\n".join(lines)


def tool_line(event: ToolCallEvent, width: int = 160) -> str:
    """`⚙ writer: count(label="x") -> 3`, `✗ ... failed: ...`, `↷ ... skipped: ...`,
    `⊘ ... not run: denied by ann` or `? ... needs approval.`, on one line."""
    try:
        arguments = ", ".join(f"{k}={json.dumps(v)}" for k, v in json.loads(event.arguments).items())
    except (ValueError, AttributeError):
        arguments = event.arguments
    if len(arguments) > ARGUMENTS_SHOWN:  # leave room for the outcome
        arguments = arguments[: ARGUMENTS_SHOWN - 1] + "…"
    call = f"{event.agent}: {event.tool}({arguments})"
    result = " ".join(event.result.split())
    mark, joint = _TOOL_MARKS.get(event.status, ("⚙", "..."))
    line = f"{mark} {call} {joint} {result}".rstrip()
    return line if len(line) <= width else line[: width - 1] + "…"


def usage_line(usage: Mapping[str, Usage]) -> str:
    """`writer 1,234 tokens, 2 tool calls; editor 456 tokens, 0 tool calls`"""
    return "; ".join(
        f"{agent} {u.tokens:,} tokens, {u.tool_calls} tool call{'' if u.tool_calls == 1 else 's'}"
        for agent, u in usage.items()
    )


class StdinLines:
    """Lines typed on standard input, read without blocking the event loop (and without a
    thread that would hold up the exit). `None` once input has ended or cannot be read."""

    def __init__(self) -> None:
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._buffer = b""
        self._fd: int | None = None
        self.echoed = sys.stdin is not None and sys.stdin.isatty()  # a terminal shows what is typed
        try:
            fd = sys.stdin.fileno()
            asyncio.get_running_loop().add_reader(fd, self._readable)
            self._fd = fd
        except (AttributeError, OSError, ValueError, PermissionError):
            self._lines.put_nowait(None)  # no stdin, or one the loop cannot watch (a plain file)

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except OSError:
            data = b""
        if not data:
            self.close()
            self._lines.put_nowait(None)
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._lines.put_nowait(line.decode(errors="replace").strip())

    async def next(self) -> str | None:
        line = await self._lines.get()
        if line is None:
            self._lines.put_nowait(None)  # ended for every later reader too
        return line

    def close(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None


#: Publishes a person's answer to a call awaiting approval.
Answer = Callable[[ToolCallEvent, bool], Awaitable[None]]
#: Publishes what a person at this terminal says, as the turn of a human seat.
Say = Callable[[str], Awaitable[None]]


class TerminalSink:
    """Prints one conversation: tokens as they stream, whole messages otherwise."""

    def __init__(self, conversation_id: str, out: TextIO, color: bool) -> None:
        self.conversation_id = conversation_id
        self.heard = asyncio.Event()
        self.ended: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.messages: list[ChatMessage] = []
        self._out = out
        self._color = color
        self._streaming: str | None = None  # the message whose tokens are being printed
        self._streamed = ""  # ... and what of it has been printed
        self._streaming_author = ""
        self._line_open = False
        self._asking: dict[tuple[str, str, int], asyncio.Task[None]] = {}
        self.last_heard = clock.monotonic()
        self._answer: Answer | None = None
        self._stdin: StdinLines | None = None
        self._announced: set[str] = set()  # turns whose speaker was shown
        self._seats: Collection[str] = ()  # human seats the person at this terminal takes
        self._say: Say | None = None
        self._turn: asyncio.Task[None] | None = None  # waiting for this person's words for a seat's turn

    def _hear(self) -> None:
        self.heard.set()
        self.last_heard = clock.monotonic()

    def take_answers(self, stdin: StdinLines, answer: Answer) -> None:
        """Ask a person at this terminal about calls awaiting approval."""
        self._stdin, self._answer = stdin, answer

    def take_seats(self, seats: Collection[str], say: Say) -> None:
        """Ask the person at this terminal for the turns of these human seats."""
        self._seats, self._say = seats, say

    async def _take_turn(self, seat: str) -> None:
        if self._stdin is None or self._say is None:
            return
        self._write(self._bold(f"  your turn ({seat}): "))
        while True:
            line = await self._stdin.next()
            if line is None:
                self._write("\n")
                self.notice("no terminal input: the turn waits for the page, or its timeout")
                return
            if line:
                if not self._stdin.echoed:
                    self._write(line + "\n")  # piped in: show the answer as a terminal would
                await self._say(line)
                return

    def _dim(self, text: str) -> str:
        return f"\x1b[2m{text}\x1b[0m" if self._color else text

    def _bold(self, text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if self._color else text

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def _close_line(self) -> None:
        if self._line_open:
            self._write("\n")
            self._line_open = False

    async def on_token(self, conversation_id: str, message_id: str, author: str, text: str) -> None:
        if conversation_id != self.conversation_id or self.ended.done():
            return  # after the end, only a late stream of an answer given up on can come: not shown
        self._hear()
        if self._streaming != message_id:
            if self._streaming is not None:
                # One speaker at a time: a new stream while another is open means that
                # one's author died mid-message. Its turn is being answered again.
                self._interrupt()
            self._close_line()
            self._write(self._bold(f"{author}: "))
            self._streaming, self._streamed, self._streaming_author = message_id, "", author
        elif not self._line_open:  # a notice came in between
            self._write(self._bold(f"{author} (continued): "))
        self._line_open = True
        self._streamed += text
        self._write(text)

    def _interrupt(self) -> None:
        """Mark the open stream as cut short."""
        if not self._line_open:  # a notice came in between: say whose message it was
            self._write(self._bold(f"{self._streaming_author} (continued): "))
        self._write(self._dim(" … (interrupted)"))
        self._line_open = True

    async def on_message(self, message: ChatMessage, streamed: bool) -> None:
        if message.conversation_id != self.conversation_id:
            return
        self._hear()
        self.messages.append(message)
        if self._streaming not in (None, message.id) and self._streaming_author == message.author:
            # Its author's newer message: the open stream will not go on (the observer drops the rest).
            self._interrupt()
            self._streaming = None
        if streamed and self._streaming == message.id:
            printed, self._streaming = self._streamed.strip(), None
            if message.content.startswith(printed):
                # Tokens can be lost on a broken connection; the stored message is whole.
                rest = message.content[len(printed) :]
                if rest:
                    if not self._line_open:
                        self._write(self._bold(f"{message.author} (continued): "))
                        self._line_open = True
                    self._write(rest)
                self._close_line()
                return
            self._write(self._dim(" … (shown whole below)"))
            self._line_open = True
        self._close_line()
        if message.kind == "task":
            self._write(self._bold(f"{message.author} (task): ") + message.content + "\n")
        else:
            self._write(self._bold(f"{message.author}: ") + message.content + "\n")

    def notice(self, text: str) -> None:
        """A line of our own between the messages (a lost connection, say)."""
        self._close_line()
        self._write(self._dim(f"· {text}") + "\n")

    async def on_speaker(self, event: SpeakerSelected) -> None:
        if event.conversation_id != self.conversation_id:
            return
        self._hear()
        if event.turn_id in self._announced:
            return  # announced again, by a manager that restarted
        if event.turn_id:
            self._announced.add(event.turn_id)
        self._close_line()
        note = f" ({event.note})" if event.note else ""
        self._write(self._dim(f"· {event.speaker} speaks next{note}") + "\n")
        if self._turn is not None:  # the turn it waited for was answered elsewhere (the page), or skipped
            self._turn.cancel()
            self._turn = None
        if event.speaker in self._seats:
            self._turn = asyncio.create_task(self._take_turn(event.speaker))

    async def on_tool(self, event: ToolCallEvent) -> None:
        """One line per call, when its outcome is known; a call awaiting approval asks y/n."""
        if event.conversation_id != self.conversation_id or (event.status == "started" and not event.result):
            return
        self._hear()
        self._close_line()
        where = (event.turn_id, event.call, event.index)
        if event.status == "awaiting":
            if where in self._asking:
                return  # asked already (the event came again after a reconnect)
            self._write(tool_line(event) + "\n" + call_details(event) + "\n")
            self._asking[where] = asyncio.create_task(self._ask(event))
            return
        asking = self._asking.pop(where, None)
        if asking is not None:
            asking.cancel()  # answered elsewhere (the page), or denied by its timeout
        self._write(self._dim(tool_line(event)) + "\n")

    async def _ask(self, event: ToolCallEvent) -> None:
        if self._answer is None or self._stdin is None:
            self.notice("waiting for a person to approve or deny it on the page")
            return
        deadline = time.strftime("%H:%M:%S", time.localtime(event.waits_until)) if event.waits_until else ""
        prompt = f"  approve? [y/n]{f' (denied at {deadline} if no answer)' if deadline else ''} "
        while True:
            self._write(self._bold(prompt))
            line = await self._stdin.next()
            if line is None:
                self._write("\n")
                self.notice("no terminal input: approve or deny it on the page")
                return
            if not self._stdin.echoed:
                self._write(line + "\n")  # piped in: show the answer as a terminal would
            word = line.lower()
            if word in ("y", "yes", "n", "no"):
                await self._answer(event, word.startswith("y"))
                return

    async def on_status(self, event: AgentStatus) -> None:
        if event.conversation_id != self.conversation_id:
            return
        self._close_line()
        state = "is reachable again" if event.reachable else "is unreachable (no heartbeat); waiting for it"
        self._write(self._dim(f"· {event.agent} {state}") + "\n")

    async def on_usage(self, event: UsageUpdate) -> None:
        pass  # a line after every turn would crowd the terminal: it says what was used at the end

    async def on_ended(self, event: ConversationEnded) -> None:
        if event.conversation_id != self.conversation_id or self.ended.done():
            return
        if self._turn is not None:
            self._turn.cancel()
        self._close_line()
        self._write(self._dim(f"· conversation ended: {event.reason}") + "\n")
        if any(u.tokens or u.tool_calls for u in event.usage.values()):
            self._write(self._dim(f"· used: {usage_line(event.usage)}") + "\n")
        self.ended.set_result(Outcome(event.reason, event.ok, list(self.messages)))


async def publish_until_heard(
    runtime: AgentRuntime, message: StartConversation | ResumeConversation, heard: asyncio.Event, timeout: float
) -> bool:
    """Publish a start (or an ask to send a conversation again) to the manager every
    START_RETRY_EVERY s until `heard` is set, for at most `timeout` s: publishing has no
    acknowledgement, and a manager may be starting. Whether it was heard. (The terminal's and
    the page's one loop.)"""
    deadline = clock.monotonic() + timeout
    while not heard.is_set():
        left = deadline - clock.monotonic()
        if left <= 0:
            return False
        await runtime.publish_message(message, topic(CONTROL, message.conversation_id))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(heard.wait(), min(START_RETRY_EVERY, left))
    return True


async def start_and_follow(
    runtime: AgentRuntime, task: str, sink: TerminalSink, timeout: float, start_timeout: float = START_TIMEOUT
) -> Outcome:
    """Publish the start until the manager answers, then wait for the end. Every wait is bounded."""
    start = StartConversation(conversation_id=sink.conversation_id, task=task)
    if not await publish_until_heard(runtime, start, sink.heard, start_timeout):
        raise TimeoutError(
            f"no manager took the conversation within {start_timeout:g} s: is `roundtable manager` running?"
        )
    deadline = clock.monotonic() + timeout
    while not sink.ended.done():
        left = deadline - clock.monotonic()
        if left <= 0:
            raise TimeoutError(f"the conversation did not end within {timeout:g} s")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(sink.ended), min(left, QUIET_RESUME))
        if not sink.ended.done() and clock.monotonic() - sink.last_heard >= QUIET_RESUME:
            # Nothing for a while: ask for the conversation again. A manager that died after
            # storing the end, but before announcing it, announces it then; we drop repeats.
            resume = ResumeConversation(conversation_id=sink.conversation_id)
            await runtime.publish_message(resume, topic(CONTROL, sink.conversation_id))
    return sink.ended.result()


async def run_chat(
    host: str,
    task: str,
    timeout: float,
    connect_timeout: float = CONNECT_TIMEOUT,
    start_timeout: float = START_TIMEOUT,
    out: TextIO | None = None,
    security: Security | None = None,
    runtime: WorkerRuntime | None = None,
    answer_as: str | None = None,
    seats: Collection[str] = (),
) -> Outcome:
    """Start a conversation and print it until it ends; on `runtime`, a started worker, if given
    (the in-memory transport's, say), else on a new connection to `host`. Stops the runtime."""
    if not task.strip():
        raise ConfigError("the task is empty: say what the agents should work on")
    if len(task) > MAX_CONTENT_CHARS:
        raise ConfigError(f"the task is too long: {len(task)} characters (the limit is {MAX_CONTENT_CHARS})")
    out = out or sys.stdout
    sink = TerminalSink(new_id(), out, color=out.isatty())
    runtime = runtime or await connect_worker(host, connect_timeout, security)
    # Our own warnings (a lost host, a reconnect) go between the messages, not through them.
    handler = _NoticeHandler(sink)
    roundtable_log = logging.getLogger("roundtable")
    roundtable_log.addHandler(handler)
    roundtable_log.propagate = False

    async def catch_up() -> None:
        # Whatever was published while we were away reaches us again; we drop what we have.
        resume = ResumeConversation(conversation_id=sink.conversation_id)
        await runtime.publish_message(resume, topic(CONTROL, sink.conversation_id))

    async def answer(event: ToolCallEvent, approved: bool) -> None:
        approval = event.answer(approved, by=f"{_who()} (terminal)")
        await runtime.publish_message(approval, topic(CONTROL, event.conversation_id))

    async def say(text: str) -> None:
        words = HumanMessage(conversation_id=sink.conversation_id, author=answer_as or _who(), content=text)
        await runtime.publish_message(words, topic(CONTROL, sink.conversation_id))

    runtime.on_reconnect(catch_up)
    stdin = StdinLines()
    sink.take_answers(stdin, answer)
    sink.take_seats(seats, say)
    try:
        await register_observer(runtime, f"terminal_{new_id()[:12]}", sink)
        return await start_and_follow(runtime, task, sink, timeout, start_timeout)
    finally:
        stdin.close()
        roundtable_log.removeHandler(handler)
        roundtable_log.propagate = True
        await stop_worker(runtime)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container, say)
        return "someone"


class _NoticeHandler(logging.Handler):
    def __init__(self, sink: TerminalSink) -> None:
        super().__init__(logging.WARNING)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self._sink.notice(record.getMessage())
