"""A hostile load of event streams and idle sockets, from its own process (asyncio), bounded in time.

    .venv/bin/python -m bench.streamload --url http://127.0.0.1:3000 --tokens-file tokens.txt \
        --per-token 20 --idle 1000 --seconds 120

Opens ``--per-token`` streams (``GET /events``) with each token of ``--tokens-file`` (one per
line) and reads them until the end, reopening any the server ends; and keeps ``--idle`` TCP
connections open that never send a byte, opening a new one whenever the server drops one (an
attacker would). Every second it prints one JSON line: streams open, idle sockets open, events
read, drops, refusals (non-200 answers). It stops after ``--seconds`` or on SIGTERM, closing
everything. Only loopback targets are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

LOOPBACK = ("127.", "localhost")


class Load:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams = 0
        self.idle = 0
        self.events = 0
        self.idle_dropped = 0
        self.refused: dict[str, int] = {}
        self.stop = asyncio.Event()

    async def stream(self, token: str) -> None:
        request = (
            f"GET /events HTTP/1.1\r\nHost: {self.host}\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                self.refused[type(exc).__name__] = self.refused.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(1)
                continue
            counted = False
            try:
                writer.write(request)
                status = (await reader.readline()).split(b" ")
                if len(status) < 2 or status[1] != b"200":
                    code = status[1].decode() if len(status) > 1 else "closed"
                    self.refused[code] = self.refused.get(code, 0) + 1
                    await asyncio.sleep(1)
                    continue
                self.streams += 1
                counted = True
                while not self.stop.is_set():
                    line = await reader.readline()
                    if not line:
                        break
                    if line.startswith(b"event:"):
                        self.events += 1
            except OSError:
                pass
            finally:
                if counted:
                    self.streams -= 1
                writer.close()

    async def silent(self) -> None:
        while not self.stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                await asyncio.sleep(1)
                continue
            self.idle += 1
            try:
                await reader.read(1)  # the server drops a silent client: then open another
            except OSError:
                pass
            finally:
                self.idle -= 1
                self.idle_dropped += 1
                writer.close()

    async def report(self) -> None:
        while not self.stop.is_set():
            line = {
                "at": time.time(),
                "streams": self.streams,
                "idle": self.idle,
                "events": self.events,
                "idle_dropped": self.idle_dropped,
                "refused": self.refused,
            }
            print(json.dumps(line), flush=True)
            try:
                await asyncio.wait_for(self.stop.wait(), 1.0)
            except TimeoutError:
                pass


async def run(args: argparse.Namespace) -> None:
    parts = urlsplit(args.url)
    load = Load(parts.hostname or "127.0.0.1", parts.port or 80)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, load.stop.set)
    tokens = [t.strip() for t in Path(args.tokens_file).read_text().splitlines() if t.strip()]
    tasks = [asyncio.create_task(load.report())]
    for token in tokens:
        for _ in range(args.per_token):
            tasks.append(asyncio.create_task(load.stream(token)))
            await asyncio.sleep(0)  # a little spread: the server accepts them as they come
    tasks += [asyncio.create_task(load.silent()) for _ in range(args.idle)]
    try:
        await asyncio.wait_for(load.stop.wait(), args.seconds)
    except TimeoutError:
        load.stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens-file", required=True)
    parser.add_argument("--per-token", type=int, default=20)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=120)
    args = parser.parse_args(argv)
    if not (urlsplit(args.url).hostname or "").startswith(LOOPBACK):
        parser.error(f"refusing a non-loopback target: {args.url}")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of sockets
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
