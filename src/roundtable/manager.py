"""The group chat manager: it owns each conversation's transcript, picks who speaks
next, and decides when the conversation ends.

One manager instance per conversation (the conversation id is its key). Every
message is numbered here, so consumers can order and de-duplicate them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from autogen_core import CancellationToken, MessageContext, RoutedAgent, TopicId, TypeSubscription, message_handler
from autogen_core.models import ChatCompletionClient, SystemMessage, UserMessage

from . import clock
from .config import AgentConfig, BudgetConfig, ManagerConfig, ToolConfig
from .crashpoints import crash_point
from .lease import Lease
from .messages import (
    CONTROL,
    GROUP_CHAT,
    MANAGER_TYPE,
    PRESENCE,
    PRESENCE_TYPE,
    AgentOnline,
    AgentReply,
    AgentStatus,
    ChatMessage,
    ConversationEnded,
    HumanMessage,
    RequestToSpeak,
    ResumeConversation,
    SpeakerSelected,
    StartConversation,
    StopConversation,
    ToolAction,
    ToolApproval,
    ToolCallDecision,
    ToolCallEvent,
    ToolCallFinished,
    ToolCallStarted,
    ToolCallStatus,
    TurnCheck,
    TurnState,
    Usage,
    UsageUpdate,
    new_id,
    still_held,
    topic,
    turn_topic_type,
)
from .models import describe_model_error
from .store import ENDED_TOOL_STATES, RAN_TOOL_STATES, StoredToolCall, TranscriptStore, call_key
from .telemetry import span
from .wire import UNKNOWN_SENDER
from .worker import WorkerRuntime, forget

log = logging.getLogger("roundtable.manager")

#: A restarted manager announces again the ends of conversations that ended this recently.
ANNOUNCE_ENDS_WITHIN = 60.0
#: Processes serving agents whose heartbeats the manager follows, at most.
REPLICAS_TRACKED = 10_000
#: How long a new turn's first ask vouches for the turn being open, in seconds (at most half
#: the turn timeout): an agent that gets it sooner answers without asking the manager first.
#: A first ask goes stale only when its turn is given up (no sooner than the turn timeout) or its
#: conversation stopped (the agent then stops its answer). An ask delayed longer (held through a
#: reconnect, or read on a machine whose clock is this far off) still costs the check.
FRESH_ASK = 1.0


@dataclass
class Choice:
    speaker: str
    note: str = ""


@dataclass
class Conversation:
    id: str
    task: str
    started: float = field(default_factory=clock.now)  # wall clock: it survives a restart
    transcript: list[ChatMessage] = field(default_factory=list)
    rounds: int = 0
    pending: RequestToSpeak | None = None
    attempts: int = 0  # asks for the pending turn since its deadline last passed
    asks: int = 0  # every ask ever made; identifies the deadline that belongs to it
    ended: bool = False
    # The speaker's last tool call or result (monotonic): a turn is timed from its last sign
    # of life, so a call that waits for a person's approval does not run the turn out.
    last_sign_of_life: float = 0.0
    # Whether the store may hold tool calls of this conversation: not for one started here until
    # an agent starts a call; always for one resumed. Usage is counted without a query otherwise.
    may_have_tool_calls: bool = True
    taker: str = ""  # the replica that said it took the pending turn (its TurnCheck)
    # How many messages each agent's last ask carried: its next first ask leaves them out.
    sent: dict[str, int] = field(default_factory=dict)
    # The tokens of the transcript's messages up to `_counted_to` (how many, the last one's id).
    _counted_to: tuple[int, str] = field(default=(0, ""), init=False, repr=False, compare=False)
    _tokens: Counter[str] = field(default_factory=Counter, init=False, repr=False, compare=False)

    def tokens_by_author(self) -> Counter[str]:
        """The tokens of each author's messages, each message counted once as the transcript
        grows (again from the start if one counted was taken back)."""
        counted = still_held(self.transcript, self._counted_to)
        if counted == 0:
            self._tokens = Counter()
        for m in self.transcript[counted:]:
            self._tokens[m.author] += m.tokens
        if self.transcript:
            self._counted_to = (len(self.transcript), self.transcript[-1].id)
        return Counter(self._tokens)

    @property
    def last_speaker(self) -> str | None:
        return next((m.author for m in reversed(self.transcript) if m.kind == "agent"), None)


# ---------------------------------------------------------------- selection


def _round_robin(names: Sequence[str], last: str | None) -> str:
    if last is None or last not in names:
        return names[0]
    return names[(list(names).index(last) + 1) % len(names)]


def select_round_robin(conv: Conversation, agents: Sequence[AgentConfig]) -> Choice:
    return Choice(_round_robin([a.name for a in agents], conv.last_speaker))


def select_random(conv: Conversation, agents: Sequence[AgentConfig]) -> Choice:
    names = [a.name for a in agents if a.name != conv.last_speaker] or [a.name for a in agents]
    return Choice(random.choice(names))


def select_graph(graph: dict[str, list[str]]) -> Callable[[Conversation, Sequence[AgentConfig]], Choice]:
    def choose(conv: Conversation, agents: Sequence[AgentConfig]) -> Choice:
        names = [a.name for a in agents]
        last = conv.last_speaker
        if last is None:
            return Choice(names[0])
        allowed = [n for n in graph.get(last, []) if n in names]  # not those left out
        if not allowed:
            return Choice(_round_robin(names, last))
        # Among the allowed targets, keep the participants' order, starting after the last speaker.
        at = names.index(last) + 1 if last in names else 0
        ordered = names[at:] + names[:at]
        return Choice(next(n for n in ordered if n in allowed))

    return choose


def find_named(reply: str, names: Sequence[str]) -> str | None:
    """The participant named first in the selector's reply, if any."""
    best: tuple[int, str] | None = None
    for name in names:
        match = re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", reply, re.IGNORECASE)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), name)
    return best[1] if best else None


