"""Property tests: config loading and message decoding never fail in any way but a clear one."""

from __future__ import annotations

import asyncio
from typing import Any

import yaml
from autogen_core import JSON_DATA_CONTENT_TYPE
from autogen_ext.runtimes.grpc.protos import cloudevent_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roundtable.config import ConfigError, config_from_dict, default_config_data, load_config
from roundtable.messages import WIRE_TYPES, ChatMessage
from roundtable.worker import WorkerRuntime

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
sections = st.sampled_from(
    ["host", "model", "local_model", "agents", "manager", "ui", "seed", "store", "data_dir", "junk"]
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(sections, values, max_size=5))
def test_any_config_loads_or_gets_one_clear_line(data: dict[str, Any]) -> None:
    try:
        config_from_dict(data, "test.yaml")
    except ConfigError as error:
        message = str(error)
        assert message.startswith("test.yaml")
        assert "\n" not in message


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_any_file_text_loads_or_gets_one_clear_line(tmp_path_factory: Any, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as error:
        assert "\n" not in str(error)


def test_the_built_in_config_round_trips_through_yaml() -> None:
    data = default_config_data()
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(data))) == config_from_dict(data)


@settings(max_examples=200)
@given(
    st.builds(
        ChatMessage,
        conversation_id=st.text(min_size=1, max_size=40),
        seq=st.integers(min_value=0, max_value=10**6),
        author=st.text(min_size=1, max_size=40),
        content=st.text(max_size=2000),
        kind=st.sampled_from(["task", "agent", "human"]),
    )
)
def test_chat_messages_round_trip_exactly(message: ChatMessage) -> None:
    assert ChatMessage.model_validate_json(message.model_dump_json()) == message


def _event(schema: str, data: bytes, content_type: str) -> cloudevent_pb2.CloudEvent:
    def attr(value: str) -> cloudevent_pb2.CloudEvent.CloudEventAttributeValue:
        return cloudevent_pb2.CloudEvent.CloudEventAttributeValue(ce_string=value)

    return cloudevent_pb2.CloudEvent(
        id="1",
        spec_version="1.0",
        type="group_chat",
        source="c",
        attributes={"datacontenttype": attr(content_type), "dataschema": attr(schema)},
        binary_data=data,
    )


schemas = st.sampled_from([t.__name__ for t in WIRE_TYPES] + ["no.such.Type", ""])  # as they travel
content_types = st.sampled_from([JSON_DATA_CONTENT_TYPE, "application/x-protobuf", "text/plain", ""])


@settings(max_examples=300, deadline=None)
@given(schemas, st.binary(max_size=300) | st.text(max_size=300).map(str.encode), content_types)
def test_a_worker_skips_whatever_it_cannot_decode(schema: str, data: bytes, content_type: str) -> None:
    runtime = WorkerRuntime("127.0.0.1:1")
    asyncio.run(runtime.handle_event(_event(schema, data, content_type)))
