"""Pure functions that decide what the chat does: prompts, speaker names, termination."""

from __future__ import annotations

import asyncio
import time

import pytest
from autogen_core import ClosureContext, MessageContext
from harness import LoopTicks

from roundtable.config import AgentConfig, ManagerConfig, TerminationConfig
from roundtable.manager import Conversation, find_named, termination_reason
from roundtable.messages import ChatMessage, ResumeConversation
from roundtable.participant import ModelForm, render_prompt


def msg(author: str, content: str, kind: str = "agent") -> ChatMessage:
    return ChatMessage(conversation_id="c", author=author, content=content, kind=kind)  # type: ignore[arg-type]


def test_prompt_restates_the_task_and_the_feedback_since_the_writers_last_turn() -> None:
    writer = AgentConfig(
        name="writer", first_prompt="Task: {task}", prompt="Task: {task}|{my_last}|{last_author}|{last_message}"
    )
    history = [msg("user", "Write a haiku", "task")]
    assert render_prompt(writer, history) == "Task: Write a haiku"
    history += [msg("writer", "Draft one"), msg("editor", "More colour"), msg("user", "Name the cat Ada", "human")]
    assert (
        render_prompt(writer, history)
        == "Task: Write a haiku|Draft one|editor and user|editor: More colour\nuser: Name the cat Ada"
    )


def test_without_templates_the_history_goes_as_it_is() -> None:
    assert render_prompt(AgentConfig(name="writer"), [msg("user", "hi", "task")]) is None


def test_tokens_are_counted_once_per_message_and_again_when_one_counted_is_taken_back() -> None:
    def said(author: str, tokens: int) -> ChatMessage:
        return msg(author, "words").model_copy(update={"tokens": tokens})

    conv = Conversation(id="c", task="t", transcript=[said("writer", 5), said("editor", 3)])
    assert conv.tokens_by_author() == {"writer": 5, "editor": 3}
    conv.transcript.append(said("writer", 7))
    # A message counted is not looked at again: one changed behind the count's back stays as counted.
    conv.transcript[0] = conv.transcript[0].model_copy(update={"tokens": 500})
    assert conv.tokens_by_author() == {"writer": 12, "editor": 3}
    conv.transcript.pop()  # not stored (another manager wrote first), and another in its place
    conv.transcript.append(said("editor", 1))
    assert conv.tokens_by_author() == {"writer": 500, "editor": 4}
    conv.transcript.pop()
    assert conv.tokens_by_author() == {"writer": 500, "editor": 3}


def test_the_models_form_of_a_history_is_made_once_per_message_and_anew_for_another_history() -> None:
    form = ModelForm("writer")
    history = [msg("user", "Write", "task"), msg("writer", "Draft 1"), msg("editor", "Shorter")]
    first = form.of(history[:2])
    assert [(type(m).__name__, m.source, m.content) for m in first] == [
        ("UserMessage", "user", "Write"),
        ("AssistantMessage", "writer", "Draft 1"),
    ]
    longer = form.of(history)  # goes on from the last: the first two are the same objects
    assert longer[:2] == first and all(a is b for a, b in zip(first, longer[:2], strict=True))
    assert (type(longer[2]).__name__, longer[2].content) == ("UserMessage", "Shorter")
    older = form.of(history[:1])  # an older ask, shorter than what was made: made anew
    assert [m.content for m in older] == ["Write"] and older[0] is not first[0]
    other = [msg("user", "Paint", "task"), msg("writer", "Sketch")]  # another history altogether
    assert [m.content for m in form.of(other)] == ["Paint", "Sketch"]
    swapped = [other[0], msg("editor", "Not the sketch")]  # same first message, another second
    assert [m.content for m in form.of(swapped)] == ["Paint", "Not the sketch"]
    again = form.of([*swapped, msg("writer", "Draft 2")])  # and it grows on from there
    assert [m.content for m in again] == ["Paint", "Not the sketch", "Draft 2"]