def select_with_model(
    client: ChatCompletionClient, retries: int
) -> Callable[[Conversation, Sequence[AgentConfig]], Awaitable[Choice]]:
    async def choose(conv: Conversation, agents: Sequence[AgentConfig]) -> Choice:
        names = [a.name for a in agents]
        roster = "\n".join(f"- {a.name}: {a.description or a.system_message}" for a in agents)
        history = "\n".join(f"{m.author}: {m.content}" for m in conv.transcript[-10:])
        prompt = (
            f"Participants:\n{roster}\n\nConversation so far:\n{history}\n\n"
            f"Who should speak next? Answer with exactly one name from: {', '.join(names)}."
        )
        answer = ""
        for _ in range(retries + 1):
            try:
                result = await client.create(
                    [
                        SystemMessage(content="You choose the next speaker in a group chat."),
                        UserMessage(content=prompt, source="manager"),
                    ]
                )
            except Exception as failure:
                answer = describe_model_error(failure)
                continue
            answer = result.content if isinstance(result.content, str) else str(result.content)
            chosen = find_named(answer, names)
            if chosen is not None:
                return Choice(chosen)
        fallback = _round_robin(names, conv.last_speaker)
        return Choice(fallback, f"selector named nobody ({answer[:60]!r}); falling back to round robin")

    return choose


# ---------------------------------------------------------------- termination


def termination_reason(conv: Conversation, settings: ManagerConfig) -> str | None:
    rules = settings.termination
    checks: list[tuple[bool, str]] = []
    if rules.max_rounds is not None:
        checks.append((conv.rounds >= rules.max_rounds, f"max_rounds reached ({conv.rounds} rounds)"))
    if rules.text_mention is not None:
        last = conv.transcript[-1] if conv.transcript else None
        hit = last is not None and last.kind == "agent" and rules.text_mention in last.content
        checks.append((hit, f"{rules.text_mention!r} mentioned by {last.author if last else '?'}"))
    if rules.timeout is not None:
        elapsed = clock.now() - conv.started
        checks.append((elapsed >= rules.timeout, f"timeout after {rules.timeout:g} s"))
    met = [reason for hit, reason in checks if hit]
    if rules.combine == "all":
        return "; ".join(met) if met and len(met) == len(checks) else None
    return met[0] if met else None


# ---------------------------------------------------------------- the agent


def tool_event(call: StoredToolCall, approval_timeout: float = 0.0) -> ToolCallEvent:
    """What everyone is told of a recorded call."""
    return ToolCallEvent(
        conversation_id=call.conversation_id,
        turn_id=call.turn_id,
        index=call.index,
        agent=call.agent,
        tool=call.tool,
        arguments=call.arguments,
        status=cast(ToolCallStatus, call.status),
        result=call.result or "",
        waits_until=call.started_at + approval_timeout if call.status == "awaiting" else 0.0,
    )


@dataclass
class Budget:
    """The budgets' verdict before a speaker is asked."""

    left_out: set[str] = field(default_factory=set)  # agents that used their budget (on_exceeded: skip)
    end: str | None = None  # why the conversation ends, if a budget ends it
    note: str = ""
    usage: UsageUpdate | None = None  # what each agent used so far, for everyone to hear


def used_up(budget: BudgetConfig, used: Usage) -> str | None:
    """`"1,234 of 1,000 tokens"` when `used` has reached a limit of `budget`, else None."""
    if budget.tokens is not None and used.tokens >= budget.tokens:
        return f"{used.tokens:,} of {budget.tokens:,} tokens"
    if budget.tool_calls is not None and used.tool_calls >= budget.tool_calls:
        return f"{used.tool_calls} of {budget.tool_calls} tool calls"
    return None


