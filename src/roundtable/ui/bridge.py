"""Between the group chat and the browser tabs: the observer's sink for the whole UI process.

Each tab is a Chainlit session with its own conversation (in seed mode, all follow the tutorial's
one). Events arrive on AutoGen's tasks, so each call into a tab first binds Chainlit's context to it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import chainlit as cl
from autogen_core import AgentRuntime
from chainlit.context import init_ws_context
from chainlit.data import get_data_layer
from chainlit.session import WebsocketSession
from chainlit.step import StepDict
from chainlit.types import ThreadDict
from chainlit.utils import utc_now
from pydantic import ValidationError

from ..chat import QUIET_RESUME, publish_until_heard, usage_line
from ..messages import (
    CONTROL,
    MAX_CONTENT_CHARS,
    SEED_SOURCE,
    AgentStatus,
    ChatMessage,
    ConversationEnded,
    HumanMessage,
    ResumeConversation,
    SpeakerSelected,
    StartConversation,
    StopConversation,
    ToolCallEvent,
    Usage,
    UsageUpdate,
    new_id,
    topic,
)
from .avatars import ensure_avatar
from .rooms import KEEP_ENDED, LOCAL_USER, Room, Shown, origin_of, requested_room, stopper
from .settings import STATUS_AUTHOR, PageSettings

log = logging.getLogger("roundtable.ui")

STOP_ACTION = "stop_conversation"
APPROVE_ACTION = "approve_tool_call"
DENY_ACTION = "deny_tool_call"
#: What roundtable.js posts when the page has moved to a tab's thread, closing the side panel.
REDRAW_PANEL = "roundtable:redraw-panel"
#: The arguments a request for approval shows in full; longer ones are cut (the step has them all).
SHOWN_ARGUMENTS = 500
#: The thread's metadata key for the conversation it shows, so a reopened tab can find it again.
CONVERSATION_KEY = "roundtable_conversation"
#: Added to a stream whose author died mid-message (the words the terminal uses).
INTERRUPTED = " … (interrupted)"
#: How long a stop may wait for the manager's word before the page ends the conversation itself.
STOP_GRACE = 5.0
#: A conversation's last whole message can arrive a moment after its end (AutoGen does not keep
#: order), so the page listens this long after the end before it lets the conversation go.
END_GRACE = 1.0
SEED_NOTE = (
    "This page follows the tutorial's writer and editor (seed mode: they talk on `conversation_topic`, "
    "with no manager to pass your words to). Start the page with `roundtable ui` to run your own conversations."
)


def step_id(thread_id: str, message_id: str) -> str:
    """One Chainlit step per message and thread, the same however often it is delivered."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"roundtable:{thread_id}:{message_id}"))


def conversation_of(thread: ThreadDict) -> str | None:
    """The conversation a thread shows: the one its latest line of ours names (a thread shows a
    new conversation for each new task), else the one Chainlit kept from the tab's session."""
    steps = sorted(thread.get("steps") or [], key=lambda step: step.get("createdAt") or "")
    for step in reversed(steps):
        conversation_id = (step.get("metadata") or {}).get("conversation_id")
        if isinstance(conversation_id, str):
            return conversation_id
    metadata = thread.get("metadata") or {}
    kept = metadata.get(CONVERSATION_KEY) if isinstance(metadata, dict) else None
    return kept if isinstance(kept, str) else None


def tool_key(event: ToolCallEvent) -> str:
    """A tool call's own name on the page, whatever its status."""
    return f"tool:{event.turn_id}:{event.call}:{event.index}"


def deadline(event: ToolCallEvent) -> str:
    """When a call awaiting approval is denied unless someone answers, as the page says it."""
    if not event.waits_until:
        return ""
    return f" (denied at {time.strftime('%H:%M:%S', time.localtime(event.waits_until))} if no one answers)"


def approval_question(event: ToolCallEvent) -> str:
    """What the line with Approve and Deny says: who wants to run what, with which arguments."""
    shown = event.arguments
    if len(shown) > SHOWN_ARGUMENTS:
        shown = shown[:SHOWN_ARGUMENTS] + "…"
    # A fence longer than any run of backticks in the arguments, so they cannot close it.
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", shown)), default=0))
    note = f"\n\n{event.result}" if event.result else ""  # what the manager asks, if anything
    return (
        f"**{event.agent}** wants to run `{event.tool}`{note}\n\n{fence}json\n{shown}\n{fence}\n\n"
        f"Approve it?{deadline(event)}"
    )


