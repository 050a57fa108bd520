"""A small open-loop HTTP load generator: a fixed request rate, bounded in count and time.

    .venv/bin/python -m bench.loadgen --url http://127.0.0.1:3000 --method POST --path /spawn \
        --form image=busybox --form user=load --rate 200 --count 2000

Request ``i`` is due at ``start + i / rate`` whatever happened to the ones before it (an open
loop: a slow answer does not slow the offered load down). A pool of threads with keep-alive
connections sends them. For each request two latencies are kept: from sending to the end of
the answer (the server's), and from when it was due (adds any lag of this generator; if the
two differ much, the generator, not the server, was short of CPU). Prints one JSON object.

Only loopback targets are accepted; the run stops after ``--count`` requests or ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

LOOPBACK = ("127.", "localhost", "::1", "[::1]")


class Runner:
    def __init__(self, args: argparse.Namespace, paths: list[str]) -> None:
        self.args = args
        self.paths = paths
        parts = urlsplit(args.url)
        if not (parts.hostname or "").startswith(LOOPBACK):
            raise SystemExit(f"refusing a non-loopback target: {args.url}")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.body = urlencode(args.form).encode() if args.form else None
        self.headers = {"Content-Type": "application/x-www-form-urlencoded"} if self.body else {}
        self.headers.update(args.header)
        self.next = 0
        self.lock = threading.Lock()
        self.service: list[float] = []  # send -> answer read
        self.from_due: list[float] = []  # due time -> answer read
        self.statuses: dict[str, int] = {}
        self.start = 0.0
        self.end = 0.0
        self.deadline = 0.0

    def take(self) -> int | None:
        with self.lock:
            if self.next >= self.args.count:
                return None
            i = self.next
            self.next += 1
            return i

    def worker(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while (i := self.take()) is not None:
            due = self.start + i / self.args.rate
            if due > self.deadline:
                return
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            path = self.paths[i % len(self.paths)]
            for attempt in range(2):  # a keep-alive connection the server closed: reconnect once
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                sent = time.perf_counter()
                try:
                    conn.request(self.args.method, path, body=self.body, headers=self.headers)
                    response = conn.getresponse()
                    response.read()
                    status = str(response.status)
                    if response.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = None
                    break
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = None
                    status = type(exc).__name__
                    if attempt == 1:
                        break
            done = time.perf_counter()
            with self.lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
                self.service.append(done - sent)
                self.from_due.append(done - due)
                self.end = max(self.end, done)
        if conn is not None:
            conn.close()

    def run(self) -> dict[str, Any]:
        threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(self.args.threads)]
        self.start = time.perf_counter() + 0.2  # every thread is waiting before the first is due
        self.deadline = self.start + self.args.max_seconds
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.args.max_seconds + 30)
        elapsed = max(self.end - self.start, 1e-9)
        return {
            "method": self.args.method,
            "path": self.paths[0] if len(self.paths) == 1 else f"{len(self.paths)} paths",
            "rate": self.args.rate,
            "sent": len(self.service),
            "statuses": self.statuses,
            "elapsed": elapsed,
            "throughput": len(self.service) / elapsed,
            "service": self.service,
            "from_due": self.from_due,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="base URL on loopback, e.g. http://127.0.0.1:3000")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", action="append", default=[], help="path to request (repeatable, round-robin)")
    parser.add_argument("--paths-file", help="file with one path per line (round-robin)")
    parser.add_argument(
        "--form",
        action="append",
        default=[],
        type=lambda s: tuple(s.split("=", 1)),
        help="NAME=VALUE form field of the body (repeatable)",
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        type=lambda s: tuple(part.strip() for part in s.split(":", 1)),
        help="NAME: VALUE header of every request (repeatable), e.g. 'Authorization: Bearer ...'",
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args(argv)
    paths = list(args.path)
    if args.paths_file:
        paths += [line.strip() for line in Path(args.paths_file).read_text().splitlines() if line.strip()]
    if not paths:
        parser.error("give --path or --paths-file")
    json.dump(Runner(args, paths).run(), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