class GroupChatManager(RoutedAgent):
    """One instance per conversation. Every change is stored before it is published, so a
    restarted manager resumes from the store (see `ResumeConversation`)."""

    def __init__(
        self,
        agents: Sequence[AgentConfig],
        settings: ManagerConfig,
        store: TranscriptStore,
        registry: dict[str, GroupChatManager],
        selector: ChatCompletionClient | None = None,
        lease: Lease | None = None,
    ) -> None:
        super().__init__("Group chat manager")
        self._lease = lease
        self._agents = list(agents)
        self._seats = {a.name: a for a in self._agents if a.human}  # the human seats, by name
        self._agent_names = {a.name for a in self._agents if not a.human}  # no person speaks as one
        self._settings = settings
        self._store = store
        self._registry = registry
        self._lock = asyncio.Lock()
        self._conv: Conversation | None = None
        self._timers: list[asyncio.Task[None]] = []
        # The last ask's deadline: one at a time, as an earlier ask's would find the turn moved on.
        self._deadline: asyncio.Task[None] | None = None
        self._choose: Callable[[Conversation, Sequence[AgentConfig]], Choice | Awaitable[Choice]]
        if settings.strategy == "selector":
            if selector is None:
                raise ValueError("the selector strategy needs a model client")
            self._choose = select_with_model(selector, settings.selector_retries)
        elif settings.strategy == "graph":
            self._choose = select_graph(settings.graph)
        elif settings.strategy == "random":
            self._choose = select_random
        else:
            self._choose = select_round_robin

    async def _publish(
        self, message: ChatMessage | SpeakerSelected | ConversationEnded | ToolCallEvent | UsageUpdate
    ) -> None:
        await self.publish_message(message, topic(GROUP_CHAT, message.conversation_id))

    async def _record(self, conv: Conversation, message: ChatMessage) -> bool:
        """Number the message, store it, then forward it: the manager writes first."""
        numbered = message.model_copy(update={"seq": len(conv.transcript) + 1})
        if not await self._store.append(numbered):
            self._taken_over(conv)
            return False
        conv.transcript.append(numbered)
        await self._publish(numbered)
        return True

    def _let_go(self, conv: Conversation) -> None:
        """Stop working on the conversation: no pending turn, no timers, out of the registry."""
        conv.ended = True
        conv.pending = None
        self._registry.pop(conv.id, None)
        for timer in [*self._timers, self._deadline]:
            if timer is not None and timer is not asyncio.current_task():
                timer.cancel()
        self._timers.clear()
        self._deadline = None

    def _taken_over(self, conv: Conversation) -> None:
        # Someone else stored this place first: another manager is running this
        # conversation (two managers on one database). It is theirs; let go of it.
        log.warning("conversation %s is being written by another manager; leaving it", conv.id)
        self._let_go(conv)

    def _adopt(self, conv: Conversation) -> None:
        self._conv = conv
        self._registry[conv.id] = self
        timeout = self._settings.termination.timeout
        if timeout is not None:
            remaining = max(0.0, timeout - (clock.now() - conv.started))
            self._timers.append(asyncio.create_task(self._timeout_after(remaining)))

    async def publish_message(
        self,
        message: Any,
        topic_id: TopicId,
        *,
        cancellation_token: CancellationToken | None = None,
    ) -> None:
        """As any agent's, but a manager that no longer holds its lease publishes nothing more."""
        if self._lease is not None:
            self._lease.fence()
        await super().publish_message(message, topic_id, cancellation_token=cancellation_token)

    @message_handler
    async def on_start(self, message: StartConversation, ctx: MessageContext) -> None:
        if not from_a_person(ctx, message):
            return
        async with self._lock:
            if self._conv is not None or await self._store.get(message.conversation_id) is not None:
                return  # a repeated start (the client retries until it hears back)
            conv = Conversation(id=message.conversation_id, task=message.task, may_have_tool_calls=False)
            task = ChatMessage(
                conversation_id=conv.id,
                id=message.message_id,
                seq=1,
                author=message.author,
                content=message.task,
                kind="task",
            )
            # The conversation and its task in one write: a crash leaves both or neither.
            if not await self._store.start(conv.id, conv.task, task):
                return  # another manager took it meanwhile
            crash_point("manager.start.stored")
            conv.transcript.append(task)
            self._adopt(conv)
            log.info("conversation %s started: %s", conv.id, message.task[:80])
            await self._publish(task)
            await self._next_turn(conv)

    @message_handler
    async def on_resume(self, message: ResumeConversation, ctx: MessageContext) -> None:
        """From the manager itself after a restart, or from a terminal or page that lost its
        connection and may have missed messages: either way, send the conversation again."""
        async with self._lock:
            if self._conv is not None:
                if not self._conv.ended:
                    await self._republish(self._conv)
                return
            await self._resume(message.conversation_id)

    async def _resume(self, conversation_id: str) -> None:
        """Load a conversation this instance does not hold yet from the store, and carry on."""
        stored = await self._store.get(conversation_id)
        if stored is None:
            return
        if stored.status != "open":
            for stored_message in stored.transcript:
                await self._publish(stored_message)
            ended = ConversationEnded(conversation_id=stored.id, reason=stored.reason or "ended", ok=bool(stored.ok))
            await self._publish(ended)
            forget(self)
            return
        if not stored.transcript:
            # Stored by an earlier version, which wrote the task in a second step that a crash
            # could cut off: it is put back, so no turn is asked without it.
            task = ChatMessage(conversation_id=stored.id, seq=1, author="user", content=stored.task, kind="task")
            if await self._store.append(task):
                stored.transcript = [task]
        conv = Conversation(
            id=stored.id,
            task=stored.task,
            started=stored.created_at,
            transcript=stored.transcript,
            rounds=sum(1 for m in stored.transcript if m.kind == "agent"),
        )
        self._adopt(conv)
        log.info("conversation %s resumed at message %d", conv.id, len(conv.transcript))
        if stored.pending_speaker and stored.pending_turn_id:
            conv.pending = RequestToSpeak(
                conversation_id=conv.id,
                turn_id=stored.pending_turn_id,
                speaker=stored.pending_speaker,
                history=conv.transcript,
            )
        await self._republish(conv)
        if conv.pending is not None:
            await self._ask(conv)
            return
        reason = termination_reason(conv, self._settings)
        if reason is not None:
            await self._end(conv, reason)
        else:
            await self._next_turn(conv)

    async def _republish(self, conv: Conversation) -> None:
        # Whatever a crash kept from the page and the terminal reaches them now; they drop
        # what they already have by message id (and tool calls by call and state).
        for stored_message in conv.transcript:
            await self._publish(stored_message)
        for call in await self._store.tool_calls(conv.id):
            await self._publish(tool_event(call, self._approval_timeout(call)))
        if conv.pending is not None:  # its announcement may have died with an earlier manager
            pending = conv.pending
            await self._publish(
                SpeakerSelected(conversation_id=conv.id, speaker=pending.speaker, turn_id=pending.turn_id)
            )

    async def nudge(self, speaker: str | None = None, republish: bool = False) -> None:
        """Ask again for a turn that may have been lost: the speaker came back, or we did."""
        async with self._lock:
            conv = self._conv
            if conv is None or conv.ended:
                return
            if republish:
                await self._republish(conv)
            if conv.pending is not None and speaker in (None, conv.pending.speaker):
                log.info("asking %s again for its turn in %s", conv.pending.speaker, conv.id)
                conv.attempts = 0
                await self._ask(conv)

    async def replica_gone(self, agent: str, replica: str) -> None:
        """A process serving `agent` fell silent: the turn it took (or that no process has claimed
        yet) is asked again at once, for another process serving the same agent (a bus with
        replicas) or for it when it is back. A live process that had it too answers the turn
        once more at worst; the manager takes the first answer."""
        async with self._lock:
            conv = self._conv
            if conv is None or conv.ended or conv.pending is None or not replica:
                return
            # Its turn, taken by the silent process, or by none that said so yet: the ask may
            # have reached the silent one before it could check the turn (several turns in flight).
            if conv.pending.speaker == agent and conv.taker in (replica, ""):
                log.warning("%s (%s) went silent during its turn in %s; asking again", agent, replica, conv.id)
                conv.attempts = 0
                await self._ask(conv)

    async def announce_status(self, agent: str, reachable: bool) -> None:
        if self._conv is not None and not self._conv.ended:
            await self.publish_message(
                AgentStatus(conversation_id=self._conv.id, agent=agent, reachable=reachable),
                topic(GROUP_CHAT, self._conv.id),
            )

    @message_handler
    async def on_stop(self, message: StopConversation, ctx: MessageContext) -> None:
        if not from_a_person(ctx, message):
            return
        async with self._lock:
            if self._conv is not None and not self._conv.ended:
                await self._end(self._conv, message.reason)

    @message_handler
    async def on_human(self, message: HumanMessage, ctx: MessageContext) -> None:
        if not from_a_person(ctx, message):
            return
        async with self._lock:
            conv = self._conv
            if conv is None or conv.ended or any(m.id == message.id for m in conv.transcript):
                return
            if message.author in self._agent_names:
                log.warning("conversation %s: refused words sent as the agent %r", conv.id, message.author[:80])
                return
            seat = self._human_seat(conv, message.author)
            if seat is not None:  # a person whose seat's turn it is: their words are the turn
                assert conv.pending is not None
                conv.pending = None
                # A participant's turn, under the seat's name, whoever took it: it counts as a round,
                # and round robin goes on from it, as from an agent's.
                answer = ChatMessage(conversation_id=conv.id, id=message.id, author=seat, content=message.content)
                await self._complete_turn(conv, answer)
                return
            await self._record(
                conv,
                ChatMessage(
                    conversation_id=conv.id, id=message.id, author=message.author, content=message.content, kind="human"
                ),
            )

    def _is_human(self, name: str) -> bool:
        return name in self._seats

    def _human_seat(self, conv: Conversation, person: str) -> str | None:
        """The human seat whose turn is pending, if `person` may take it."""
        seat = self._seats.get(conv.pending.speaker) if conv.pending is not None else None
        return seat.name if seat is not None and seat.may_answer(person) else None

    @message_handler
    async def on_reply(self, message: AgentReply, ctx: MessageContext) -> None:
        if ctx.sender is None or ctx.sender.type != message.author:
            log.warning(
                "refused a reply for %r sent by %r", message.author[:80], ctx.sender.type if ctx.sender else None
            )
            return
        async with self._lock:
            conv = self._conv
            if conv is None or conv.ended or conv.pending is None or conv.pending.turn_id != message.turn_id:
                return  # late, repeated or foreign
            conv.pending = None
            if message.error is not None:
                await self._end(conv, f"{message.author}: {message.error}", ok=False)
                return
            # The reply and what comes next (the next speaker, or the end) are decided first
            # and stored together: one write per turn, and a restart finds them consistent.
            reply = ChatMessage(
                conversation_id=conv.id,
                id=message.message_id,
                author=message.author,
                content=message.content,
                tokens=message.tokens,
            )
            await self._complete_turn(conv, reply)

    async def _complete_turn(self, conv: Conversation, reply: ChatMessage) -> None:
        """The pending turn's message (an agent's reply or a person's answer): number it, decide
        what comes next, store both in one write, then publish them."""
        reply = reply.model_copy(update={"seq": len(conv.transcript) + 1})
        conv.transcript.append(reply)
        conv.rounds += 1
        crash_point("manager.reply.received")
        reason = termination_reason(conv, self._settings)
        budget = await self._budget(conv)
        reason = reason or budget.end
        choice, request = None, None
        if reason is None:
            choice = await self._select(conv, budget.left_out)
            choice.note = "; ".join(n for n in (choice.note, budget.note) if n)
            request = RequestToSpeak(
                conversation_id=conv.id, turn_id=new_id(), speaker=choice.speaker, history=conv.transcript
            )
            stored = await self._store.append(reply, pending_speaker=choice.speaker, pending_turn_id=request.turn_id)
        else:
            stored = await self._store.append(
                reply, status="ended", reason=reason, ok=True, pending_speaker=None, pending_turn_id=None
            )
        if not stored:
            conv.transcript.pop()
            self._taken_over(conv)
            return
        crash_point("manager.reply.stored")
        if choice is not None and request is not None:
            await self._begin_turn(conv, request, choice.note, budget.usage, said=reply)
        else:
            await self._publish(reply)
            await self._tell_usage(budget)
            await self._announce_end(conv, str(reason), ok=True)

    @message_handler
    async def on_turn_check(self, message: TurnCheck, ctx: MessageContext) -> None:
        """An agent asks, before it calls the model, whether the turn still waits for it."""
        if message.agent not in {agent.name for agent in self._agents}:
            return  # no topic is made for a name that is not ours
        # Without the lock: a turn is pending here before anyone is asked for it, so no handler
        # that holds the lock can be about to open the turn asked about.
        conv = self._conv
        taker = ""
        history = None
        if conv is not None:
            pending = conv.pending
            still = not conv.ended and pending is not None and pending.turn_id == message.turn_id
            if still and pending is not None and ctx.sender is not None and ctx.sender.type == message.agent:
                conv.taker = taker = message.replica  # the latest to check takes it; one before stops
                history = pending.history if message.send_history else None
        else:  # not held here (ended and let go, or not taken up yet): the store knows
            stored = await self._store.get(message.conversation_id)
            still = stored is not None and stored.status == "open" and stored.pending_turn_id == message.turn_id
        state = TurnState(
            conversation_id=message.conversation_id, turn_id=message.turn_id, open=still, taker=taker, history=history
        )
        await self.publish_message(state, topic(turn_topic_type(message.agent), message.conversation_id))

    # ------------------------------------------------------------ the tool-call journal

    @message_handler
    async def on_tool_started(self, message: ToolCallStarted, ctx: MessageContext) -> None:
        """Record a call before it runs, then say run, replay (it ran before), skip, or wait
        (for a person's approval)."""
        async with self._lock:
            decision = await self._tool_decision(message, ctx)
        await self._tell_agent(message.agent, decision)

    async def _tell_agent(self, agent: str, decision: ToolCallDecision) -> None:
        await self.publish_message(decision, topic(turn_topic_type(agent), decision.conversation_id))

    async def _tool_decision(self, message: ToolCallStarted, ctx: MessageContext) -> ToolCallDecision:
        def answer(action: ToolAction, result: str = "", is_error: bool = False, key: str = "") -> ToolCallDecision:
            return ToolCallDecision(
                **message.model_dump(include={"conversation_id", "turn_id", "index"}),
                call=message.call,
                action=action,
                result=result,
                is_error=is_error,
                key=key,
            )

        if self._conv is None:  # a restarted manager heard of the call before it resumed
            await self._resume(message.conversation_id)
        conv = self._conv
        if conv is None or conv.ended:
            return answer("skip", "not run: the conversation has ended", True)
        conv.may_have_tool_calls = True
        if ctx.sender is None or ctx.sender.type != message.agent:
            return answer("skip", "not run: the call did not come from that agent", True)
        pending = conv.pending
        if pending is None or pending.turn_id != message.turn_id or pending.speaker != message.agent:
            return answer("skip", "not run: it is not this agent's turn", True)
        policy = self._policy(message.agent, message.source)
        if policy is None:
            return answer("skip", "not run: no such tool in the agent's config", True)
        where = (conv.id, message.turn_id, message.call, message.index)
        key = call_key(*where)
        stored = await self._store.tool_call(*where)
        if stored is None and (over := await self._tool_budget_used(conv, message.agent)):
            return answer("skip", f"not run: {over}", True)
        conv.last_sign_of_life = clock.monotonic()
        if stored is None:
            waits = policy.needs_approval(message.tool)
            record = message.model_dump(include={"attempt", "agent", "tool", "source", "arguments"})
            await self._store.start_tool_call(*where, **record, status="awaiting" if waits else "started")
            crash_point("manager.tool.recorded")
            await self._publish_call(where)
            return answer("wait" if waits else "run", key=key)
        if stored.status in ENDED_TOOL_STATES:
            return answer("replay", stored.result or "", stored.status != "done", key)
        if stored.status == "awaiting":
            if clock.now() < stored.started_at + policy.approval_timeout:
                if stored.attempt != message.attempt:  # the turn was asked again: the answer goes to this run
                    await self._store.move_tool_call(*where, was="awaiting", now="awaiting", attempt=message.attempt)
                return answer("wait", key=key)
            note = f"denied: no one answered within {policy.approval_timeout:g} s"
            await self._store.move_tool_call(*where, was="awaiting", now="denied", result=note)
            await self._publish_call(where)
            return answer("skip", note, True, key)
        if stored.attempt == message.attempt:
            return answer("run", key=key)  # the same run asking again: its answer was lost
        # Started by an earlier run of this turn that died before reporting a result.
        moves: dict[str, tuple[str, str]] = {
            "retry": ("started", "interrupted before; running it again (on_interrupted: retry)"),
            "ask": ("awaiting", "interrupted before, result unknown: run it again? (on_interrupted: ask)"),
            "skip": (
                "skipped",
                "not run again: the agent stopped while running it, and its result is unknown (on_interrupted: skip)",
            ),
        }
        now, note = moves[policy.on_interrupted]
        await self._store.move_tool_call(
            *where, was="started", now=now, result=note, attempt=message.attempt, restart=now != "skipped"
        )
        await self._publish_call(where)
        if now == "skipped":
            return answer("skip", note, True, key)
        return answer("run" if now == "started" else "wait", key=key)

    async def _tool_budget_used(self, conv: Conversation, agent: str) -> str | None:
        """Why a new call of `agent` may not run: its tool-call budget, or the conversation's."""
        usage = await self._usage(conv)
        settings = next(a for a in self._agents if a.name == agent)
        mine = Usage(tool_calls=usage[agent].tool_calls)
        everyone = Usage(tool_calls=sum(u.tool_calls for u in usage.values()))
        if over := used_up(settings.budget, mine):
            return f"{agent} used its budget ({over})"
        if over := used_up(self._settings.budget, everyone):
            return f"the conversation used its budget ({over})"
        return None

    async def _publish_call(self, where: tuple[str, str, str, int]) -> None:
        """Tell everyone how a call stands, as stored."""
        stored = await self._store.tool_call(*where)
        if stored is not None:
            await self._publish(tool_event(stored, self._approval_timeout(stored)))

    def _policy(self, agent: str, source: int | None) -> ToolConfig | None:
        """The config entry of an agent's tool, if there is one."""
        settings = next((a for a in self._agents if a.name == agent), None)
        if settings is None or source is None or not 0 <= source < len(settings.tools):
            return None
        return settings.tools[source]

    def _approval_timeout(self, call: StoredToolCall) -> float:
        policy = self._policy(call.agent, call.source)
        return policy.approval_timeout if policy is not None else 0.0

    @message_handler
    async def on_tool_approval(self, message: ToolApproval, ctx: MessageContext) -> None:
        """A person's answer to a call awaiting approval: the first answer counts."""
        if not from_a_person(ctx, message):
            return
        async with self._lock:
            if self._conv is None:
                await self._resume(message.conversation_id)
            conv = self._conv
            if conv is None or conv.ended:
                return
            where = (conv.id, message.turn_id, message.call, message.index)
            stored = await self._store.tool_call(*where)
            if stored is None or stored.status != "awaiting":
                return  # answered already, denied by its timeout, or no such call
            who = " ".join(message.by.split())
            if message.approved:
                moved = await self._store.move_tool_call(
                    *where, was="awaiting", now="started", result=f"approved by {who}", restart=True
                )
                decision_action: ToolAction = "run"
            else:
                moved = await self._store.move_tool_call(
                    *where, was="awaiting", now="denied", result=f"denied by {who}"
                )
                decision_action = "skip"
            if not moved:
                return
            log.info("%s: %s %s", conv.id[:8], stored.tool, "approved" if message.approved else "denied")
            await self._publish_call(where)
        # The waiting agent hears now rather than at its next ask.
        decision = ToolCallDecision(
            conversation_id=conv.id,
            turn_id=message.turn_id,
            call=message.call,
            index=message.index,
            action=decision_action,
            result="" if message.approved else f"denied by {who}",
            is_error=not message.approved,
            key=stored.key,
        )
        await self._tell_agent(stored.agent, decision)

    @message_handler
    async def on_tool_finished(self, message: ToolCallFinished, ctx: MessageContext) -> None:
        """Record a call's result (even in an ended conversation: the effect happened), then confirm."""
        if ctx.sender is None or ctx.sender.type != message.agent:
            return
        async with self._lock:
            where = (message.conversation_id, message.turn_id, message.call, message.index)
            status: Literal["done", "error"] = "error" if message.is_error else "done"
            if await self._store.move_tool_call(*where, was="started", now=status, result=message.result):
                crash_point("manager.tool.result_stored")
                await self._publish_call(where)
            if self._conv is not None and self._conv.pending is not None:
                self._conv.last_sign_of_life = clock.monotonic()
        confirm = ToolCallDecision(
            conversation_id=message.conversation_id,
            turn_id=message.turn_id,
            call=message.call,
            index=message.index,
            action="recorded",
        )
        await self._tell_agent(message.agent, confirm)

    async def _select(self, conv: Conversation, left_out: Collection[str] = ()) -> Choice:
        candidates = [a for a in self._agents if a.name not in left_out] or self._agents
        with span("roundtable.manager.select", conversation=conv.id, strategy=self._settings.strategy):
            choice = self._choose(conv, candidates)
            if not isinstance(choice, Choice):
                choice = await choice
        return choice

    async def _next_turn(self, conv: Conversation, note: str = "", skip: str | None = None) -> None:
        budget = await self._budget(conv)
        if budget.end is not None:
            await self._tell_usage(budget)
            await self._end(conv, budget.end)
            return
        left_out = budget.left_out | ({skip} if skip else set())
        if skip and len(left_out) == len(self._agents):
            left_out = budget.left_out  # skipping the silent one would leave no one: ask it again
        choice = await self._select(conv, left_out)
        request = RequestToSpeak(
            conversation_id=conv.id, turn_id=new_id(), speaker=choice.speaker, history=conv.transcript
        )
        await self._store.set_pending(conv.id, choice.speaker, request.turn_id)
        await self._begin_turn(conv, request, "; ".join(n for n in (note, choice.note, budget.note) if n), budget.usage)

    # ------------------------------------------------------------ budgets

    async def _usage(self, conv: Conversation) -> dict[str, Usage]:
        """What each agent has used so far: the tokens of its messages, the calls it ran."""
        tokens = conv.tokens_by_author()
        stored = await self._store.tool_calls(conv.id) if conv.may_have_tool_calls else []
        calls = Counter(c.agent for c in stored if c.status in RAN_TOOL_STATES)
        return {a.name: Usage(tokens=tokens[a.name], tool_calls=calls[a.name]) for a in self._agents}

    async def _budget(self, conv: Conversation) -> Budget:
        """Checked before each speaker is asked: who is left out for using its budget, or why
        the conversation ends. Everyone hears the usage so far: with the next speaker, or alone
        before the end (`_tell_usage`)."""
        usage = await self._usage(conv)
        update = UsageUpdate(conversation_id=conv.id, usage=usage, limits=self._limits)
        total = Usage(
            tokens=sum(u.tokens for u in usage.values()), tool_calls=sum(u.tool_calls for u in usage.values())
        )
        over = used_up(self._settings.budget, total)
        if over:
            return Budget(end=f"the conversation used its budget ({over})", usage=update)
        verdict = Budget(usage=update)
        notes = []
        for agent in self._agents:
            over = used_up(agent.budget, usage[agent.name])
            if not over:
                continue
            if agent.budget.on_exceeded == "end":
                return Budget(end=f"{agent.name} used its budget ({over})", usage=update)
            verdict.left_out.add(agent.name)
            notes.append(f"{agent.name} is left out: it used its budget ({over})")
        if len(verdict.left_out) == len(self._agents):
            return Budget(end="every agent has used its budget", usage=update)
        verdict.note = "; ".join(notes)
        return verdict

    @property
    def _limits(self) -> dict[str, Usage]:
        def limit(budget: BudgetConfig) -> Usage:
            return Usage(tokens=budget.tokens or 0, tool_calls=budget.tool_calls or 0)

        limits = {a.name: limit(a.budget) for a in self._agents}
        limits[""] = limit(self._settings.budget)
        return limits

    async def _tell_usage(self, budget: Budget) -> None:
        if budget.usage is not None:
            await self._publish(budget.usage)

    async def _begin_turn(
        self,
        conv: Conversation,
        request: RequestToSpeak,
        note: str,
        usage: UsageUpdate | None = None,
        said: ChatMessage | None = None,
    ) -> None:
        """Ask the (stored) next speaker, then show what was just said and announce the turn,
        with the usage so far."""
        conv.pending = request
        conv.last_sign_of_life = 0.0
        conv.attempts = 0
        await self._ask(conv, first=True)
        if said is not None:
            await self._publish(said)
        if self._is_human(request.speaker):
            note = "; ".join(n for n in (note, "a person's turn: type the answer") if n)
        await self._publish(
            SpeakerSelected(
                conversation_id=conv.id, speaker=request.speaker, note=note, turn_id=request.turn_id, usage=usage
            )
        )

    async def _ask(self, conv: Conversation, first: bool = False) -> None:
        """Ask the pending turn's speaker. Only a new turn's first ask vouches for the turn being
        open (RequestToSpeak.fresh_for): one repeated (a timeout, a restart, a silent process)
        may come after the turn was answered elsewhere, so the agent checks it first."""
        request = conv.pending
        assert request is not None
        conv.attempts += 1
        conv.asks += 1
        conv.taker = ""
        if self._is_human(request.speaker):  # SpeakerSelected told the people; one of them answers
            log.info("waiting for a person in seat %s for turn %s", request.speaker, request.turn_id[:8])
        else:
            log.info("asking %s for turn %s (ask %d)", request.speaker, request.turn_id[:8], conv.asks)
            window = min(FRESH_ASK, self._settings.turn_timeout / 2) if first else 0.0
            update: dict[str, object] = {"asked_at": clock.now(), "fresh_for": window}
            history = request.history
            base = conv.sent.get(request.speaker, 0) if first else 0
            if 0 < base <= len(history):  # what the agent had last time, it is not sent again
                update |= {"history": history[base:], "base": base, "base_id": history[base - 1].id}
            conv.sent[request.speaker] = len(history)
            ask = request.model_copy(update=update)
            crash_point("manager.ask.before_publish")
            await self.publish_message(ask, topic(turn_topic_type(request.speaker), conv.id))
            crash_point("manager.ask.published")
        if self._deadline is not None and self._deadline is not asyncio.current_task():
            self._deadline.cancel()
        self._deadline = asyncio.create_task(self._turn_deadline(request.turn_id, conv.asks))

    async def _turn_deadline(self, turn_id: str, ask: int) -> None:
        wait = self._settings.turn_timeout
        while True:
            await asyncio.sleep(wait)
            conv = self._conv
            if conv is None or conv.last_sign_of_life == 0.0:
                break
            # Counted from the speaker's last tool call or result, not from the ask.
            wait = conv.last_sign_of_life + self._settings.turn_timeout - clock.monotonic()
            if wait <= 0:
                break
        async with self._lock:
            conv = self._conv
            if conv is None or conv.ended or conv.pending is None or conv.pending.turn_id != turn_id:
                return
            if conv.asks != ask:
                return  # asked again since; that ask has its own deadline
            speaker = conv.pending.speaker
            if conv.attempts <= self._settings.turn_retries and not self._is_human(speaker):
                log.warning("%s did not answer within %g s; asking again", speaker, self._settings.turn_timeout)
                await self._ask(conv)
                return
            conv.pending = None
            note = f"{speaker} did not answer within {self._settings.turn_timeout:g} s; skipped"
            log.warning(note)
            others = [a for a in self._agents if a.name != speaker]
            if not others:
                await self._end(conv, note, ok=False)
                return
            await self._next_turn(conv, note, skip=speaker)

    async def _timeout_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        async with self._lock:
            conv = self._conv
            if conv is not None and not conv.ended:
                reason = termination_reason(conv, self._settings)
                if reason is not None:
                    await self._end(conv, reason)

    async def _end(self, conv: Conversation, reason: str, ok: bool = True) -> None:
        await self._store.end(conv.id, reason, ok)
        await self._announce_end(conv, reason, ok)

    async def _announce_end(self, conv: Conversation, reason: str, ok: bool) -> None:
        """Tell everyone the (stored) end, and let go of the conversation."""
        crash_point("manager.end.stored")
        self._let_go(conv)
        log.info("conversation %s ended: %s", conv.id, reason)
        ended = ConversationEnded(conversation_id=conv.id, reason=reason, ok=ok, usage=await self._usage(conv))
        await self._publish(ended)
        for agent in self._agents:  # participants hear it on their own topic
            await self.publish_message(ended, topic(turn_topic_type(agent.name), conv.id))
        forget(self)  # the store has it all; a late message for it finds the conversation ended there


