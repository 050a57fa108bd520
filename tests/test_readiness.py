"""The token check (worker/readiness.py) against real HTTP servers on loopback, one per behaviour."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from worker.readiness import TOKEN_CHECK_PATH, answers_http, http_status, token_problem

TOKEN = "the-notebooks-own-token"


def server_for(without: int, with_token: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path != TOKEN_CHECK_PATH:
                status = 302
            elif self.headers.get("Authorization") == f"token {TOKEN}":
                status = with_token
            else:
                status = without
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@pytest.fixture
def serve() -> Iterator[object]:
    servers: list[ThreadingHTTPServer] = []

    def start(without: int, with_token: int) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), server_for(without, with_token))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("without", "with_token", "problem"),
    [
        (403, 200, ""),  # Jupyter with its token: the one good answer
        (401, 200, ""),
        (200, 200, "ignores its token: GET /api/status without it answered 200"),
        (204, 403, "ignores its token"),  # answering anyone is the worse of the two
        (403, 403, "refuses its own token: GET /api/status with it answered 403"),
        (401, 401, "refuses its own token"),
        (404, 404, ""),  # no Jupyter API: nothing to tell either way
        (500, 500, ""),
    ],
)
def test_token_problem(serve: object, without: int, with_token: int, problem: str) -> None:
    address = serve(without, with_token)  # type: ignore[operator]
    found = token_problem(address, TOKEN)
    assert (found == "") == (problem == ""), found
    assert problem in found
    assert TOKEN not in found


def test_no_answer_is_not_a_problem_and_never_raises() -> None:
    assert token_problem("http://127.0.0.1:9", TOKEN) == ""
    assert http_status("http://127.0.0.1:9") == 0 and not answers_http("http://127.0.0.1:9")
    assert http_status("not a url") == 0