def usage_so_far(event: UsageUpdate) -> str:
    """`Used so far: writer 40 of 100 tokens, 0 tool calls; editor 12 tokens, 0 tool calls`, with
    "of N" where a limit is set, and the conversation's own limit after the agents when it has one."""

    def amount(used: int, limit: int, unit: str) -> str:
        if limit:
            return f"{used:,} of {limit:,} {unit}s"
        return f"{used:,} {unit}{'' if used == 1 else 's'}"

    def against(used: Usage, limit: Usage) -> str:
        return f"{amount(used.tokens, limit.tokens, 'token')}, {amount(used.tool_calls, limit.tool_calls, 'tool call')}"

    parts = [f"{agent} {against(used, event.limits.get(agent, Usage()))}" for agent, used in event.usage.items()]
    whole = event.limits.get("", Usage())
    if whole.tokens or whole.tool_calls:
        total = Usage(
            tokens=sum(u.tokens for u in event.usage.values()),
            tool_calls=sum(u.tool_calls for u in event.usage.values()),
        )
        parts.append(f"all together {against(total, whole)}")
    return "Used so far: " + "; ".join(parts)


def any_counted(usage: dict[str, Usage]) -> bool:
    """Whether any token or tool call is counted (used, or allowed by a limit)."""
    return any(u.tokens or u.tool_calls for u in usage.values())


def status_line(event: AgentStatus) -> str:
    state = "is reachable again" if event.reachable else "is unreachable (no heartbeat); waiting for it"
    return f"**{event.agent}** {state}"


@dataclass
class Asking:
    """A call waiting for a person's answer, and the line with the Approve and Deny buttons."""

    event: ToolCallEvent
    question: cl.Message


