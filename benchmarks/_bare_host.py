"""Stock AutoGen 0.7.5 host, as its samples run it: `GrpcWorkerAgentRuntimeHost(address)`, nothing else."""

from __future__ import annotations

import asyncio
import sys

from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntimeHost

from ._control import serve_commands


async def main(address: str) -> None:
    host = GrpcWorkerAgentRuntimeHost(address=address)
    host.start()
    await asyncio.sleep(0.5)  # `start` only schedules the server; the benchmark also waits for the port

    async def idle(command: dict[str, object]) -> dict[str, object]:
        return {"ok": True}

    try:
        await serve_commands(idle)
    finally:
        await host.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
