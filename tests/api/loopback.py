"""A scripted HTTP server on 127.0.0.1 for egress and webhook tests: it records every request it
receives, so a test can assert what reached it (and what did not, e.g. a redirect's target)."""

from __future__ import annotations

import contextlib
import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Reply:
    """One scripted answer; without ``length`` the body is sent undeclared (ended by closing)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    length: bool = True


@dataclass
class Hit:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class LoopbackServer:
    """Answers each path from a script: a list is consumed in order, its last reply then repeats."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.hits: list[Hit] = []
        self.script: dict[str, list[Reply]] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else b""
                server.hits.append(Hit(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                replies = server.script.get(self.path) or [Reply(404)]
                reply = replies.pop(0) if len(replies) > 1 else replies[0]
                time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.length:
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client stopping at its cap
                    self.wfile.write(reply.body)

            do_GET = do_POST = _answer  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        """The URL of ``path`` on this server, spelled with ``host``."""
        return f"{scheme}://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        """The paths requested so far, in order."""
        return [hit.path for hit in self.hits]

    @contextmanager
    def running(self) -> Iterator[LoopbackServer]:
        """Serve until the block ends."""
        self._thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