class Presence:
    """Who has been heard from lately. Three missed heartbeats make a participant unreachable,
    which every open conversation is told; when it is heard again it is asked for its turn."""

    def __init__(self, registry: dict[str, GroupChatManager], heartbeat: float) -> None:
        self._registry = registry
        self._heartbeat = heartbeat
        self._last_seen: dict[str, float] = {}
        self._replicas: dict[tuple[str, str], float] = {}  # (agent, replica) -> last heard
        self._unreachable: set[str] = set()

    async def heard(self, online: AgentOnline) -> None:
        self._last_seen[online.name] = clock.monotonic()
        key = (online.name[:64], online.replica[:64])
        if online.replica and (key in self._replicas or len(self._replicas) < REPLICAS_TRACKED):
            self._replicas[key] = clock.monotonic()
        back = online.name in self._unreachable
        if back:
            self._unreachable.discard(online.name)
            log.warning("%s is reachable again", online.name)
        for manager in list(self._registry.values()):
            if back:
                await manager.announce_status(online.name, reachable=True)
            if online.fresh or back:
                await manager.nudge(online.name)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            now = clock.monotonic()
            for (name, replica), seen in list(self._replicas.items()):
                if now - seen > 3 * self._heartbeat:
                    del self._replicas[(name, replica)]
                    for manager in list(self._registry.values()):
                        await manager.replica_gone(name, replica)
            for name, seen in list(self._last_seen.items()):
                if name not in self._unreachable and now - seen > 3 * self._heartbeat:
                    self._unreachable.add(name)
                    log.warning("%s is unreachable: no heartbeat for %.0f s", name, now - seen)
                    for manager in list(self._registry.values()):
                        await manager.announce_status(name, reachable=False)


