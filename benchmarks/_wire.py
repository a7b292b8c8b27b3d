"""What a published message costs on the wire: its JSON payload and the whole gRPC envelope,
built exactly as `GrpcWorkerAgentRuntime.publish_message` (AutoGen 0.7.5) builds it."""

from __future__ import annotations

import uuid
from typing import Any

from autogen_core import JSON_DATA_CONTENT_TYPE, TopicId
from autogen_core._serialization import SerializationRegistry, try_get_known_serializers_for_type
from autogen_ext.runtimes.grpc import _constants
from autogen_ext.runtimes.grpc.protos import agent_worker_pb2, cloudevent_pb2

_registry = SerializationRegistry()


def envelope(message: Any, topic_id: TopicId, sender: tuple[str, str] = ("unknown", "unknown")) -> Any:
    """The `agent_worker_pb2.Message` the worker would send for `message` on `topic_id`."""
    if not _registry.is_registered(_registry.type_name(message), JSON_DATA_CONTENT_TYPE):
        _registry.add_serializer(try_get_known_serializers_for_type(type(message)))
    type_name = _registry.type_name(message)
    data = _registry.serialize(message, type_name=type_name, data_content_type=JSON_DATA_CONTENT_TYPE)
    value = cloudevent_pb2.CloudEvent.CloudEventAttributeValue
    attributes = {
        _constants.DATA_CONTENT_TYPE_ATTR: value(ce_string=JSON_DATA_CONTENT_TYPE),
        _constants.DATA_SCHEMA_ATTR: value(ce_string=type_name),
        _constants.AGENT_SENDER_TYPE_ATTR: value(ce_string=sender[0]),
        _constants.AGENT_SENDER_KEY_ATTR: value(ce_string=sender[1]),
        _constants.MESSAGE_KIND_ATTR: value(ce_string=_constants.MESSAGE_KIND_VALUE_PUBLISH),
    }
    return agent_worker_pb2.Message(
        cloudEvent=cloudevent_pb2.CloudEvent(
            id=str(uuid.uuid4()),
            spec_version="1.0",
            type=topic_id.type,
            source=topic_id.source,
            attributes=attributes,
            binary_data=data,
        )
    )


def envelope_size(message: Any, topic_id: TopicId, sender: tuple[str, str] = ("unknown", "unknown")) -> tuple[int, int]:
    """(JSON payload bytes, whole protobuf message bytes)."""
    wrapped = envelope(message, topic_id, sender)
    return len(wrapped.cloudEvent.binary_data), int(wrapped.ByteSize())
