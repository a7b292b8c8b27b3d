"""One participant of the group chat: an AutoGen AssistantAgent inside a RoutedAgent.

Managed mode: the manager asks it to speak (the history travels with the request),
it streams tokens on the stream topic, and sends its finished reply to the manager.
Seed mode: the tutorial's shape, agents answering each other's TextMessages on one topic,
ours or stock AutoGen ones written from the tutorial.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from autogen_agentchat.agents import AssistantAgent, BaseChatAgent
from autogen_agentchat.base import Response
from autogen_agentchat.messages import ModelClientStreamingChunkEvent, TextMessage
from autogen_core import (
    CancellationToken,
    MessageContext,
    RoutedAgent,
    TypeSubscription,
    message_handler,
)
from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import AssistantMessage, ChatCompletionClient, LLMMessage, UserMessage
from autogen_core.tools import Workbench

from . import clock
from .config import AgentConfig, ConfigError, SeedConfig
from .crashpoints import crash_point
from .messages import (
    CONTROL,
    MANAGER_TYPE,
    PRESENCE,
    PRESENCE_SOURCE,
    SEED_HELLO,
    SEED_OPENER,
    SEED_SOURCE,
    SEED_TOPIC,
    SEED_TURN_KEY,
    STREAM,
    AgentOnline,
    AgentReply,
    ChatMessage,
    ConversationEnded,
    RequestToSpeak,
    SeedExchange,
    SeedHello,
    StreamChunk,
    ToolCallDecision,
    TurnCheck,
    TurnState,
    new_id,
    still_held,
    topic,
    turn_topic_type,
)
from .models import explain_model_error
from .outbox import Outbox
from .replies import FinishReasonRecorder, finish_reply
from .telemetry import span
from .tools import AgentContext, AgentTools, Journal, journaled, load_object
from .wire import RuntimeStopped
from .worker import WorkerRuntime, forget

log = logging.getLogger("roundtable.participant")

#: Before it calls the model for a turn asked late or again, a participant asks the manager
#: whether the turn is still open (and for the messages its ask left out, if it lacks them),
#: every TURN_CHECK_RESEND s, for up to CHECK_WAIT s: a host back up, or a manager that took
#: over, answers by then. It speaks only on the manager's word: with no answer it leaves the
#: turn to the manager's next ask, so a slow manager never gets two processes serving one
#: agent to answer the same turn.
#: This process, among those serving the same agent (see AgentOnline.replica).
REPLICA = new_id()[:12]
TURN_CHECK_RESEND = 1.0
CHECK_WAIT = 60.0


def _since_last_turn(name: str, history: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The messages this agent has not answered yet: everything after its last one."""
    for i in range(len(history) - 1, -1, -1):
        if history[i].author == name:
            return list(history[i + 1 :])
    return [m for m in history if m.kind != "task"] or list(history[-1:])


def render_prompt(settings: AgentConfig, history: Sequence[ChatMessage]) -> str | None:
    """The one user message built from the agent's template, or None to pass the history as is."""
    if settings.prompt is None and settings.first_prompt is None:
        return None
    my_last = next((m.content for m in reversed(history) if m.author == settings.name), None)
    template = settings.prompt if my_last is not None or not settings.first_prompt else settings.first_prompt
    if template is None:
        return None
    task = next((m.content for m in history if m.kind == "task"), history[0].content if history else "")
    recent = _since_last_turn(settings.name, history)
    authors = list(dict.fromkeys(m.author for m in recent))
    if len(authors) > 1:
        last_message = "\n".join(f"{m.author}: {m.content}" for m in recent)
    else:
        last_message = "\n".join(m.content for m in recent)
    values = {
        "task": task,
        "history": "\n".join(f"{m.author}: {m.content}" for m in history[-12:]),
        "last_author": " and ".join(authors) or "user",
        "last_message": last_message,
        "my_last": my_last or "",
        "name": settings.name,
    }
    return template.format_map(values)


