"""A small real MCP server (the official SDK's FastMCP) for the tests of MCP tools.

`python -m toolkit.mcp_server --transport stdio`, or `--transport http --port N` for streamable
HTTP at http://127.0.0.1:N/mcp (it prints uvicorn's "Uvicorn running on ..." when it listens).
MCP_SERVER_PID_FILE, if set, names a file it writes its process id to: a stdio server is the
agent's child, and a test that kills it needs to know which process it is.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mcp.server.fastmcp import FastMCP

server = FastMCP("roundtable-test-tools", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@server.tool()
def shout(text: str) -> str:
    """The text in capitals, with an exclamation mark."""
    return text.upper() + "!"


@server.tool()
def fail(reason: str) -> str:
    """Always fails, with `reason`."""
    raise RuntimeError(reason)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m toolkit.mcp_server")
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if pid_file := os.environ.get("MCP_SERVER_PID_FILE"):
        Path(pid_file).write_text(str(os.getpid()), encoding="utf-8")
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.settings.port = args.port
        server.settings.log_level = "INFO"  # uvicorn's "running on" line is how a test knows it listens
        server.run("streamable-http")


if __name__ == "__main__":
    main()
