"""A stock AutoGen 0.7.5 host, as AutoGen's samples run one, with no roundtable code.

python stock_host.py ADDRESS
"""

from __future__ import annotations

import asyncio
import signal
import sys

from autogen_ext.runtimes.grpc import GrpcWorkerAgentRuntimeHost


async def main(address: str) -> None:
    host = GrpcWorkerAgentRuntimeHost(address=address)
    host.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await asyncio.sleep(0.5)  # `start` only schedules the server
    print(f"roundtable ready: stock host on {address}", flush=True)
    await stop.wait()
    await host.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
