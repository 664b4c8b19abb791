"""A callback receiver on 127.0.0.1: records every POST, answers as told per path (after a
delay, if told)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    answers: dict[str, list[int]] = field(default_factory=dict)
    """Per path, the statuses to answer in turn (the last one again after that; 200 if none)."""
    deliveries: list[Delivery] = field(default_factory=list)
    delays: dict[str, float] = field(default_factory=dict)
    """Per path, seconds to wait before answering (a slow receiver)."""
    answered: list[str] = field(default_factory=list)
    """The path of each POST answered, in order."""

    def to(self, path: str) -> list[Delivery]:
        return [d for d in list(self.deliveries) if d.path == path]


@contextmanager
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with lock:
                statuses = state.answers.get(self.path, [200])
                status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                state.deliveries.append(Delivery(self.path, dict(self.headers.items()), body))
            time.sleep(state.delays.get(self.path, 0.0))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            state.answered.append(self.path)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
