"""Every wire message and every topic name, in one place.

A conversation id is always the topic *source*; the topic *type* says what the
topic carries. Nothing else in the package spells a topic name.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Literal

from autogen_agentchat.messages import TextMessage
from autogen_core import TopicId
from pydantic import BaseModel, ConfigDict, Field

# Topic types (managed mode).
GROUP_CHAT = "group_chat"  # manager -> everyone: stored messages, speaker choices, the end
CONTROL = "control"  # ui, terminal, participants -> manager: start, stop, replies, a person's words
STREAM = "stream"  # participants -> ui, terminal: token chunks
TURN_PREFIX = "turn."  # manager -> one participant: "your turn"
PRESENCE = "presence"  # participants -> manager: "I am (back) online"
PRESENCE_SOURCE = "roundtable"

# Seed mode: the tutorial's shape, no manager. Its topic carries AgentChat's TextMessage and
# nothing else, so a stock AutoGen worker written from the tutorial can take part.
SEED_TOPIC = "conversation_topic"  # every seed-mode agent, ours or stock -> the others, ui: TextMessage
SEED_SOURCE = "default"
SEED_HELLO = "seed_hello"  # our seed-mode agents -> each other: SeedHello, to find each other
SEED_OPENER = "user"  # a TextMessage from this source opens a new exchange

#: The manager's agent types. The host lets one client register each, and vouches for the sender
#: of every message, so a participant can tell the manager's word from anyone else's.
MANAGER_TYPE = "roundtable_manager"
PRESENCE_TYPE = "roundtable_presence"
SEED_TURN_KEY = "turn"  # TextMessage.metadata: the turn our agents give their reply

#: Message types that one replica of an agent type takes: a bus that runs several processes per
#: agent type (NATS) hands each to one of them. Every other message on an agent's topic (the
#: turn's state, tool-call rulings, the end) reaches each replica; those not handling that turn
#: ignore it.
TAKEN_BY_ONE_REPLICA = frozenset({"RequestToSpeak"})

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
    tokens: int = Field(default=0, ge=0)  # the model tokens its author used for it


def still_held(history: Sequence[ChatMessage], held: tuple[int, str]) -> int:
    """How many of `history`'s first messages something made from an earlier history still
    holds: `held` is (how many, the last one's id). A transcript only grows and each message
    keeps its id, so it is all of them if the last is still in its place, else none."""
    count, last_id = held
    return count if count <= len(history) and (count == 0 or history[count - 1].id == last_id) else 0


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
    so a participant on any machine needs no shared state and survives restarts.

    A new turn's first ask may leave out the `base` messages the manager sent this agent with
    its last ask (`history` is then what came after them; `base_id` is the id of the last one
    left out). A process that does not hold exactly those (restarted, or another process of the
    same agent) gets the whole history with the manager's TurnState (TurnCheck.send_history)."""

    conversation_id: str
    turn_id: str = Field(default_factory=new_id)
    speaker: str
    history: list[ChatMessage]
    base: int = Field(default=0, ge=0)
    base_id: str = ""
    # The manager's wall clock when it asked, and for how long the ask vouches that the turn
    # is open: got within that time, it is answered at once. Got later, or with no time (an ask
    # repeated after a timeout, a restart or a silent process), the agent checks first.
    asked_at: float = 0.0
    fresh_for: float = Field(default=0.0, ge=0.0)


class AgentReply(_Wire):
    """A participant's finished answer to a RequestToSpeak, sent to the manager to be stored."""

    conversation_id: str
    turn_id: str
    message_id: str
    author: str
    content: str = Field(max_length=MAX_CONTENT_CHARS)
    error: str | None = None
    tokens: int = Field(default=0, ge=0)  # model tokens used for the turn (see replies.FinishReasonRecorder)


class TurnCheck(_Wire):
    """A participant, before it calls the model: is this turn still open? A "your turn" can
    come late (asked again, or passed on by a restarted host) for a turn already stored."""

    conversation_id: str
    turn_id: str
    agent: str
    replica: str = ""  # which process serving the agent took the turn (see AgentOnline)
    send_history: bool = False  # the ask left out messages this process does not hold


class TurnState(_Wire):
    """The manager's answer to a TurnCheck, on the agent's turn topic (so every process serving
    the agent hears it). `taker`: the process (AgentOnline.replica) the open turn is now for; one
    that was answering it already stops (a turn asked again, taken by another process)."""

    conversation_id: str
    turn_id: str
    open: bool
    taker: str = ""
    history: list[ChatMessage] | None = None  # the open turn's whole history, if asked for it


class StreamChunk(_Wire):
    """A piece of a message as the model generates it. `index` restores order. The stream ends
    with the whole message (ChatMessage); `done` marks a last piece sent with what was left.
    `turn_id`: the managed turn it answers, so that it is shown after that turn's SpeakerSelected."""

    conversation_id: str
    message_id: str
    turn_id: str = ""
    author: str
    index: int
    text: str
    done: bool = False


class Usage(BaseModel):
    """What one agent has used in a conversation."""

    model_config = ConfigDict(frozen=True)
    tokens: int = 0
    tool_calls: int = 0  # calls that ran (or are running): not those skipped or denied


class ConversationEnded(_Wire):
    conversation_id: str
    reason: str
    ok: bool = True
    usage: dict[str, Usage] = Field(default_factory=dict)  # by agent


class UsageUpdate(_Wire):
    """The manager, after each turn: what each agent has used so far, and the limits. It comes
    with the next SpeakerSelected; alone only before the end."""

    conversation_id: str
    usage: dict[str, Usage]
    limits: dict[str, Usage] = Field(default_factory=dict)  # by agent, 0 for no limit; "" for the conversation


class SpeakerSelected(_Wire):
    conversation_id: str
    speaker: str
    note: str = ""
    #: The turn it announces. A manager that restarts announces its pending turn again, and
    #: the page and the terminal show each turn's once.
    turn_id: str = ""
    #: What the agents have used so far, as the budgets saw it before choosing this speaker:
    #: one message a turn, not two.
    usage: UsageUpdate | None = None


class AgentOnline(_Wire):
    """A participant's heartbeat. `fresh` when it just started or reconnected: the manager
    then asks it again for any turn it owes, as it does when a silent agent is heard again."""

    name: str
    fresh: bool = False
    # The process sending it, among those serving the agent (a bus may run several): when the one
    # that took a turn falls silent, the manager asks again at once, and another one answers.
    replica: str = ""


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


class SeedExchange:
    """One seed-mode exchange as one process has seen it, as numbered `ChatMessage`s.

    An opening (a TextMessage from "user") starts a new exchange as turn 0, even when the last one
    reached its turn limit: a fresh worker opens afresh. Any other message takes the turn its
    author wrote in the metadata (ours do; a restarted peer keeps count), else the next one. A
    message seen before (by id; a reconnect may send one again) is dropped.
    """

    SEEN_LIMIT = 1024  # ids remembered, across exchanges

    def __init__(self) -> None:
        self.messages: list[ChatMessage] = []
        self._seen: dict[str, None] = {}  # ordered: the oldest is forgotten first

    @property
    def turns(self) -> int:
        """The latest turn taken (0 when only the opening has been said)."""
        return max((m.seq for m in self.messages), default=0)

    def add(self, message: TextMessage) -> ChatMessage | None:
        """Record `message`; return it numbered, or None if it was seen before."""
        if message.id in self._seen:
            return None
        self._seen[message.id] = None
        if len(self._seen) > self.SEEN_LIMIT:
            del self._seen[next(iter(self._seen))]
        opening = message.source == SEED_OPENER
        if opening:
            self.messages = []
        chat = ChatMessage(
            conversation_id=SEED_SOURCE,
            id=message.id,
            seq=0 if opening else _stated_turn(message) or self.turns + 1,
            author=message.source,
            content=message.content,
            kind="task" if opening else "agent",
        )
        self.messages.append(chat)
        return chat


def _stated_turn(message: TextMessage) -> int | None:
    try:
        turn = int(message.metadata.get(SEED_TURN_KEY, ""))
    except ValueError:
        return None  # none stated (a stock agent), or nonsense
    return turn if turn > 0 else None


#: What a tool returned, as recorded: bigger results are cut (and say so) before they travel.
MAX_TOOL_RESULT_CHARS = 50_000


def call_signature(tool: str, arguments: str) -> str:
    """What identifies a call within a turn, with `index` (the how-manieth such call it is):
    a turn asked again after a crash may make its calls in another order, or other calls."""
    return hashlib.sha256(f"{tool}\x00{arguments}".encode()).hexdigest()[:32]


class ToolCallStarted(_Wire):
    """A participant, before a tool call runs: the manager records it, then says what to do.
    `index` counts the turn's calls with the same tool and arguments; `source` is the tool's
    entry in the agent's config; `attempt` is new for each run of the turn, the same on resends."""

    conversation_id: str
    turn_id: str
    index: int = Field(ge=0)
    agent: str
    tool: str
    arguments: str = Field(max_length=MAX_CONTENT_CHARS)  # JSON, sorted keys
    source: int = Field(ge=0)
    attempt: str

    @property
    def call(self) -> str:
        return call_signature(self.tool, self.arguments)


class ToolCallFinished(_Wire):
    """A participant, after a call ran: the manager records the result (the participant sends
    it again until the manager says it is recorded)."""

    conversation_id: str
    turn_id: str
    call: str
    index: int = Field(ge=0)
    agent: str
    result: str = Field(max_length=MAX_TOOL_RESULT_CHARS + 100)
    is_error: bool = False


ToolAction = Literal["run", "replay", "skip", "wait", "recorded"]


class ToolCallDecision(_Wire):
    """The manager's answer, on the agent's turn topic. `run`: call it now; `replay`: it ran
    before, here is its recorded result; `skip`: do not call it (`result` says why); `wait`:
    a person has yet to approve it, ask again; `recorded`: the result sent has been stored."""

    conversation_id: str
    turn_id: str
    call: str
    index: int
    action: ToolAction
    result: str = ""
    is_error: bool = False
    key: str = ""  # the idempotency key the tool may pass on to the outside system


#: How a recorded call stands: running, ended (done, error), not run (skipped, denied), or
#: waiting for a person's approval (awaiting).
ToolCallStatus = Literal["started", "done", "error", "skipped", "awaiting", "denied"]


class ToolCallEvent(_Wire):
    """The manager to everyone: a tool call began or ended (recorded first, then shown)."""

    conversation_id: str
    turn_id: str
    index: int
    agent: str
    tool: str
    arguments: str
    status: ToolCallStatus
    result: str = ""  # the result, or why it was skipped or denied, or what a person is asked
    waits_until: float = 0.0  # `awaiting`: when an unanswered request is denied (epoch seconds)

    @property
    def call(self) -> str:
        return call_signature(self.tool, self.arguments)

    def answer(self, approved: bool, by: str) -> ToolApproval:
        """A person's answer to this call, which awaits approval, for the manager."""
        return ToolApproval(
            conversation_id=self.conversation_id,
            turn_id=self.turn_id,
            call=self.call,
            index=self.index,
            approved=approved,
            by=by,
        )


class ToolApproval(_Wire):
    """A person's answer to a call awaiting approval, from the page or a terminal to the manager."""

    conversation_id: str
    turn_id: str
    call: str
    index: int = Field(ge=0)
    approved: bool
    by: str = Field(min_length=1, max_length=100)  # who answered, as the page or terminal knows them


WIRE_TYPES: tuple[type[BaseModel], ...] = (
    ChatMessage,
    StartConversation,
    StopConversation,
    HumanMessage,
    RequestToSpeak,
    AgentReply,
    TurnCheck,
    TurnState,
    StreamChunk,
    SpeakerSelected,
    ConversationEnded,
    AgentOnline,
    AgentStatus,
    ResumeConversation,
    SeedHello,
    TextMessage,  # AgentChat's own, as the tutorial's code sends it on SEED_TOPIC
    ToolCallStarted,
    ToolCallFinished,
    ToolCallDecision,
    ToolCallEvent,
    ToolApproval,
    UsageUpdate,
)
