"""Every wire message and every topic name, in one place.

A conversation id is always the topic *source*; the topic *type* says what the
topic carries. Nothing else in the package spells a topic name.
"""

from __future__ import annotations

import uuid
from typing import Literal

from autogen_core import TopicId
from pydantic import BaseModel, ConfigDict, Field

# Topic types (managed mode).
GROUP_CHAT = "group_chat"  # manager -> everyone: stored messages, speaker choices, the end
CONTROL = "control"  # ui, terminal, participants -> manager: start, stop, replies, a person's words
STREAM = "stream"  # participants -> ui, terminal: token chunks
TURN_PREFIX = "turn."  # manager -> one participant: "your turn"
PRESENCE = "presence"  # participants -> manager: "I am (back) online"
PRESENCE_SOURCE = "roundtable"

# Seed mode: the tutorial's shape, writer and editor talk on one topic, no manager.
SEED_TOPIC = "conversation_topic"
SEED_SOURCE = "default"

#: A reasonable ceiling for one chat message; bigger ones are refused before sending.
MAX_CONTENT_CHARS = 200_000


def new_id() -> str:
    return uuid.uuid4().hex


def turn_topic_type(agent_name: str) -> str:
    return f"{TURN_PREFIX}{agent_name}"


def topic(topic_type: str, conversation_id: str) -> TopicId:
    return TopicId(type=topic_type, source=conversation_id)


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ChatMessage(_Wire):
    """One stored message of a conversation. `seq` is set by the manager (0 in seed mode)."""

    conversation_id: str
    id: str = Field(default_factory=new_id)
    seq: int = 0
    author: str
    content: str = Field(max_length=MAX_CONTENT_CHARS)
    kind: Literal["task", "agent", "human"] = "agent"


class StartConversation(_Wire):
    conversation_id: str
    task: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)
    author: str = "user"
    message_id: str = Field(default_factory=new_id)


class StopConversation(_Wire):
    conversation_id: str
    reason: str = "stopped by the user"


class HumanMessage(_Wire):
    """A person joining in mid-conversation; the manager stores it and the agents see it next turn."""

    conversation_id: str
    id: str = Field(default_factory=new_id)
    author: str = "user"
    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)


class RequestToSpeak(_Wire):
    """The manager asks one participant for the next message. The history travels with it,
    so a participant on any machine needs no shared state and survives restarts."""

    conversation_id: str
    turn_id: str = Field(default_factory=new_id)
    speaker: str
    history: list[ChatMessage]


class AgentReply(_Wire):
    """A participant's finished answer to a RequestToSpeak, sent to the manager to be stored."""

    conversation_id: str
    turn_id: str
    message_id: str
    author: str
    content: str = Field(max_length=MAX_CONTENT_CHARS)
    error: str | None = None


class StreamChunk(_Wire):
    """A piece of a message as the model generates it. `index` restores order; `done` closes it."""

    conversation_id: str
    message_id: str
    author: str
    index: int
    text: str
    done: bool = False


class SpeakerSelected(_Wire):
    conversation_id: str
    speaker: str
    note: str = ""


class ConversationEnded(_Wire):
    conversation_id: str
    reason: str
    ok: bool = True


class AgentOnline(_Wire):
    """A participant's heartbeat. `fresh` when it just started or reconnected: the manager
    then asks it again for any turn it owes, as it does when a silent agent is heard again."""

    name: str
    fresh: bool = False


class AgentStatus(_Wire):
    """The manager's word that a participant stopped or started answering its heartbeat."""

    conversation_id: str
    agent: str
    reachable: bool


class ResumeConversation(_Wire):
    """The manager, to itself after a restart: load this conversation from the store and carry on."""

    conversation_id: str


class SeedHello(_Wire):
    """Seed mode: an agent announces itself so the pair can find each other whatever the start order."""

    name: str
    reply: bool = False


WIRE_TYPES: tuple[type[BaseModel], ...] = (
    ChatMessage,
    StartConversation,
    StopConversation,
    HumanMessage,
    RequestToSpeak,
    AgentReply,
    StreamChunk,
    SpeakerSelected,
    ConversationEnded,
    AgentOnline,
    AgentStatus,
    ResumeConversation,
    SeedHello,
)
