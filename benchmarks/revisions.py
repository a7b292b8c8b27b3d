"""Measurement 7 (quality, not speed): with the built-in config on the default model, does the
writer revise, and does every reply end on a full sentence?

`roundtable up --no-ui` runs the built-in writer and editor; `roundtable chat` runs each task
to its six turns. Counted over all tasks: writer rounds whose draft differs from the writer's
previous one, and replies that stop mid-sentence (the token limit cuts them back to their last
full sentence, so this should be 0; a reply with no full sentence at all ends in "…").
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ._procs import PYTHON, free_port, processes
from .settings import Settings

TASKS = (
    "Write a two-sentence opening for a story about a lighthouse keeper.",
    "Write a short product description for a handmade ceramic mug.",
    "Write a two-line poem about rain on a tin roof.",
    "Write a one-sentence slogan for a neighbourhood bicycle repair shop.",
    "Write a short invitation to a picnic in the park on Saturday.",
)
AUTHORS = ("writer", "editor")
SENTENCE_END = re.compile(r"[.!?…][\"'”’»)\]]*$")


def write_config(path: Path) -> Path:
    """The built-in config (no file of its own), on free ports and a private data dir."""
    data = {
        "host": {"address": f"127.0.0.1:{free_port()}", "connect_timeout": 30},
        "local_model": {"model": "default", "port": free_port()},
        "data_dir": str(path.parent / "data"),
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def messages(output: str) -> list[tuple[str, str]]:
    """The agents' messages as `roundtable chat` printed them; a message's later lines belong to it."""
    found: list[tuple[str, str]] = []
    current = False  # whether the last line printed was part of an agent's message
    for line in output.splitlines():
        author, _, text = line.partition(": ")
        if author in AUTHORS:
            found.append((author, text.strip()))
            current = True
        elif author.endswith(" (continued)") and found and found[-1][0] == author.removesuffix(" (continued)"):
            found[-1] = (found[-1][0], found[-1][1] + text.strip())
            current = True
        elif line.startswith(("· ", "user (task): ")) or not line.strip():
            current = False
        elif current and found:
            found[-1] = (found[-1][0], found[-1][1] + "\n" + line.strip())
    # A stream the terminal printed again whole (cut back at a sentence, say) is counted once, whole.
    return [m for m in found if not m[1].endswith(("(shown whole below)", "(interrupted)"))]


def score(conversations: list[list[tuple[str, str]]]) -> dict[str, Any]:
    rounds = revised = replies = cut = 0
    for conversation in conversations:
        drafts = [text for author, text in conversation if author == "writer"]
        rounds += max(0, len(drafts) - 1)
        revised += sum(1 for before, after in itertools.pairwise(drafts) if after != before)
        replies += len(conversation)
        cut += sum(1 for _, text in conversation if not SENTENCE_END.search(text))
    return {
        "tasks": len(conversations),
        "writer_rounds": rounds,
        "writer_revised": revised,
        "revised_share": revised / rounds if rounds else float("nan"),
        "replies": replies,
        "mid_sentence": cut,
    }


def run(settings: Settings, log_dir: Path) -> dict[str, Any]:
    if settings.revision_tasks == 0:
        return {"skipped": "quick mode: the default model's quality is measured in full runs"}
    config = write_config(log_dir / "revisions.yaml")
    conversations: list[list[tuple[str, str]]] = []
    seconds: list[float] = []
    with processes(log_dir) as procs:
        up = procs.roundtable("revisions-up", "up", "--no-ui", "--config", str(config))
        up.wait_for("everything is ready", timeout=900)
        for task in TASKS[: settings.revision_tasks]:
            began = time.monotonic()
            done = subprocess.run(
                [PYTHON, "-m", "roundtable", "chat", task, "--config", str(config), "--timeout", "900"],
                capture_output=True,
                text=True,
                timeout=960,
            )
            seconds.append(time.monotonic() - began)
            (log_dir / f"revisions-{len(conversations) + 1}.txt").write_text(done.stdout + done.stderr)
            if done.returncode != 0:
                print(done.stdout[-2000:] + done.stderr[-2000:], file=sys.stderr)
            conversations.append(messages(done.stdout))
    return score(conversations) | {"seconds_per_conversation": seconds}
