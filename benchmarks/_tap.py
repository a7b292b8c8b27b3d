"""A TCP pass-through between an agent and the llama.cpp server that timestamps every
streamed token as it leaves the server, and keeps the last request body.

It forwards bytes before it looks at them, so it adds one loopback hop and no parsing
delay. The time each token passes here is when the server sent it: the start of the
token-to-subscriber latency the benchmark measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

from ._control import serve_commands


class Tap:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.tokens: list[list[Any]] = []  # [time, text] per non-empty content delta
        self.request: Any = None

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        upstream = asyncio.create_task(self._requests(client_reader, server_writer))
        try:
            await self._responses(server_reader, client_writer)
        finally:
            upstream.cancel()
            for writer in (client_writer, server_writer):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            buffer += data
            head, sep, body = buffer.partition(b"\r\n\r\n")
            if not sep:
                continue
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(body) >= length:
                with contextlib.suppress(ValueError):
                    self.request = json.loads(body[:length])
                buffer = body[length:]

    async def _responses(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pending = b""
        while data := await reader.read(65536):
            arrived = time.monotonic()
            writer.write(data)
            await writer.drain()
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                # The body is HTTP-chunked; an SSE line arrives whole inside one chunk.
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    if delta.get("content"):
                        self.tokens.append([arrived, delta["content"]])

    async def command(self, command: dict[str, Any]) -> dict[str, Any]:
        if command["cmd"] != "take":
            raise ValueError(f"unknown command {command['cmd']!r}")
        tokens, self.tokens = self.tokens, []
        return {"tokens": tokens, "request": self.request}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--target", required=True, help="host:port of the model server")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    tap = Tap(host, int(port))
    server = await asyncio.start_server(tap.handle, "127.0.0.1", args.listen)
    async with server:
        await serve_commands(tap.command)


if __name__ == "__main__":
    asyncio.run(main())
