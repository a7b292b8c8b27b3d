"""An agent's finished replies, kept on its own disk until their conversation ends.

A reply lives in the agent's memory between being generated and being stored by the
manager. If the agent dies in that window, the restarted agent would call the model again
for a turn it had already answered. With the outbox it sends the kept reply instead.

One file per conversation, a reply per line, appended: the last whole line is the latest
reply (the only one the manager can ask for again). One append is one write, which a process
that dies cannot cut in half; a line cut short by a crash of the whole machine is passed over
for the one before it. Past COMPACT_BYTES the file is written anew with the latest reply alone
(to a temporary file, then renamed). It is not flushed to the disk itself (no fsync): what it
guards against is the process dying, which the operating system's cache survives; after a
crash of the whole machine, the worst case is one more model call.

The files are small and go to the page cache, so they are written in the event loop, and
which conversations have one is known from a listing at start, and which turn each holds from
the last append: a turn costs one append (about 10 us here, against 140 us for a write and a
rename), and no read but after a restart.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from pydantic import ValidationError

from .messages import AgentReply

log = logging.getLogger("roundtable.outbox")

#: A conversation's file is written anew with its latest reply alone once it grows past this.
COMPACT_BYTES = 64 * 1024


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # The conversations with a file: the turn of the reply last kept there, by this process;
        # None for a file found at start, whose turn only reading it tells.
        self._kept: dict[str, str | None] = {file.stem: None for file in directory.glob("*.json")}

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
        if name not in self._kept or self._kept[name] not in (None, turn_id):
            return None  # no file, or this process kept another turn's reply there last
        file = self.directory / f"{name}.json"
        try:
            lines = file.read_bytes().splitlines()
        except OSError as error:
            log.warning("ignored an unreadable kept reply %s: %s", file, error.strerror)
            return None
        for line in reversed(lines):
            if not line:
                continue
            try:
                reply = AgentReply.model_validate_json(line)
            except ValidationError as error:  # cut short by a crash: the one before is the latest whole
                log.warning("ignored an unreadable kept reply in %s: %s", file, str(error).splitlines()[0])
                continue
            same = reply.conversation_id == conversation_id and reply.turn_id == turn_id
            return reply if same else None
        return None

    def put(self, reply: AgentReply) -> None:
        """Keep `reply` (after the conversation's last) before this returns."""
        name = self._name(reply.conversation_id)
        file = self.directory / f"{name}.json"
        # The newline goes first: a line a crash cut short is ended by the next reply's.
        line = b"\n" + reply.model_dump_json().encode()
        try:
            with file.open("ab") as out:
                out.write(line)
                if out.tell() > COMPACT_BYTES:
                    part = file.with_suffix(".part")
                    part.write_bytes(line)
                    os.replace(part, file)
        except OSError as error:  # the reply still goes out; only a crash before then would cost it
            log.warning("could not keep the reply to turn %s on disk: %s", reply.turn_id[:8], error)
            return
        self._kept[name] = reply.turn_id

    def drop(self, conversation_id: str) -> None:
        """The conversation has ended: nothing of it will be asked for again."""
        name = self._name(conversation_id)
        if name in self._kept:
            del self._kept[name]
            (self.directory / f"{name}.json").unlink(missing_ok=True)