class Tab:
    """One browser tab (a Chainlit session) and the conversation it shows."""

    def __init__(self, session: WebsocketSession, bridge: Bridge) -> None:
        self.session = session
        self.bridge = bridge
        self.conversation_id: str | None = None
        self.running = False
        self.watching = True  # the tab is open (a closed one still keeps its thread up to date)
        referer = session.environ.get("HTTP_REFERER")
        self.referer = referer if isinstance(referer, str) else None
        self.origin = origin_of(self.referer, f"http://{bridge.settings.bind_host}:{bridge.settings.port}")
        self.on_page: set[str] = set()  # message ids Chainlit shows already: the person's own words
        self.streams: dict[str, cl.Message] = {}
        self.cut: set[str] = set()  # streams marked as cut off
        self.stop_button: cl.Action | None = None
        self.tool_steps: dict[str, cl.Step] = {}
        self.asking: dict[str, Asking] = {}  # tool step key -> the call that waits for a person
        self.seed_run: str | None = None
        self.usage: UsageUpdate | None = None  # the latest word of what the agents used
        self.usage_line: cl.Message | None = None  # ... and the line that shows it
        self.stored: dict[str, StepDict] = {}  # step id -> as the thread showed it when this process took it up

    @property
    def user(self) -> str:
        return self.session.user.identifier if self.session.user else LOCAL_USER

    def enter(self) -> None:
        """Make Chainlit's calls below go to this tab, whichever task we are on."""
        init_ws_context(self.session)

    def _message(self, content: str, author: str, message_id: str | None = None, **kwargs: Any) -> cl.Message:
        self.enter()
        ensure_avatar(self.bridge.avatars_dir, author)
        message = cl.Message(content=content, author=author, **kwargs)
        if message_id is not None:
            message.id = step_id(self.session.thread_id, message_id)
        # Messages made from a Chainlit handler would nest under its run; these stand on their own.
        message.parent_id = None
        message.created_at = utc_now()  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated
        if self.conversation_id is not None:
            # Every line of ours says whose it is, so a later page process finds the conversation.
            message.metadata = {**(message.metadata or {}), "conversation_id": self.conversation_id}
        before = self.stored.get(message.id)
        if before is not None:  # on the page already, from the thread: it keeps its place
            message.created_at = before.get("createdAt") or message.created_at
        return message

    # ---------------------------------------------------------------- conversation events

    def begin(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.running = True
        self.streams.clear()
        self.cut.clear()
        self.usage, self.usage_line = None, None

    def take_up(self, conversation_id: str, steps: list[StepDict]) -> bool:
        """Follow a conversation whose thread this tab shows, though no tab of this page process
        showed it before (the process started since). What the thread has is on the page already,
        so the manager's sending it all again adds nothing twice. False if it has ended."""
        self.stored = {step["id"]: step for step in steps}
        if step_id(self.session.thread_id, f"end:{conversation_id}") in self.stored:
            return False
        self.begin(conversation_id)
        for step in steps:
            self.on_page.add(step["id"])  # a person's words keep their message id as step id
            message_id = (step.get("metadata") or {}).get("message_id")
            if isinstance(message_id, str):
                self.on_page.add(message_id)
        # The usage line moves down with each word of it, and goes at the end: from here as well.
        if self.stored.pop(step_id(self.session.thread_id, f"usage:{conversation_id}"), None) is not None:
            self.usage_line = self._message("", STATUS_AUTHOR, f"usage:{conversation_id}")
        return True

    async def tool(self, event: ToolCallEvent) -> None:
        """A collapsible step per tool call, shown as it starts and completed when it ends. A call
        awaiting approval also gets a line with Approve and Deny, gone once the call moves on."""
        key = tool_key(event)
        step = self.tool_steps.get(key)
        self.enter()
        if step is None:
            # The step stands alone on the page, so Chainlit draws it an avatar: the agent's, since
            # "<agent>: <tool>" is no name Chainlit serves one for (and the page waits for avatars).
            ensure_avatar(self.bridge.avatars_dir, event.agent)
            step = cl.Step(
                name=f"{event.agent}: {event.tool}",
                type="tool",
                show_input="json",
                metadata={"avatarName": event.agent, "conversation_id": event.conversation_id},
            )
            step.id = step_id(self.session.thread_id, key)
            step.parent_id = None
            step.input = event.arguments
            step.start = utc_now()  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated
            self.tool_steps[key] = step
            before = self.stored.get(step.id)
            if before is None:
                await self._put_step(step.to_dict(), new=True)
            else:  # on the page already, from the thread: it keeps its place, and an ended call its end
                step.created_at, step.start, step.end = before.get("createdAt"), before.get("start"), before.get("end")
                step.output, step.is_error = before.get("output") or "", bool(before.get("isError"))
        if step.end is not None:
            return  # an ended call stays as it ended, whatever word of it comes late or again
        if event.status == "awaiting":
            step.output = f"waiting for your approval{deadline(event)}"
            if event.result:
                step.output += f"\n\n{event.result}"
            await self._put_step(step.to_dict())
            if key not in self.asking:
                await self._ask(key, event)
            return
        await self._stop_asking(key)
        if event.status == "started":
            if event.result:  # approved by a person, or interrupted before and run again: it says so
                step.output = event.result
                await self._put_step(step.to_dict())
            return
        # A denial says so itself ("denied by ann", "denied: no one answered within 300 s").
        step.output = f"skipped: {event.result}" if event.status == "skipped" else event.result
        step.is_error = event.status != "done"
        step.end = utc_now()  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated
        await self._put_step(step.to_dict())

    async def _ask(self, key: str, event: ToolCallEvent) -> None:
        """The line under the call's step that asks for a yes or no. It is stored with the thread,
        so a reopened tab draws it again; its buttons live only as long as the page process."""
        question = self._message(approval_question(event), STATUS_AUTHOR, f"approval:{key}")
        payload = {"conversation_id": event.conversation_id, "tool_call": key}
        question.actions = [
            cl.Action(name=APPROVE_ACTION, payload=payload, label="Approve", icon="check", tooltip="Run this call"),
            cl.Action(name=DENY_ACTION, payload=payload, label="Deny", icon="x", tooltip="Do not run this call"),
        ]
        self.asking[key] = Asking(event, question)
        await self._put_step(question.to_dict(), new=True)
        await self._show_buttons(self.asking[key])

    async def _show_buttons(self, asking: Asking) -> None:
        for action in asking.question.actions:
            await action.send(for_id=asking.question.id)

    async def _stop_asking(self, key: str) -> None:
        asking = self.asking.pop(key, None)
        # A question the thread showed when this process took it up goes too, asked again or not.
        before = self.stored.pop(step_id(self.session.thread_id, f"approval:{key}"), None)
        question = asking.question.to_dict() if asking is not None else before
        if question is None:
            return
        self.enter()
        for action in asking.question.actions if asking is not None else []:
            await action.remove()  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated
        await self._delete_step(question)

    async def show_buttons_again(self) -> None:
        """A reopened tab: its thread brings back the questions, this their buttons."""
        self.enter()
        for asking in self.asking.values():
            await self._show_buttons(asking)

    async def _put_step(self, state: StepDict, new: bool = False, replacing: StepDict | None = None) -> None:
        """Store, then show, a step as it is now (in place of `replacing`, on the page). Chainlit's
        own send and update store in the background, each write on its own task, so a call's start
        could land after its end and undo it in the history; awaited here (events come one at a
        time), each write lands in order."""
        data_layer = get_data_layer()  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated
        if data_layer is not None:
            await data_layer.update_step(state.copy())  # an upsert: it makes the step the first time
        emitter = cl.context.emitter
        if replacing is not None:
            await emitter.delete_step(replacing)  # the new one follows at once: the page never lacks one
        await (emitter.send_step(state) if new else emitter.update_step(state))

    async def _delete_step(self, state: StepDict) -> None:
        """Take a step off the page and out of the history."""
        data_layer = get_data_layer()  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated
        if data_layer is not None:
            await data_layer.delete_step(state["id"])
        await cl.context.emitter.delete_step(state)

    async def token(self, message_id: str, author: str, text: str) -> None:
        message = self.streams.get(message_id)
        if message is None:
            # One speaker at a time: a new stream while another is open means that one's author
            # died mid-message, and its turn is being answered again. It says so, as in the
            # terminal; should its whole message come after all, that takes the mark's place.
            await self._cut_streams()
            message = self._message("", author, message_id)
            self.streams[message_id] = message
        self.enter()
        await message.stream_token(text)

    async def _cut_streams(self, author: str | None = None) -> None:
        """Mark the open streams (of this author) as cut short."""
        for cut_id, cut in self.streams.items():
            if cut_id not in self.cut and author in (None, cut.author):
                self.cut.add(cut_id)
                self.enter()
                await cut.stream_token(INTERRUPTED)

    async def message(self, chat: ChatMessage) -> None:
        if chat.id in self.on_page:
            return
        message = self.streams.pop(chat.id, None)
        await self._cut_streams(chat.author)  # its author's newer message: no other of theirs goes on
        if message is None:
            # A person's words read as one's own when they are (typed in another tab, or the seed's
            # opening line); another person's in a shared room stand under their name, as an agent's.
            own = chat.author == self.user or self.bridge.settings.seed
            kind = "user_message" if chat.kind in ("task", "human") and own else "assistant_message"
            message = self._message(chat.content, chat.author, chat.id, type=kind)
        self.enter()
        message.content = chat.content
        message.tags = [chat.kind]
        message.metadata = {"conversation_id": chat.conversation_id, "message_id": chat.id, "seq": chat.seq}
        await message.send()  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated

    async def speaker(self, event: SpeakerSelected) -> None:
        line = f"speaker:{event.turn_id}" if event.turn_id else None
        if line is not None:
            if step_id(self.session.thread_id, line) in self.on_page:
                return  # announced again, by a manager that restarted
            self.on_page.add(step_id(self.session.thread_id, line))
        note = f" ({event.note})" if event.note else ""
        await self.say(f"**{event.speaker}** speaks next{note}", stop_button=True, message_id=line)

    async def ended(self, event: ConversationEnded) -> None:
        self.running = False
        await self._drop_stop_button()
        await self._drop_usage_line()
        for key in list(self.asking):
            # The manager runs nothing more for an ended conversation. Not marked ended, though:
            # should its word that the call was answered just before come late, that still shows.
            step = self.tool_steps[key]
            step.output = "not run: the conversation ended before anyone answered"
            step.is_error = True
            await self._stop_asking(key)
            await self._put_step(step.to_dict())
        # The manager's word says what was used; a stop it never confirmed, the latest one before.
        usage = event.usage or (self.usage.usage if self.usage is not None else {})
        used = f"\n\nUsed: {usage_line(usage)}" if any_counted(usage) else ""
        # One end line per conversation, by which a page process taken up later knows it has ended.
        end = f"end:{event.conversation_id}"
        if event.ok:
            line = f"Conversation ended: {event.reason}. Type a new task to start another one.{used}"
            await self.say(line, message_id=end)
        else:
            await self.say(f"Conversation ended with an error: {event.reason}{used}", error=True, message_id=end)

    async def show_usage(self, event: UsageUpdate) -> None:
        """What each agent has used so far, on one quiet line that moves down to the latest turn,
        so it stays in sight; stored like the page's other lines, so a reload shows it too. The
        conversation's end takes it away, and the end line says what was used."""
        if self.usage is not None and (event.usage, event.limits) == (self.usage.usage, self.usage.limits):
            return  # the same again (a turn asked again, a reconnect): the line is right as it is
        self.usage = event
        if not any_counted(event.usage) and not any_counted(event.limits):
            return  # nothing used and nothing to use up: nothing worth a line yet
        # One step per conversation: each write moves it in the history too (it takes a new time).
        line = self._message(usage_so_far(event), STATUS_AUTHOR, f"usage:{event.conversation_id}")
        old, self.usage_line = self.usage_line, line
        await self._put_step(line.to_dict(), new=True, replacing=old.to_dict() if old else None)
        if not self.running:  # ended meanwhile (the page's own end of a stop, which does not wait its turn)
            await self._drop_usage_line()

    async def _drop_usage_line(self) -> None:
        line, self.usage_line = self.usage_line, None
        if line is not None:
            self.enter()
            await self._delete_step(line.to_dict())

    async def finish_streams(self) -> None:
        """Keep what a message had streamed when its conversation ended (a stop cuts it short)."""
        for message in self.streams.values():
            self.enter()
            message.metadata = {**(message.metadata or {}), "interrupted": True}
            await message.send()  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated
        self.streams.clear()

    async def show_room(self, room: Room) -> None:
        """The side panel of a room: who watches, and the link that lets others in. Not stored:
        it is drawn again whenever someone comes or goes."""
        self.enter()
        await cl.ElementSidebar.set_title("This conversation")
        await cl.ElementSidebar.set_elements([cl.Text(name="room", content=room.note(self.origin))])

    # ---------------------------------------------------------------- the page's own lines

    async def say(
        self, content: str, error: bool = False, stop_button: bool = False, message_id: str | None = None
    ) -> None:
        if stop_button:
            await self._drop_stop_button()
        message = self._message(content, STATUS_AUTHOR, message_id)
        message.is_error = error
        if stop_button and self.running:
            # The button travels with the latest line, so it stays next to what is happening.
            self.stop_button = cl.Action(
                name=STOP_ACTION,
                payload={"conversation_id": self.conversation_id},
                label="Stop",
                icon="square",
                tooltip="Stop this conversation",
            )
            message.actions = [self.stop_button]
        await message.send()  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated

    async def _drop_stop_button(self) -> None:
        if self.stop_button is not None:
            self.enter()
            await self.stop_button.remove()  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated
            self.stop_button = None

    # ---------------------------------------------------------------- seed mode

    async def show_seed_run(self, run: SeedRun) -> bool:
        """Follow the seed conversation in this tab, in a thread for this run and person.
        True when the tab has just caught up on everything the run has said so far."""
        if self.seed_run == run.key:
            return False
        self.enter()
        self.session.thread_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"roundtable-seed:{run.key}:{self.user}"))
        self.session.has_first_interaction = True
        self.streams.clear()
        self.seed_run = run.key
        await cl.context.emitter.init_thread(run.title)
        for chat in run.messages:
            await self.message(chat)
        for message_id, (author, text) in run.streaming.items():
            await self.token(message_id, author, text)
        return True