def test_the_selector_answer_names_the_first_participant_it_mentions() -> None:
    names = ["writer", "editor"]
    assert find_named("I pick editor, then writer", names) == "editor"
    assert find_named("WRITER.", names) == "writer"
    assert find_named("the rewriter", names) is None
    assert find_named("banana", names) is None


def test_termination_any_and_all() -> None:
    conv = Conversation(id="c", task="t", transcript=[msg("editor", "looks good, APPROVE")], rounds=2)
    any_rule = ManagerConfig(termination=TerminationConfig(max_rounds=5, text_mention="APPROVE", timeout=None))
    assert termination_reason(conv, any_rule) == "'APPROVE' mentioned by editor"
    all_rule = ManagerConfig(termination=TerminationConfig(max_rounds=5, text_mention="APPROVE", combine="all"))
    assert termination_reason(conv, all_rule) is None
    conv.rounds = 5
    conv.started = time.time() - 10_000
    assert (
        termination_reason(conv, all_rule)
        == "max_rounds reached (5 rounds); 'APPROVE' mentioned by editor; timeout after 600 s"
    )


@pytest.mark.parametrize(
    ("text", "reason", "expected"),
    [
        ("A lamp turns. The sea is dark and the", "length", "A lamp turns."),
        ('She said "go!" and then', "length", 'She said "go!"'),
        ("Try this. Or you could describe the sound of the", "length", "Try this."),
        ("No full sentence here at all", "length", "No full sentence here at all…"),
        ("A lamp turns. The sea is dark and the", "stop", "A lamp turns. The sea is dark and the"),
        ("  Done.  ", "length", "Done."),
        ("Version 3.5 is out and", "length", "Version 3.5 is out and…"),
    ],
)
def test_a_reply_cut_by_its_token_limit_ends_at_its_last_full_sentence(text: str, reason: str, expected: str) -> None:
    from roundtable.replies import finish_reply

    assert finish_reply(text, reason) == expected


async def test_a_scripted_reply_with_a_cpu_cost_spends_that_cpu_in_this_process_beside_its_event_loop() -> None:
    """The benchmarks' agent whose turn costs CPU (cpu_ms): the work is this process's, and the
    event loop goes on meanwhile (heartbeats, turn checks), as beside a real model or tool."""
    from autogen_core.models import UserMessage

    from roundtable.scripted import ScriptedChatCompletionClient

    client = ScriptedChatCompletionClient(["done"], cpu_ms=300)
    ticks = LoopTicks()
    before = time.process_time()
    try:
        result = await client.create([UserMessage(content="go", source="user")])
    finally:
        ticks.stop()
    assert result.content == "done"
    assert time.process_time() - before >= 0.3
    assert ticks.count >= 3, "the event loop stood still while the reply's CPU was spent"


