"""Rooms: a conversation as this page process has seen it, and the browser tabs that show it.

Every conversation has a link (`/?room=<conversation id>`). Whoever opens it sees what the room
has said so far, then the live stream, and may type into it as themselves. The page process keeps
what it has seen of each running conversation (and of the last KEEP_ENDED ended ones), so a late
joiner catches up from memory; a room it has not seen is asked of the manager again.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, unquote, urlsplit

from ..messages import AgentStatus, ChatMessage, ConversationEnded, SpeakerSelected, ToolCallEvent, UsageUpdate

if TYPE_CHECKING:
    from .bridge import Tab

#: Without sign-in, a person who gives no name is this one.
LOCAL_USER = "user"
#: The query parameter of a room's link.
ROOM_PARAM = "room"
#: The cookie in which the page keeps the name a person gave (when sign-in is off).
NAME_COOKIE = "roundtable_name"
#: Ended rooms kept in memory for late joiners; older ones are asked of the manager again.
KEEP_ENDED = 200
#: What a name may be: letters, digits, spaces and . _ ' - (what the page asks for).
NAME = re.compile(r"[\w][\w .'-]{0,39}")
ROOM_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")

#: What a room replays to a late joiner, in the order it happened.
Shown = ChatMessage | SpeakerSelected | AgentStatus | ToolCallEvent | ConversationEnded


def person_name(cookie_header: str | None) -> str | None:
    """The name in the page's name cookie, if it holds a valid one."""
    for part in (cookie_header or "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == NAME_COOKIE:
            name = unquote(value).strip(" ")
            return name if NAME.fullmatch(name) else None
    return None


def requested_room(referer: str | None) -> str | None:
    """The conversation a tab's address asks to join (`?room=ID`), if any. ValueError, with one
    line saying what is wrong, for a link that names no conversation."""
    if not referer:
        return None
    values = parse_qs(urlsplit(referer).query).get(ROOM_PARAM)
    if not values:
        return None
    room_id = values[0].strip()
    if not ROOM_ID.fullmatch(room_id):
        shown = room_id[:40] + ("…" if len(room_id) > 40 else "")
        raise ValueError(f"this room link names no conversation: {shown!r} is not a conversation id")
    return room_id


def origin_of(referer: str | None, fallback: str) -> str:
    """Where the page is, as the person's browser reached it (so a link works for the others too)."""
    parts = urlsplit(referer or "")
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return fallback


def room_link(origin: str, conversation_id: str) -> str:
    return f"{origin}/?{ROOM_PARAM}={quote(conversation_id)}"


def stopper(name: str) -> str:
    """How a stop is told: `stopped by ana`, or by "the user" when no one gave a name."""
    return f"stopped by {'the user' if name == LOCAL_USER else name}"


class Room:
    """One conversation, what this process has seen of it, and the tabs showing it."""

    def __init__(self, conversation_id: str, owner: str = "", complete: bool = False) -> None:
        self.conversation_id = conversation_id
        self.owner = owner  # who started it: the task's author
        self.complete = complete  # seen from its start (else asked of the manager when joined)
        self.tabs: list[Tab] = []
        self.running = True
        self.heard = asyncio.Event()  # the manager has the conversation
        self.last_heard = time.monotonic()  # ... and when it last said a word of it
        self.shown: list[Shown] = []
        self.streaming: dict[str, tuple[str, str]] = {}  # message id -> (author, text so far)
        self.usage: UsageUpdate | None = None  # the latest word of what the agents used
        self.lock = asyncio.Lock()  # one event at a time, and a joiner's catch-up as one

    @property
    def task(self) -> str | None:
        return next((m.content for m in self.shown if isinstance(m, ChatMessage) and m.kind == "task"), None)

    def hear(self) -> None:
        self.heard.set()
        self.last_heard = time.monotonic()

    def record(self, event: Shown) -> None:
        if isinstance(event, ChatMessage):
            # Its author's newer message ends any stream of theirs (one cut short is not kept).
            self.streaming = {k: v for k, v in self.streaming.items() if v[0] != event.author}
            if any(isinstance(m, ChatMessage) and m.id == event.id for m in self.shown):
                return
            if event.kind == "task":
                self.complete = True
                self.owner = self.owner or event.author
        if isinstance(event, ConversationEnded):
            self.running = False
            self.streaming.clear()
        self.shown.append(event)

    def stream(self, message_id: str, author: str, text: str) -> None:
        before = self.streaming.get(message_id, (author, ""))[1]
        self.streaming[message_id] = (author, before + text)

    def showing(self) -> Iterator[Tab]:
        """The tabs that show this conversation now (a tab moves on when its person starts another)."""
        return (tab for tab in list(self.tabs) if tab.conversation_id == self.conversation_id)

    def watchers(self) -> list[str]:
        """Who has the room open: each name once, the one who started it first."""
        names = list(dict.fromkeys(tab.user for tab in self.showing() if tab.watching))
        if self.owner in names:
            names.remove(self.owner)
            names.insert(0, self.owner)
        return names

    def note(self, origin: str) -> str:
        """The room's side panel: who is watching, and the link that lets others in."""
        people = "\n".join(f"- {name}{' (started it)' if name == self.owner else ''}" for name in self.watchers())
        return (
            f"**Watching now**\n\n{people}\n\n"
            f"**Invite others**: anyone with this link sees the conversation live and can join in.\n\n"
            f"{room_link(origin, self.conversation_id)}"
        )
