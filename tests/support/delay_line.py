"""A TCP relay that holds every chunk travelling back to the client for a set delay.

Run inside a host's namespace in front of a server's port, it stands in for netem's
`delay` on the host's link (the kernels these tests run on may lack netem): the reply
direction is delayed, in order and without limiting throughput, the request direction
is not. Starts with no delay; SIGUSR1 sets 50 ms, SIGUSR2 sets none. Prints "ready".

    python delay_line.py HOST LISTEN_PORT TARGET_PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys

DELAY_S = 0.05
state = {"delay_s": 0.0}


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delayed: bool) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(send())
    try:
        while chunk := await reader.read(65536):
            queue.put_nowait((loop.time() + (state["delay_s"] if delayed else 0.0), chunk))
    except ConnectionError:
        pass
    queue.put_nowait((loop.time(), b""))
    await sender


async def main(host: str, listen_port: int, target_port: int) -> None:
    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(host, target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pump(client_reader, server_writer, delayed=False),
            pump(server_reader, client_writer, delayed=True),
            return_exceptions=True,
        )

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: state.update(delay_s=DELAY_S))
    loop.add_signal_handler(signal.SIGUSR2, lambda: state.update(delay_s=0.0))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(handle, host, listen_port)
    print("ready", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
