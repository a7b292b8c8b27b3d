"""A stand-in for llama-cpp-python whose engine dies by SIGILL, as a build for another CPU does.

Put tests/fake_engine first on PYTHONPATH. FAKE_ENGINE_CRASH_ON=N: the Nth completion dies
(default 1). Core dumps are switched off so a test leaves no core file behind.
"""

from __future__ import annotations

import resource
import signal
import threading
import time
from typing import Any


def die_like_a_foreign_build() -> None:
    """Die here, in this thread, before anything else is done: a process-wide kill could reach
    another thread first while this one went on to answer."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.pthread_kill(threading.get_ident(), signal.SIGILL)
    time.sleep(3600)  # not reached


class Llama:
    def __init__(self, model_path: str, **kwargs: Any) -> None:
        self.model_path = model_path

    def create_completion(self, prompt: str, **kwargs: Any) -> dict[str, Any]:
        die_like_a_foreign_build()
        raise AssertionError("unreachable")
