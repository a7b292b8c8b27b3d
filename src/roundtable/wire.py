"""AutoGen's gRPC wire contract as roundtable uses it: metadata and attribute names, size limits.

The host and the workers both follow these, so neither side can kill the other's stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class HostUnreachable(Exception):
    """The gRPC host could not be reached; the message says where and what to check."""


class HostRefused(Exception):
    """The host refused a registration or subscription: not this identity's, or already taken."""


class RuntimeStopped(RuntimeError):
    """This process's runtime has stopped (it is shutting down): nothing more can be published."""


#: gRPC's message size limit: what a host sends and a worker accepts.
MAX_GRPC_MESSAGE_BYTES = 16 * 1024 * 1024
#: Room the host keeps to rewrite what it forwards (a spoofed sender, a call's own id).
HOST_HEADROOM_BYTES = 64 * 1024
#: What a host accepts and a worker sends: less than the host sends, by the headroom.
HOST_RECEIVE_LIMIT = MAX_GRPC_MESSAGE_BYTES - HOST_HEADROOM_BYTES

CLIENT_ID_KEY = "client-id"  # gRPC metadata: which client a call comes from
SENDER_TYPE = "agagentsendertype"  # CloudEvent attributes: who published an event
SENDER_KEY = "agagentsenderkey"
SCHEMA = "dataschema"  # CloudEvent attributes: the message type's name, its encoding, and
CONTENT_TYPE = "datacontenttype"
MESSAGE_KIND = "agmsgkind"  # ... what kind of message it is (always PUBLISH for an event)
PUBLISH = "publish"
#: Set by the NATS bus on receipt (natsbus.py): the one agent type an event was delivered for.
DELIVERED_TO = "rtdeliveredto"
DELIVERY = "rtdelivery"  # ... and which of its deliveries to this process, to acknowledge once handled
TRACE_KEYS = ("traceparent", "tracestate")  # W3C trace context, carried as attributes
#: The sender of a message published by no agent (a page, a terminal), or by one a client does not own.
UNKNOWN_SENDER = "unknown"


def vouch_sender(attributes: Any, own: str | None, owns: Callable[[str], bool]) -> None:
    """Set an event's sender (its CloudEvent `attributes`) to what its publisher may claim: a
    sender it `owns` stands; any other, or none, becomes its identity's `own` (an agent's name, the
    manager's type) or, for an identity with none (a page), "unknown" (none stays none)."""
    claimed = attributes[SENDER_TYPE].ce_string if SENDER_TYPE in attributes else ""
    if own is not None and (not claimed or not owns(claimed)):
        # An identity's events carry its own name, whatever it claims (or if it claims none).
        attributes[SENDER_TYPE].ce_string = own
        key = attributes[SENDER_KEY].ce_string if claimed else ""
        attributes[SENDER_KEY].ce_string = key or "default"
    elif claimed and not owns(claimed):
        attributes[SENDER_TYPE].ce_string = UNKNOWN_SENDER
        if SENDER_KEY in attributes:
            attributes[SENDER_KEY].ce_string = UNKNOWN_SENDER