@dataclass
class SeedRun:
    """The tutorial's conversation as far as this process has seen it, for tabs opened later."""

    key: str
    title: str
    messages: list[ChatMessage] = field(default_factory=list)
    streaming: dict[str, tuple[str, str]] = field(default_factory=dict)  # message id -> (author, text so far)


class Bridge:
    """The sink for every conversation through this process (see observer.Sink): each event goes
    to its room, which keeps it for late joiners and shows it in every tab that follows it."""

    def __init__(self, runtime: AgentRuntime, settings: PageSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.avatars_dir = settings.app_root / "public" / "avatars"
        self._tabs: dict[str, Tab] = {}  # Chainlit session id -> tab
        self._rooms: dict[str, Room] = {}  # conversation id -> its room, oldest first
        self._seed: SeedRun | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    def tab(self, session: WebsocketSession) -> Tab:
        tab = self._tabs.get(session.id)
        if tab is None:
            self._live_tabs()
            tab = self._tabs[session.id] = Tab(session, self)
        return tab

    def _live_tabs(self) -> list[Tab]:
        """Tabs whose Chainlit session still exists; Chainlit drops a session some time after its
        tab is gone (a running conversation keeps its tabs through its room until it ends)."""
        live = [t for t in self._tabs.values() if WebsocketSession.get_by_id(t.session.id) is not None]
        if len(live) != len(self._tabs):
            self._tabs = {t.session.id: t for t in live}
        return live

    def _room(self, conversation_id: str, heard: bool = True) -> Room:
        """The conversation's room, made when first seen; `heard`: an event of it came, so the manager has it."""
        room = self._rooms.get(conversation_id)
        if room is None:
            room = self._rooms[conversation_id] = Room(conversation_id)
            self._forget_old_rooms()
        if heard:
            room.hear()
        return room

    def _forget_old_rooms(self) -> None:
        ended = [r for r in self._rooms.values() if not r.running and not any(t.watching for t in r.showing())]
        for room in ended[: max(0, len(ended) - KEEP_ENDED)]:
            del self._rooms[room.conversation_id]

    async def ask_when_quiet(self) -> None:
        """Runs for the life of the page. A running conversation that a tab shows and that has said
        nothing for QUIET_RESUME s is asked for again: a manager that died after storing its end,
        but before announcing it, announces it then (what the page has already is dropped)."""
        while True:
            await asyncio.sleep(QUIET_RESUME / 3)
            now = time.monotonic()
            for room in list(self._rooms.values()):
                if room.running and any(t.running for t in room.showing()) and now - room.last_heard >= QUIET_RESUME:
                    room.last_heard = now  # and again after as long, if still nothing
                    resume = ResumeConversation(conversation_id=room.conversation_id)
                    await self.runtime.publish_message(resume, topic(CONTROL, room.conversation_id))

    async def _end(self, tab: Tab, event: ConversationEnded) -> None:
        await tab.ended(event)
        self.spawn(self._let_go(tab, event.conversation_id))

    async def _let_go(self, tab: Tab, conversation_id: str) -> None:
        await asyncio.sleep(END_GRACE)
        if tab.conversation_id == conversation_id:  # no new conversation in the tab meanwhile
            await tab.finish_streams()
        room = self._rooms.get(conversation_id)
        if room is not None and not room.running:
            room.streaming.clear()
            room.tabs = [t for t in room.tabs if t.watching and t.conversation_id == conversation_id]

    # ---------------------------------------------------------------- observer.Sink

    async def on_token(self, conversation_id: str, message_id: str, author: str, text: str) -> None:
        if self.settings.seed and conversation_id == SEED_SOURCE:
            run = self._seed_run(message_id)
            before = run.streaming.get(message_id, (author, ""))[1]
            run.streaming[message_id] = (author, before + text)
            for tab in self._live_tabs():
                if not await tab.show_seed_run(run):
                    await tab.token(message_id, author, text)
            return
        room = self._room(conversation_id)
        async with room.lock:
            if not room.running:
                return  # after the end, only a late stream of an answer given up on can come: not shown
            room.stream(message_id, author, text)
            for tab in room.showing():
                if tab.running:
                    await tab.token(message_id, author, text)

    async def on_message(self, message: ChatMessage, streamed: bool) -> None:
        if self.settings.seed and message.conversation_id == SEED_SOURCE:
            if message.kind == "task" and message.seq == 0:
                self._seed = None  # the pair started over: a new run
            run = self._seed_run(message.id, message)
            run.streaming.pop(message.id, None)
            run.messages.append(message)
            for tab in self._live_tabs():
                if not await tab.show_seed_run(run):
                    await tab.message(message)
            return
        await self._show(message)

    async def on_speaker(self, event: SpeakerSelected) -> None:
        await self._show(event)

    async def on_status(self, event: AgentStatus) -> None:
        await self._show(event)

    async def on_tool(self, event: ToolCallEvent) -> bool:
        # Shown to no tab yet (the page restarted): the manager's sending it again counts.
        return await self._show(event)

    async def on_usage(self, event: UsageUpdate) -> None:
        room = self._room(event.conversation_id)
        async with room.lock:
            room.usage = event
            for tab in room.showing():
                if tab.running:
                    await tab.show_usage(event)

    async def on_ended(self, event: ConversationEnded) -> None:
        await self._show(event)

    async def _show(self, event: Shown) -> bool:
        """Keep the event in its room and show it in the room's tabs; whether any tab showed it."""
        room = self._room(event.conversation_id)
        async with room.lock:
            room.record(event)
            shown = False
            for tab in room.showing():
                shown = await self._show_in(tab, event) or shown
            return shown

    async def _show_in(self, tab: Tab, event: Shown) -> bool:
        if isinstance(event, ChatMessage):
            await tab.message(event)
        elif isinstance(event, ToolCallEvent):
            await tab.tool(event)
        elif not tab.running:
            return False  # an ended conversation's tab shows no more of it
        elif isinstance(event, SpeakerSelected):
            await tab.speaker(event)
        elif isinstance(event, AgentStatus):
            await tab.say(status_line(event), error=not event.reachable)
        else:
            await self._end(tab, event)
        return True

    async def catch_up(self) -> None:
        """After a reconnect: ask for the running conversations again; what is on the page already is dropped."""
        for room in list(self._rooms.values()):
            if room.running and any(t.running for t in room.showing()):
                resume = ResumeConversation(conversation_id=room.conversation_id)
                await self.runtime.publish_message(resume, topic(CONTROL, room.conversation_id))

    def _seed_run(self, message_id: str, first: ChatMessage | None = None) -> SeedRun:
        if self._seed is None:
            if first is not None and first.kind == "task":
                title = f"Seed: {first.content[:80]}"
            else:
                title = "Seed conversation (joined after it began)"
            self._seed = SeedRun(key=message_id, title=title)
        return self._seed

    # ---------------------------------------------------------------- rooms

    async def _follow(self, tab: Tab, room: Room) -> None:
        """The tab shows the room from here on: everything the room has said so far, then the live
        stream. A room this process has not seen from its start is asked of the manager again."""
        async with room.lock:
            if tab.conversation_id != room.conversation_id:
                tab.begin(room.conversation_id)
            if tab not in room.tabs:
                room.tabs.append(tab)
            tab.watching = True
            for event in room.shown:
                await self._show_in(tab, event)
            for message_id, (author, text) in room.streaming.items():
                if tab.running:
                    await tab.token(message_id, author, text)
            if room.usage is not None and tab.running:
                await tab.show_usage(room.usage)
        if not room.complete:
            self.spawn(self._announce(room, ResumeConversation(conversation_id=room.conversation_id)))
        await self._show_presence(room)

    async def _leave(self, tab: Tab) -> None:
        """The tab no longer shows its room (closed, or its person started another conversation)."""
        room = self._rooms.get(tab.conversation_id) if tab.conversation_id else None
        if room is None:
            return
        if not tab.running and tab in room.tabs:
            room.tabs.remove(tab)
        await self._show_presence(room)

    async def _show_presence(self, room: Room) -> None:
        for tab in room.showing():
            if tab.watching and WebsocketSession.get_by_id(tab.session.id) is not None:
                await tab.show_room(room)

    async def _join_room(self, tab: Tab, conversation_id: str) -> None:
        """A tab opened a room's link: it follows the conversation in a thread of its own."""
        room = self._rooms.get(conversation_id) or self._room(conversation_id, heard=False)
        tab.enter()
        tab.session.has_first_interaction = True
        title = f"Joined: {room.task[:80]}" if room.task else f"Joined conversation {conversation_id[:12]}"
        await cl.context.emitter.init_thread(title)
        # Kept with the thread, so reopening it finds the conversation (see _start).
        cl.user_session.set(CONVERSATION_KEY, conversation_id)  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated
        await self._follow(tab, room)

    # ---------------------------------------------------------------- what the person does

    async def redraw_panel(self, session: WebsocketSession) -> None:
        """The page moved to the tab's thread, which closes Chainlit's side panel: draw it again."""
        tab = self._tabs.get(session.id)
        room = self._rooms.get(tab.conversation_id) if tab is not None and tab.conversation_id else None
        if tab is not None and room is not None and tab.watching:
            await tab.show_room(room)

    async def opened(self, session: WebsocketSession) -> None:
        tab = self.tab(session)
        if self.settings.seed:
            if self._seed is not None:
                await tab.show_seed_run(self._seed)
            return
        try:
            conversation_id = requested_room(tab.referer)
        except ValueError as error:
            await tab.say(f"{error}. Type a task to start a conversation of your own.", error=True)
            return
        if conversation_id is not None:
            await self._join_room(tab, conversation_id)

    async def resumed(self, session: WebsocketSession, thread: ThreadDict) -> None:
        """A reopened thread whose conversation still runs takes it over from its old tab, or,
        when no tab here follows it (the page process started since), takes it up."""
        conversation_id = conversation_of(thread)
        if conversation_id is None or self.settings.seed:
            self.tab(session)
            return
        room = self._rooms.get(conversation_id)
        old = next((t for t in room.showing() if t.session.thread_id == session.thread_id), None) if room else None
        if room is not None and old is not None and old.running:
            self._tabs.pop(old.session.id, None)
            old.session = session
            old.watching = True
            self._tabs[session.id] = old
            await old.show_buttons_again()
            await self._show_presence(room)
            return
        tab = self.tab(session)
        if tab.take_up(conversation_id, thread.get("steps") or []):
            # What the thread has is on the page already; what it missed while no page ran
            # (and the calls that wait for an answer) the room shows, or the manager sends again.
            await self._follow(tab, room or self._room(conversation_id, heard=False))

    async def closed(self, session: WebsocketSession) -> None:
        # A running conversation carries on, and is stored, with its tab closed; reopen it from the history.
        tab = self._tabs.get(session.id)
        if tab is None or self.settings.seed:
            return
        tab.watching = False
        await self._leave(tab)
        if not tab.running:
            del self._tabs[session.id]

    async def typed(self, session: WebsocketSession, message: cl.Message) -> None:
        tab = self.tab(session)
        if self.settings.seed:
            await tab.say(SEED_NOTE)
            return
        if len(message.content) > MAX_CONTENT_CHARS:
            await tab.say(f"That is {len(message.content)} characters; the limit is {MAX_CONTENT_CHARS}.", error=True)
            return
        tab.on_page.add(message.id)
        room = self._rooms.get(tab.conversation_id) if tab.conversation_id else None
        if tab.running and room is not None:
            await self._join(tab, room, message)
        else:
            await self._start(tab, message)

    async def _start(self, tab: Tab, message: cl.Message) -> None:
        conversation_id = new_id()
        try:
            start = StartConversation(
                conversation_id=conversation_id, task=message.content, author=tab.user, message_id=message.id
            )
        except ValidationError:
            await tab.say("Say what the agents should work on: the task is empty.", error=True)
            return
        tab.running = False
        await self._leave(tab)
        tab.begin(conversation_id)
        room = self._rooms[conversation_id] = Room(conversation_id, owner=tab.user, complete=True)
        room.tabs.append(tab)
        self._forget_old_rooms()
        # Kept with the thread (Chainlit stores the session's values when the tab goes), so
        # reopening the thread finds a conversation that still runs.
        cl.user_session.set(CONVERSATION_KEY, conversation_id)  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated
        data_layer = get_data_layer()  # type: ignore[no-untyped-call]  # Chainlit leaves it unannotated
        if data_layer is not None:
            await data_layer.update_thread(tab.session.thread_id, tags=["roundtable"])
        self.spawn(self._announce(room, start))
        await self._show_presence(room)

    async def _announce(self, room: Room, start: StartConversation | ResumeConversation) -> None:
        """Publish the start (or the ask to send a conversation again) until the manager answers:
        publishing has no acknowledgement. A room already heard from is asked once."""
        if room.heard.is_set():
            await self.runtime.publish_message(start, topic(CONTROL, start.conversation_id))
            return
        if await publish_until_heard(self.runtime, start, room.heard, self.settings.start_timeout):
            return
        async with room.lock:
            tabs = [tab for tab in room.showing() if tab.running]
            for tab in tabs:
                tab.running = False
                room.tabs.remove(tab)
        if self._rooms.get(room.conversation_id) is room and not room.heard.is_set():
            del self._rooms[room.conversation_id]
        if isinstance(start, StartConversation):
            problem = f"No manager took the conversation within {self.settings.start_timeout:g} s"
        else:
            problem = (
                f"No manager answered for conversation {start.conversation_id} within "
                f"{self.settings.start_timeout:g} s: its link may be wrong, or its manager down"
            )
        for tab in tabs:
            await tab.say(f"{problem}: is `roundtable manager` running?", error=True)

    async def _join(self, tab: Tab, room: Room, message: cl.Message) -> None:
        # Words sent before the manager has the conversation would reach nobody.
        try:
            await asyncio.wait_for(room.heard.wait(), self.settings.start_timeout)
        except asyncio.TimeoutError:
            return  # _announce says what went wrong
        human = HumanMessage(
            conversation_id=room.conversation_id, id=message.id, author=tab.user, content=message.content
        )
        await self.runtime.publish_message(human, topic(CONTROL, room.conversation_id))

    async def answer(self, session: WebsocketSession, action: cl.Action, approved: bool) -> None:
        """Approve or Deny clicked: the answer goes to the manager, whose word of the call then
        takes the buttons away, in every tab of the room. Anyone in the room may answer, also
        from a tab whose thread another tab has reopened since."""
        conversation_id, key = action.payload.get("conversation_id"), action.payload.get("tool_call")
        room = self._rooms.get(conversation_id) if isinstance(conversation_id, str) else None
        mine = self._tabs.get(session.id)
        asking = None
        for tab in room.showing() if room is not None and isinstance(key, str) else ():
            if tab.running and (tab is mine or tab.session.thread_id == session.thread_id) and key in tab.asking:
                asking = tab.asking[key]
        if asking is None:
            # Only a toast: a line would be stored with the thread, which another tab may show.
            await cl.context.emitter.send_toast("That call has been answered already, or its conversation has ended.")
            return
        person = session.user.identifier if session.user else LOCAL_USER
        approval = asking.event.answer(approved, by=person[:100] or LOCAL_USER)
        await self.runtime.publish_message(approval, topic(CONTROL, asking.event.conversation_id))

    async def stop(self, session: WebsocketSession) -> None:
        tab = self._tabs.get(session.id)
        room = self._rooms.get(tab.conversation_id) if tab is not None and tab.conversation_id else None
        if tab is None or room is None or not tab.running:
            return
        if self.settings.stop == "owner" and tab.user != room.owner:
            tab.enter()
            await cl.context.emitter.send_toast(f"Only {room.owner}, who started this conversation, may stop it.")
            return
        stop = StopConversation(conversation_id=room.conversation_id, reason=stopper(tab.user))
        await self.runtime.publish_message(stop, topic(CONTROL, room.conversation_id))
        self.spawn(self._stop_fallback(room, stop))

    async def _stop_fallback(self, room: Room, stop: StopConversation) -> None:
        await asyncio.sleep(STOP_GRACE)
        if room.running:
            log.warning("conversation %s: no manager confirmed the stop; ending it on the page", room.conversation_id)
            reason = f"{stop.reason} (no manager confirmed)"
            await self._show(ConversationEnded(conversation_id=room.conversation_id, reason=reason, ok=False))


_current: Bridge | None = None


def install(bridge: Bridge) -> None:
    global _current
    _current = bridge


def current() -> Bridge:
    """The process's bridge; `roundtable ui` makes it before Chainlit loads the app."""
    if _current is None:
        raise RuntimeError("the roundtable page runs through `roundtable ui` (or roundtable.ui.serve_ui), not alone")
    return _current
