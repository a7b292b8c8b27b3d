"""An agent's finished replies, kept on its own disk until their conversation ends.

A reply lives in the agent's memory between being generated and being stored by the
manager. If the agent dies in that window, the restarted agent would call the model again
for a turn it had already answered. With the outbox it sends the kept reply instead.

One file per conversation holds its latest reply (the only one the manager can ask for
again). It is written to a temporary file and renamed, so a crash leaves the old reply or
the new one, never half of one. It is not flushed to the disk itself (no fsync): what it
guards against is the process dying, which the operating system's cache survives; after a
crash of the whole machine, the worst case is one more model call.

The files are small and go to the page cache, so they are written in the event loop, and
which conversations have one is known from a listing at start: a turn costs one write and
one rename, and no read unless there is something to read.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from pydantic import ValidationError

from .messages import AgentReply

log = logging.getLogger("roundtable.outbox")


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._kept = {file.stem for file in directory.glob("*.json")}

    @classmethod
    def at(cls, directory: Path) -> Outbox | None:
        """The outbox in `directory`, or None (with a warning) where it cannot be made: the agent
        still works, only a reply finished just before a crash is generated again."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            return cls(directory)
        except OSError as error:
            log.warning("replies are not kept on disk: cannot use %s: %s", directory, error.strerror)
            return None

    @staticmethod
    def _name(conversation_id: str) -> str:
        # Conversation ids come from clients: hashed, one cannot name a path.
        return hashlib.sha256(conversation_id.encode()).hexdigest()[:32]

    def get(self, conversation_id: str, turn_id: str) -> AgentReply | None:
        """The kept reply to this turn, if there is one."""
        name = self._name(conversation_id)
        if name not in self._kept:
            return None
        file = self.directory / f"{name}.json"
        try:
            reply = AgentReply.model_validate_json(file.read_bytes())
        except (OSError, ValidationError) as error:
            log.warning("ignored an unreadable kept reply %s: %s", file, str(error).splitlines()[0])
            return None
        same = reply.conversation_id == conversation_id and reply.turn_id == turn_id
        return reply if same else None

    def put(self, reply: AgentReply) -> None:
        """Keep `reply` (in place of the conversation's last) before this returns."""
        name = self._name(reply.conversation_id)
        file = self.directory / f"{name}.json"
        part = file.with_suffix(".part")
        try:
            part.write_bytes(reply.model_dump_json().encode())
            os.replace(part, file)
        except OSError as error:  # the reply still goes out; only a crash before then would cost it
            log.warning("could not keep the reply to turn %s on disk: %s", reply.turn_id[:8], error)
            return
        self._kept.add(name)

    def drop(self, conversation_id: str) -> None:
        """The conversation has ended: nothing of it will be asked for again."""
        name = self._name(conversation_id)
        if name in self._kept:
            self._kept.discard(name)
            (self.directory / f"{name}.json").unlink(missing_ok=True)