class ModelForm:
    """A conversation's messages as the model reads them: the agent's own as its, the rest as
    the user's. Each is made once: a transcript only grows, and each message keeps its id, so
    a long conversation's turn costs no more than a short one's. A history that does not go on
    from the last one (an older ask, another conversation) is made anew."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._made: list[LLMMessage] = []
        self._last_id = ""  # of the last message made

    def of(self, history: Sequence[ChatMessage]) -> list[LLMMessage]:
        made = still_held(history, (len(self._made), self._last_id))
        del self._made[made:]
        for m in history[made:]:
            if m.author == self.name:
                self._made.append(AssistantMessage(content=m.content, source=m.author))
            else:
                self._made.append(UserMessage(content=m.content, source=m.author))
            self._last_id = m.id
        return list(self._made)


#: Tokens that come within this long of the last chunk sent travel together in the next one.
#: A real model's tokens are further apart and go one by one; a burst costs one message, and a
#: reply that comes whole (a scripted model, a cache) one chunk.
COALESCE_SECONDS = 0.015


class _ChunkSender:
    """Publishes one message's tokens as `StreamChunk`s, numbered so the order can be restored."""

    def __init__(self, agent: Participant, conversation_id: str, message_id: str, turn_id: str) -> None:
        self._agent = agent
        self._topic = topic(STREAM, conversation_id)
        self._conversation_id = conversation_id
        self._message_id = message_id
        self._turn_id = turn_id
        self._index = 0
        self._buffer = ""
        self._last_sent = 0.0
        self._flush: asyncio.Task[None] | None = None

    def add(self, text: str) -> None:
        self._buffer += text
        if self._flush is not None:
            return  # a send is already due; this token goes with it
        # Due at once after a quiet spell, yet not before the model's next wait: the tokens of a
        # burst (a whole reply at once, several in one network read) go as one chunk.
        wait = max(0.0, self._last_sent + COALESCE_SECONDS - clock.monotonic())
        self._flush = asyncio.create_task(self._send_after(wait))

    async def _send_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self._flush = None
        await self._send()

    async def _send(self, done: bool = False) -> None:
        text, self._buffer = self._buffer, ""
        if not text:
            return
        self._last_sent = clock.monotonic()
        chunk = StreamChunk(
            conversation_id=self._conversation_id,
            message_id=self._message_id,
            turn_id=self._turn_id,
            author=self._agent.name,
            index=self._index,
            text=text,
            done=done,
        )
        self._index += 1
        await self._agent.publish_message(chunk, self._topic)
        crash_point("agent.stream.chunk")

    def abandon(self) -> None:
        """Send nothing more: the message stops where it is, as if its process had died."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._buffer = ""

    async def close(self) -> None:
        """Send what is left, marked as the last piece. With nothing left (a model whose tokens
        come apart went one by one), nothing: the whole message follows and ends the stream."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._buffer:
            await self._send(done=True)


