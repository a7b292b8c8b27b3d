"""A tool with a side effect that can be counted: each run appends one line to a file.

COUNTER_FILE names the file. Exactly-once tests count the lines per idempotency key.
"""

from __future__ import annotations

import json
import os
import time

from roundtable.tools import current_call


def count(label: str) -> str:
    """Count one more for `label` (a side effect: a line in the counter file). Returns the new total."""
    call = current_call()
    path = os.environ["COUNTER_FILE"]
    delay = float(os.environ.get("COUNTER_DELAY", "0"))
    if delay:
        time.sleep(delay)  # a window in which a kill leaves the call started but unrecorded
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps({"label": label, "key": call.key if call else None}) + "\n")
        out.flush()
        os.fsync(out.fileno())
    with open(path, encoding="utf-8") as counted:
        total = sum(1 for line in counted if json.loads(line)["label"] == label)
    return f"{label} is now {total}"


def fail(reason: str) -> str:
    """Always fails, with `reason`."""
    raise RuntimeError(reason)