def from_a_person(ctx: MessageContext, message: object) -> bool:
    """Starting, stopping, joining in and approving calls are a person's: pages and terminals
    publish as clients, with no agent as sender. An agent does not get to do them, least of all
    approve its own calls. With per-identity tokens the host vouches for every agent's sender, so
    this holds against a hostile agent process too; with the shared token, against a model."""
    if ctx.sender is None or ctx.sender.type == UNKNOWN_SENDER:
        return True
    log.warning("refused a %s sent by the agent %s", type(message).__name__, ctx.sender.type[:80])
    return False


class PresenceWatcher(RoutedAgent):
    """Receives the participants' heartbeats for `Presence`."""

    def __init__(self, presence: Presence) -> None:
        super().__init__("Watches participants come and go")
        self._presence = presence

    @message_handler
    async def on_online(self, message: AgentOnline, ctx: MessageContext) -> None:
        await self._presence.heard(message)


async def register_manager(
    runtime: WorkerRuntime,
    agents: Sequence[AgentConfig],
    settings: ManagerConfig,
    store: TranscriptStore,
    selector: ChatCompletionClient | None = None,
    heartbeat: float = 2.0,
    lease: Lease | None = None,
) -> asyncio.Task[None]:
    """Register the manager, then resume every conversation the store says is still open.
    Returns the task that watches the participants' heartbeats. With a `lease` (held), the
    manager writes and publishes only while it holds it."""
    if not agents:
        raise ValueError("the manager needs at least one agent")
    registry: dict[str, GroupChatManager] = {}
    if lease is not None:
        store.fence = lease.fence
    await GroupChatManager.register(
        runtime,
        MANAGER_TYPE,
        lambda: GroupChatManager(agents, settings, store, registry, selector, lease),
    )
    await runtime.add_subscription(TypeSubscription(CONTROL, MANAGER_TYPE))
    presence = Presence(registry, heartbeat)
    await PresenceWatcher.register(runtime, PRESENCE_TYPE, lambda: PresenceWatcher(presence))
    await runtime.add_subscription(TypeSubscription(PRESENCE, PRESENCE_TYPE))

    async def after_reconnect() -> None:
        # Anything in flight when the host went away may be lost: publish the transcripts
        # again and ask each pending speaker again (participants answer a turn only once).
        for manager in list(registry.values()):
            await manager.nudge(republish=True)

    runtime.on_reconnect(after_reconnect)
    # Open conversations carry on. Those that ended just now are sent again too: a manager that
    # died after storing an end, but before announcing it, would leave their followers waiting.
    just_ended = await store.recent(limit=1000, status="ended", since=clock.now() - ANNOUNCE_ENDS_WITHIN)
    for conversation_id in [*await store.open_ids(), *(c.id for c in just_ended)]:
        await runtime.publish_message(
            ResumeConversation(conversation_id=conversation_id), topic(CONTROL, conversation_id)
        )
    return asyncio.create_task(presence.watch())
