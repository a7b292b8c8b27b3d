"""A stand-in for llama-cpp-python whose engine dies by SIGILL, as a build for another CPU does.

Put tests/fake_engine first on PYTHONPATH. FAKE_ENGINE_CRASH_ON=N: the Nth completion dies
(default 1). Core dumps are switched off so a test leaves no core file behind.
"""

from __future__ import annotations

import os
import resource
import signal
from typing import Any


def die_like_a_foreign_build() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.kill(os.getpid(), signal.SIGILL)


class Llama:
    def __init__(self, model_path: str, **kwargs: Any) -> None:
        self.model_path = model_path

    def create_completion(self, prompt: str, **kwargs: Any) -> dict[str, Any]:
        die_like_a_foreign_build()
        raise AssertionError("unreachable")
