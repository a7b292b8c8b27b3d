"""llama.cpp in process: the same `Llama` the model server builds, on the same argv, asked the
same request the agent sent, and iterated directly. The baseline for streaming throughput.

Settings come from llama_cpp.server's own parser and loader, and the request goes through
its own request model with the exclusions the server applies, so nothing can drift apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from roundtable.localmodel import server_command, server_env

from ._control import serve_commands

# Fields the server drops before calling create_chat_completion (llama_cpp/server/app.py).
SERVER_EXCLUDES = {"n", "logit_bias_type", "user", "min_tokens"}


def load(model_path: Path, n_ctx: int, n_threads: int) -> Any:
    clean = server_env()
    for key in list(os.environ):
        if key not in clean:
            del os.environ[key]  # the server never sees these settings either
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.model import LlamaProxy
    from llama_cpp.server.settings import ModelSettings, Settings

    argv = server_command(model_path, "127.0.0.1", 1, n_ctx, n_threads)[3:]  # after `python -m llama_cpp.server`
    parser = argparse.ArgumentParser()
    add_args_from_model(parser, Settings)
    parser.add_argument("--config_file", type=str)
    # (llama_cpp's annotation says an instance; it takes the class and returns an instance)
    settings: Any = parse_model_from_args(ModelSettings, parser.parse_args(argv))
    return LlamaProxy.load_llama_from_model_settings(settings)


def generate(llama: Any, request: dict[str, Any]) -> dict[str, Any]:
    from llama_cpp.server.types import CreateChatCompletionRequest

    body = CreateChatCompletionRequest.model_validate(request)
    if body.logit_bias is not None or body.grammar is not None or body.min_tokens > 0:
        raise ValueError("the captured request uses options this baseline does not replay")
    kwargs = body.model_dump(exclude=SERVER_EXCLUDES)
    kwargs["stream"] = True
    tokens: list[list[Any]] = []
    start = time.monotonic()
    for chunk in llama.create_chat_completion(**kwargs):
        content = chunk["choices"][0]["delta"].get("content")
        if content:
            tokens.append([time.monotonic(), content])
    return {"t0": start, "tokens": tokens}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    llama = load(Path(args.model_path), args.n_ctx, args.threads)

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        if command["cmd"] != "generate":
            raise ValueError(f"unknown command {command['cmd']!r}")
        return generate(llama, command["request"])  # blocking on purpose: nothing else runs here

    await serve_commands(handle)


if __name__ == "__main__":
    asyncio.run(main())