def test_a_room_link_and_a_persons_name_are_read_strictly() -> None:
    from roundtable.ui.rooms import origin_of, person_name, requested_room, room_link, stopper

    assert person_name("access_token=x; roundtable_name=Ana%20Lima") == "Ana Lima"
    assert person_name("roundtable_name=Zoë") == "Zoë"
    for bad in ("roundtable_name=", "roundtable_name=%0Aforged", "roundtable_name=" + "a" * 41, "other=ana", None):
        assert person_name(bad) is None, bad
    assert requested_room("http://h:8000/?room=ab12_CD-3") == "ab12_CD-3"
    assert requested_room("http://h:8000/thread/x") is None and requested_room(None) is None
    with pytest.raises(ValueError, match=r"^this room link names no conversation: 'a b' is not a conversation id$"):
        requested_room("http://h:8000/?room=a%20b")
    origin = origin_of("https://chat.example:8443/?room=1", "http://127.0.0.1:8000")
    assert room_link(origin, "abc") == "https://chat.example:8443/?room=abc"
    assert origin_of("javascript:alert(1)", "http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert (stopper("ana"), stopper("user")) == ("stopped by ana", "stopped by the user")


def test_a_room_keeps_what_it_was_shown_once_and_names_who_started_it() -> None:
    from roundtable.messages import ConversationEnded
    from roundtable.ui.rooms import Room

    room = Room("c")
    room.stream("m2", "writer", "Dra")
    room.stream("m2", "writer", "ft")
    assert room.streaming == {"m2": ("writer", "Draft")} and not room.complete
    task = ChatMessage(conversation_id="c", id="m1", author="ana", content="Write", kind="task")
    room.record(task)
    room.record(task)  # sent again (a reconnect): kept once
    room.record(ChatMessage(conversation_id="c", id="m2", author="writer", content="Draft"))
    assert room.streaming == {} and room.complete and room.owner == "ana" and room.task == "Write"
    assert [m.id for m in room.shown if isinstance(m, ChatMessage)] == ["m1", "m2"]
    room.record(ConversationEnded(conversation_id="c", reason="done"))
    assert not room.running


def test_no_person_takes_an_agents_name_on_the_page() -> None:
    from roundtable.config import Config, ConfigError
    from roundtable.ui.settings import page_settings

    config = Config.model_validate(
        {"agents": [{"name": "writer"}, {"name": "ana", "kind": "human"}], "ui": {"auth": True, "users": {"ana": "pw"}}}
    )
    assert page_settings(config, "127.0.0.1:1").reserved == {"writer", "roundtable"}  # a seat's name is a person's
    taken = config.model_copy(update={"ui": config.ui.model_copy(update={"users": {"writer": "pw"}})})
    with pytest.raises(ConfigError, match=r"^ui.users: writer is an agent's name; a person needs a name of their own$"):
        page_settings(taken, "127.0.0.1:1")


async def test_a_stream_held_back_past_its_authors_newer_message_is_not_shown() -> None:
    """After a node's loss the last chunks of a writer's answer given up on can come after the
    answer that replaced it, and after the editor's began. The terminal shows the first marked as
    cut short and does not pick it up again; its whole message, should it come, still shows."""
    import io

    from autogen_core import SingleThreadedAgentRuntime
    from harness import terminal_messages

    from roundtable.chat import TerminalSink
    from roundtable.messages import GROUP_CHAT, STREAM, StreamChunk, topic
    from roundtable.observer import register_observer

    out = io.StringIO()
    sink = TerminalSink("c", out, color=False)
    runtime = SingleThreadedAgentRuntime()
    await register_observer(runtime, "observer", sink)
    runtime.start()

    async def chunks(message_id: str, author: str, words: range) -> None:
        for i in words:
            chunk = StreamChunk(
                conversation_id="c", message_id=message_id, author=author, index=i, text=f" w{i}" if i else "w0"
            )
            await runtime.publish_message(chunk, topic(STREAM, "c"))
            await runtime.stop_when_idle()
            runtime.start()

    async def message(message_id: str, author: str, words: int) -> None:
        content = "".join(f" w{i}" for i in range(words)).strip()
        chat = ChatMessage(conversation_id="c", id=message_id, author=author, content=content)
        await runtime.publish_message(chat, topic(GROUP_CHAT, "c"))
        await runtime.stop_when_idle()
        runtime.start()

    await chunks("draft-1", "writer", range(0, 3))
    await message("draft-2", "writer", 6)  # asked again, answered whole by another replica
    await chunks("feedback", "editor", range(0, 2))
    await chunks("draft-1", "writer", range(3, 6))  # the first answer's chunks, held back till now
    await chunks("feedback", "editor", range(2, 6))
    await message("feedback", "editor", 6)
    await message("draft-1", "writer", 6)  # and its whole message: shown, nothing is lost
    await runtime.stop()
    shown = out.getvalue()
    assert shown.count("(interrupted)") == 1, shown
    whole = "w0 w1 w2 w3 w4 w5"
    assert terminal_messages(shown) == [("writer", whole), ("editor", whole), ("writer", whole)], shown


async def test_a_stream_that_overtakes_the_announcement_of_its_turn_is_shown_after_it() -> None:
    """The manager asks the next speaker before it publishes the last message and "writer speaks
    next", and on the NATS bus each topic has its own consumer: the writer's stream can come first.
    Its chunks wait for that turn's SpeakerSelected; a turn whose announcement never comes (one
    followed from mid-turn) shows its message whole when it comes."""
    import io

    from autogen_core import SingleThreadedAgentRuntime

    from roundtable import observer
    from roundtable.chat import TerminalSink
    from roundtable.messages import GROUP_CHAT, STREAM, SpeakerSelected, StreamChunk, topic

    out = io.StringIO()
    runtime = SingleThreadedAgentRuntime()
    await observer.register_observer(runtime, "observer", TerminalSink("c", out, color=False))
    runtime.start()

    async def publish(message: object, topic_type: str) -> None:
        await runtime.publish_message(message, topic(topic_type, "c"))
        await runtime.stop_when_idle()
        runtime.start()

    def chunk(message_id: str, turn_id: str, index: int, text: str) -> StreamChunk:
        return StreamChunk(
            conversation_id="c", message_id=message_id, turn_id=turn_id, author="writer", index=index, text=text
        )

    await publish(chunk("draft-2", "t3", 0, "Draft"), STREAM)
    await publish(chunk("draft-2", "t3", 1, " two"), STREAM)
    assert "Draft" not in out.getvalue()  # held: its turn is not announced yet
    await publish(ChatMessage(conversation_id="c", id="fb", author="editor", content="Shorter"), GROUP_CHAT)
    await publish(SpeakerSelected(conversation_id="c", speaker="writer", turn_id="t3"), GROUP_CHAT)
    await publish(chunk("draft-2", "t3", 2, " here"), STREAM)  # the turn is announced: shown at once
    assert out.getvalue().endswith("writer: Draft two here"), out.getvalue()
    await publish(ChatMessage(conversation_id="c", id="draft-2", author="writer", content="Draft two here"), GROUP_CHAT)
    await publish(chunk("draft-3", "t5", 0, "Unannounced"), STREAM)
    assert "Unannounced" not in out.getvalue()
    await publish(ChatMessage(conversation_id="c", id="draft-3", author="writer", content="Unannounced"), GROUP_CHAT)
    await publish(chunk("draft-3", "t5", 1, " late"), STREAM)  # after its whole message: dropped
    await runtime.stop()
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    assert lines == ["editor: Shorter", "· writer speaks next", "writer: Draft two here", "writer: Unannounced"], lines


async def test_a_message_that_overtakes_one_it_follows_waits_for_it_then_for_no_more_than_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bus node that dies with a message in flight loses it for this follower, and the next one
    comes first. The follower asks the manager to publish the conversation again, and the two are
    shown in order. One that never comes holds the rest up only GAP_WAIT s."""
    import io

    from autogen_core import ClosureAgent, SingleThreadedAgentRuntime, TypeSubscription

    from roundtable import observer
    from roundtable.chat import TerminalSink
    from roundtable.messages import CONTROL, GROUP_CHAT, SpeakerSelected, topic

    monkeypatch.setattr(observer, "GAP_WAIT", 0.05)
    out = io.StringIO()
    runtime = SingleThreadedAgentRuntime()
    await observer.register_observer(runtime, "observer", TerminalSink("c", out, color=False))
    asked: list[ResumeConversation] = []  # what the manager is asked for

    async def ask(_: ClosureContext, message: ResumeConversation, ctx: MessageContext) -> None:
        asked.append(message)

    subscription = TypeSubscription(CONTROL, "manager")
    await ClosureAgent.register_closure(runtime, "manager", ask, subscriptions=lambda: [subscription])
    runtime.start()

    async def publish(message: object) -> None:
        await runtime.publish_message(message, topic(GROUP_CHAT, "c"))
        await runtime.stop_when_idle()
        runtime.start()

    def said(seq: int, author: str, content: str) -> ChatMessage:
        kind = "task" if seq == 1 else "agent"
        return ChatMessage(conversation_id="c", id=f"m{seq}", seq=seq, author=author, content=content, kind=kind)

    def shown() -> list[str]:
        return [line for line in out.getvalue().splitlines() if line.strip()]

    await publish(said(1, "user", "Write"))
    await publish(said(2, "writer", "Draft 1"))
    await publish(said(4, "writer", "Draft 2"))  # the editor's message (3) was lost on the way
    await publish(said(4, "writer", "Draft 2"))  # and the next one came twice
    await publish(SpeakerSelected(conversation_id="c", speaker="editor", turn_id="t5"))
    assert "Draft 2" not in out.getvalue()
    assert asked == [ResumeConversation(conversation_id="c")]  # once for the gap, not per message
    for seq, author, content in ((1, "user", "Write"), (2, "writer", "Draft 1"), (3, "editor", "Shorter")):
        await publish(said(seq, author, content))  # the manager publishes the conversation again
    assert shown() == [
        "user (task): Write",
        "writer: Draft 1",
        "· editor speaks next",
        "editor: Shorter",
        "writer: Draft 2",
    ], shown()

    await publish(said(7, "writer", "Draft 3"))  # 5 and 6 never come
    deadline = time.monotonic() + 30
    while "Draft 3" not in out.getvalue():
        assert time.monotonic() < deadline, "what waits for a message that never comes was never shown"
        await asyncio.sleep(0.01)
    await publish(said(6, "editor", "Late"))  # one that comes after all is shown when it does
    await runtime.stop()
    assert shown()[-2:] == ["writer: Draft 3", "editor: Late"], shown()


async def test_chunks_waiting_for_their_turn_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of turns never announced (an agent that names turns that do not exist) cannot
    fill the page's memory: past the bound, the oldest turn's are let go."""
    import io

    from autogen_core import SingleThreadedAgentRuntime

    from roundtable import observer
    from roundtable.chat import TerminalSink
    from roundtable.messages import GROUP_CHAT, STREAM, SpeakerSelected, StreamChunk, topic

    monkeypatch.setattr(observer, "HELD_CHARS", 10)
    out = io.StringIO()
    runtime = SingleThreadedAgentRuntime()
    await observer.register_observer(runtime, "observer", TerminalSink("c", out, color=False))
    runtime.start()
    for turn, text in (("t1", "aaaaaaaa"), ("t2", "bbbbbbbb")):
        chunk = StreamChunk(conversation_id="c", message_id=f"m-{turn}", turn_id=turn, author="w", index=0, text=text)
        await runtime.publish_message(chunk, topic(STREAM, "c"))
        await runtime.stop_when_idle()
        runtime.start()
    for turn in ("t1", "t2"):
        announced = SpeakerSelected(conversation_id="c", speaker="w", turn_id=turn)
        await runtime.publish_message(announced, topic(GROUP_CHAT, "c"))
    await runtime.stop_when_idle()
    assert "aaaaaaaa" not in out.getvalue() and "w: bbbbbbbb" in out.getvalue(), out.getvalue()


def test_an_event_on_the_bus_is_taken_only_on_its_own_subject_and_vouched_by_its_publisher() -> None:
    from autogen_ext.runtimes.grpc.protos import cloudevent_pb2

    from roundtable.natsbus import event_subject, on_its_subject, vouch
    from roundtable.wire import SENDER_TYPE

    event = cloudevent_pb2.CloudEvent(id="1", type="turn.editor", source="c")
    event.attributes[SENDER_TYPE].ce_string = "roundtable_manager"
    own = event_subject(event, "manager")
    assert on_its_subject(event, own)
    # Delivered through another's consumer, on a subject the publisher may use but not this topic's.
    assert not on_its_subject(event, own.replace(b"turn.editor".hex(), b"seed_hello".hex()))
    vouch(event, own.replace(".manager", ".writer"), strict=True)  # the writer claiming the manager
    assert event.attributes[SENDER_TYPE].ce_string == "writer"
    event.attributes[SENDER_TYPE].ce_string = "roundtable_manager"
    vouch(event, own.replace(".manager", "._"), strict=False)  # no identities: the claim stands
    assert event.attributes[SENDER_TYPE].ce_string == "roundtable_manager"
    vouch(event, own.replace(".manager", "._"), strict=True)  # identities, and none behind it
    assert event.attributes[SENDER_TYPE].ce_string == "unknown"
