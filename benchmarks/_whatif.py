"""`roundtable manager` with its transcript store replaced by no-ops: a diagnostic, to measure
what the store costs a turn. Never a way to run roundtable.

    python -m benchmarks._whatif --config FILE ...   (the arguments of `roundtable manager`)
"""

from __future__ import annotations

import sys
from typing import Any


def without_store() -> None:
    from roundtable import store

    async def nothing(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    async def stored(self: Any, *args: Any, **kwargs: Any) -> bool:
        return True

    async def none_open(self: Any) -> list[str]:
        return []

    async def no_calls(self: Any, *args: Any) -> list[Any]:
        return []

    cls: Any = store.TranscriptStore
    for name in ("set_pending", "end", "get"):
        setattr(cls, name, nothing)
    cls.start = cls.append = stored  # a new conversation, each message: as if written
    cls.open_ids = none_open
    cls.tool_calls = no_calls


if __name__ == "__main__":
    without_store()
    from roundtable.cli import main

    sys.exit(main(["manager", *sys.argv[1:]]))