class Participant(RoutedAgent):
    """One instance per conversation (the conversation id is its key)."""

    def __init__(
        self,
        settings: AgentConfig,
        client: ChatCompletionClient,
        seed: SeedConfig | None = None,
        tools: AgentTools | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        super().__init__(settings.description or settings.system_message)
        self._settings = settings
        self._seed = seed
        self._context = UnboundedChatCompletionContext()
        self._client = FinishReasonRecorder(client)  # one per conversation: turns don't overlap
        self._journal = Journal(settings.name, self.id.key, self.publish_message)
        workbench = journaled(tools, self._journal) if tools is not None else []
        self._assistant = make_agent(settings, self._client, self._context, workbench, self.id.key)
        # Each turn is answered once: a repeated request (the manager asks again after a
        # crash or a timeout) gets the same reply, or nothing while the answer is on its way.
        self._answered: dict[str, AgentReply] = {}
        self._answering: set[str] = set()
        self._outbox = outbox  # ... and the same after a restart, from the disk
        self._checks: dict[str, asyncio.Future[TurnState]] = {}  # turn id -> the manager's word on it
        self._history: list[ChatMessage] = []  # the history of the last turn asked here
        self._earlier = ModelForm(settings.name)  # the history before a turn's last message
        self._speaking: dict[str, asyncio.Future[AgentReply]] = {}  # turn id -> its answer being made
        self._seed_exchange = SeedExchange()
        self._seed_answering = asyncio.Lock()
        self._seed_opened = False
        self._seed_greeted: set[str] = set()

    @property
    def name(self) -> str:
        return self._settings.name

    async def _prepare(self, history: Sequence[ChatMessage]) -> list[TextMessage]:
        """Load the context from the history that came with the request; return the new input."""
        if self._settings.factory is not None or self._settings.a2a is not None:
            # Your own agent (or a remote one) keeps what it likes between calls, but each turn
            # starts it afresh with the whole history: the same after a restart as before it.
            await self._assistant.on_reset(CancellationToken())
            return [TextMessage(content=m.content, source=m.author) for m in history]
        await self._context.clear()
        prompt = render_prompt(self._settings, history)
        if prompt is not None:
            return [TextMessage(content=prompt, source="user")]
        for llm_message in self._earlier.of(history[:-1]):
            await self._context.add_message(llm_message)
        last = history[-1]
        return [TextMessage(content=last.content, source=last.author)]

    async def speak(
        self, conversation_id: str, message_id: str, history: Sequence[ChatMessage], turn_id: str = ""
    ) -> str:
        """Generate the next message, streaming tokens as they arrive. Raises on model failure."""
        new_messages = await self._prepare(history)
        chunks = _ChunkSender(self, conversation_id, message_id, turn_id)
        final: str | None = None
        try:
            async for event in self._assistant.on_messages_stream(new_messages, CancellationToken()):
                if isinstance(event, ModelClientStreamingChunkEvent):
                    chunks.add(event.content)
                elif isinstance(event, Response):
                    final = event.chat_message.to_text()
        except asyncio.CancelledError:
            chunks.abandon()  # the turn went to another process, or ended: what streamed reads as cut off
            raise
        except BaseException:
            await chunks.close()
            raise
        await chunks.close()
        return finish_reply(final or "", self._client.last_finish_reason)

    @message_handler
    async def on_request_to_speak(self, message: RequestToSpeak, ctx: MessageContext) -> None:
        if not from_manager(ctx, message):
            return
        reply_topic = topic(CONTROL, message.conversation_id)
        if message.turn_id in self._answering:
            return
        self._answering.add(message.turn_id)
        try:
            answered = self._answered.get(message.turn_id)
            if answered is None and self._outbox is not None:
                answered = self._outbox.get(message.conversation_id, message.turn_id)
            if answered is not None:
                await self.publish_message(answered, reply_topic)
                return
            history = self._whole_history(message)
            if history is None or not vouched(message):
                state = await self._turn_open(message, send_history=history is None)
                if state is None:
                    return  # the manager did not answer: its next ask (timeout, restart) comes here again
                if not state.open:
                    log.info("%s: turn %s is no longer open; not answering it", self.name, message.turn_id[:8])
                    return
                if history is None:
                    history = state.history
                if history is None:
                    log.warning(
                        "%s: the manager did not send the history of turn %s; it will ask again",
                        self.name,
                        message.turn_id[:8],
                    )
                    return
            self._history = history
            answering = self._speaking[message.turn_id] = asyncio.ensure_future(self._answer(message, history))
            try:
                reply = await answering
            except asyncio.CancelledError:
                handler = asyncio.current_task()
                if handler is not None and handler.cancelling():
                    raise  # this handler itself is being cancelled, not only the answer
                log.info(
                    "%s: turn %s was taken by another process, or its conversation ended; stopped answering it",
                    self.name,
                    message.turn_id[:8],
                )
                return
        finally:
            self._answering.discard(message.turn_id)
            self._speaking.pop(message.turn_id, None)
        self._answered = {message.turn_id: reply}  # only the latest turn can be asked again
        if self._outbox is not None:
            self._outbox.put(reply)
        crash_point("agent.reply.ready")
        await self.publish_message(reply, reply_topic)
        crash_point("agent.reply.sent")

    def _whole_history(self, message: RequestToSpeak) -> list[ChatMessage] | None:
        """The ask's whole history: as sent, or completed from the last ask this process had;
        None when the ask left out messages this process does not hold."""
        if message.base == 0:
            return message.history
        held = self._history
        if len(held) < message.base or held[message.base - 1].id != message.base_id:
            return None
        return held[: message.base] + message.history

    async def _turn_open(self, message: RequestToSpeak, send_history: bool = False) -> TurnState | None:
        """The manager's word on whether the turn still waits for this agent (with its whole
        history, if asked for); None if the manager does not answer in time."""
        loop = asyncio.get_running_loop()
        check = TurnCheck(
            conversation_id=message.conversation_id,
            turn_id=message.turn_id,
            agent=self.name,
            replica=REPLICA,
            send_history=send_history,
        )
        answer: asyncio.Future[TurnState] = loop.create_future()
        self._checks[message.turn_id] = answer
        deadline = loop.time() + CHECK_WAIT
        try:
            while loop.time() < deadline:
                await self.publish_message(check, topic(CONTROL, message.conversation_id))
                try:
                    wait = min(TURN_CHECK_RESEND, deadline - loop.time())
                    return await asyncio.wait_for(asyncio.shield(answer), max(wait, 0.0))
                except asyncio.TimeoutError:
                    continue
            log.warning(
                "%s: the manager did not say within %g s whether turn %s is open; left to its next ask",
                self.name,
                CHECK_WAIT,
                message.turn_id[:8],
            )
            return None
        finally:
            self._checks.pop(message.turn_id, None)

    @message_handler
    async def on_turn_state(self, message: TurnState, ctx: MessageContext) -> None:
        if not from_manager(ctx, message):
            return
        answer = self._checks.get(message.turn_id)
        if answer is not None and not answer.done():
            answer.set_result(message)
            return
        answering = self._speaking.get(message.turn_id)
        if answering is not None and message.taker and message.taker != REPLICA:
            answering.cancel()  # asked again and taken by another process: one answer, from it

    async def _answer(self, message: RequestToSpeak, history: Sequence[ChatMessage]) -> AgentReply:
        """Generate this turn's reply; a model failure is the reply's error."""
        self._journal.begin_turn(message.turn_id)
        message_id = new_id()
        log.info("%s: speaking in %s (turn %s)", self.name, message.conversation_id, message.turn_id[:8])
        content, error = "", None
        self._client.tokens = 0
        crash_point("agent.turn.begun")
        try:
            with span("roundtable.agent.speak", agent=self.name, conversation=message.conversation_id):
                content = await self.speak(message.conversation_id, message_id, history, message.turn_id)
        except RuntimeStopped:
            raise  # this process is going away mid-turn: no reply; the turn is asked again
        except Exception as failure:  # any model failure ends the turn with a reason
            error = await explain_model_error(failure)
            log.error("%s: %s", self.name, error)
        return AgentReply(
            conversation_id=message.conversation_id,
            turn_id=message.turn_id,
            message_id=message_id,
            author=self.name,
            content=content,
            error=error,
            tokens=self._client.tokens,
        )

    @message_handler
    async def on_seed_message(self, message: TextMessage, ctx: MessageContext) -> None:
        """Seed mode: answer what is said on the tutorial's topic, by our peer or by a stock
        AutoGen agent, in the tutorial's own TextMessage."""
        if self._seed is None:
            return  # managed mode: the history arrives with each request
        said = self._seed_exchange.add(message)
        if said is None or said.author == self.name:
            return  # heard before, or our own words
        exchange = self._seed_exchange
        async with self._seed_answering:  # one answer at a time: the assistant has one context
            if said not in exchange.messages:
                return  # a new exchange began meanwhile
            if exchange.turns >= self._seed.max_turns:
                log.info("%s: the seed exchange reached %d turns", self.name, self._seed.max_turns)
                return
            message_id = new_id()
            try:
                content = await self.speak(SEED_SOURCE, message_id, list(exchange.messages))
            except Exception as failure:
                log.error("%s: %s", self.name, await explain_model_error(failure))
                return
            turn = exchange.turns + 1
            if said not in exchange.messages or turn > self._seed.max_turns:
                return  # a new exchange began, or another agent took the last turn, while we spoke
            # The same id as the streamed chunks, so the page puts this in place of the stream.
            reply = TextMessage(id=message_id, content=content, source=self.name, metadata={SEED_TURN_KEY: str(turn)})
            exchange.add(reply)
            await self.publish_message(reply, topic(SEED_TOPIC, SEED_SOURCE))

    @message_handler
    async def on_seed_hello(self, message: SeedHello, ctx: MessageContext) -> None:
        """Two seed agents find each other whatever order they start in; the one whose
        name sorts first opens the conversation, exactly once."""
        if self._seed is None or message.name == self.name:
            return
        if not message.reply and message.name not in self._seed_greeted:
            self._seed_greeted.add(message.name)
            await self.publish_message(SeedHello(name=self.name, reply=True), topic(SEED_HELLO, SEED_SOURCE))
        if self.name < message.name and not self._seed_opened:
            self._seed_opened = True
            log.info("%s: %s is here; opening the conversation", self.name, message.name)
            opening = TextMessage(content=self._seed.task, source=SEED_OPENER)
            self._seed_exchange.add(opening)
            await self.publish_message(opening, topic(SEED_TOPIC, SEED_SOURCE))

    @message_handler
    async def on_tool_decision(self, message: ToolCallDecision, ctx: MessageContext) -> None:
        """The manager's word on a tool call this agent is about to make (or has made)."""
        if not from_manager(ctx, message):
            return
        self._journal.on_decision(message)

    @message_handler
    async def on_ended(self, message: ConversationEnded, ctx: MessageContext) -> None:
        if not from_manager(ctx, message):
            return
        log.info("%s: conversation %s ended: %s", self.name, message.conversation_id, message.reason)
        for answering in self._speaking.values():
            answering.cancel()  # stopped mid-turn: no one wants the rest of the answer
        if self._outbox is not None:
            self._outbox.drop(message.conversation_id)
        forget(self)


def vouched(message: RequestToSpeak) -> bool:
    """Whether the manager's ask still vouches for its turn being open (see manager.FRESH_ASK)."""
    return message.fresh_for > 0 and abs(clock.now() - message.asked_at) <= message.fresh_for


#: (message type, claimed sender) already warned about: a flood of forgeries is one line each.
_WARNED: set[tuple[str, str]] = set()


def from_manager(ctx: MessageContext, message: object) -> bool:
    """Whether the manager sent this. Only the manager asks for turns, answers turn checks, rules
    on tool calls and ends conversations. The host vouches for every sender (one it cannot vouch
    for arrives as "unknown"), so anything else that sends these is refused, with a warning once."""
    if ctx.sender is not None and ctx.sender.type == MANAGER_TYPE:
        return True
    sender = ctx.sender.type if ctx.sender is not None else "no sender"
    if (type(message).__name__, sender) not in _WARNED:
        _WARNED.add((type(message).__name__, sender))
        log.warning("ignored a %s from %r: only the manager sends those", type(message).__name__, sender[:80])
    return False


def make_agent(
    settings: AgentConfig,
    client: ChatCompletionClient,
    context: UnboundedChatCompletionContext,
    workbench: list[Workbench],
    conversation_id: str,
) -> BaseChatAgent:
    """The AgentChat agent behind a participant: the config's factory's, or an AssistantAgent
    with the agent's tools (every call through the journaled workbench)."""
    if settings.a2a is not None:
        from .a2a_agent import RemoteA2AAgent

        return RemoteA2AAgent(settings.name, settings.description, settings.a2a, conversation_id)
    if settings.factory is not None:
        factory = load_object(settings.factory, f"agents.{settings.name}.factory")
        made = factory(
            AgentContext(
                name=settings.name,
                description=settings.description or settings.system_message,
                system_message=settings.system_message,
                model_client=client,
                workbench=workbench,
                conversation_id=conversation_id,
            )
        )
        if not isinstance(made, BaseChatAgent):
            raise ConfigError(
                f"agents.{settings.name}.factory: {settings.factory} returned {type(made).__name__},"
                " not an AgentChat agent (a BaseChatAgent such as AssistantAgent)"
            )
        return made
    return AssistantAgent(
        name=settings.name,
        model_client=client,
        system_message=settings.system_message,
        description=settings.description or settings.system_message,
        model_context=context,
        model_client_stream=True,
        workbench=workbench or None,
        reflect_on_tool_use=True if workbench else None,
        max_tool_iterations=settings.max_tool_iterations,
    )


def check_factory(settings: AgentConfig, client: ChatCompletionClient) -> None:
    """Call the factory once at start, so a bad one is a one-line error now, not a silent turn later."""
    make_agent(settings, client, UnboundedChatCompletionContext(), [], "roundtable-factory-check")


async def register_participant(
    runtime: WorkerRuntime,
    settings: AgentConfig,
    client: ChatCompletionClient,
    seed: SeedConfig | None = None,
    heartbeat: float = 2.0,
    tools: AgentTools | None = None,
    outbox: Outbox | None = None,
) -> asyncio.Task[None] | None:
    """Register the agent type and its subscriptions, then say so: in managed mode to the
    manager (which asks again for any turn this agent owes), in seed mode to the peer."""
    await Participant.register(runtime, settings.name, lambda: Participant(settings, client, seed, tools, outbox))
    if seed is None:
        # Only its own topic: the manager sends it both "your turn" and the end there, so the
        # group chat's traffic is not delivered (and decoded) here for nothing.
        await runtime.add_subscription(TypeSubscription(turn_topic_type(settings.name), settings.name))

        async def announce(fresh: bool = True) -> None:
            online = AgentOnline(name=settings.name, fresh=fresh, replica=REPLICA)
            await runtime.publish_message(online, topic(PRESENCE, PRESENCE_SOURCE))

        async def beat() -> None:
            while True:
                await asyncio.sleep(heartbeat)
                if runtime.connection.connected:
                    await announce(fresh=False)

        runtime.on_reconnect(announce)
        await announce()
        return asyncio.create_task(beat())
    for topic_type in (SEED_TOPIC, SEED_HELLO):
        await runtime.add_subscription(TypeSubscription(topic_type, settings.name))
    # Give the host a moment to apply the subscriptions before the peer can answer.
    await asyncio.sleep(0.2)
    await runtime.publish_message(SeedHello(name=settings.name), topic(SEED_HELLO, SEED_SOURCE))
    return None
