"""Helpers for failure drills: a gate that cuts a loopback service off, and the OpenAI invariant."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from tests.batchfiles import read_jsonl


class TcpGate:
    """A TCP forwarder on 127.0.0.1 in front of a real service: clients connect here, and
    ``cut()`` makes the service unreachable for them (every new connection is reset at once, the
    open ones are dropped) while the service itself keeps its state; ``restore()`` lets them through.

    The service (moto's S3) keeps its data in memory, so stopping it would lose the store: cutting
    the path to it is the network outage a client sees, with nothing lost on the server side.
    """

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.refused = 0  # connections reset while cut: proof that a client tried (and retried)
        self._open = True
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="tcp-gate", daemon=True).start()

    def cut(self) -> None:
        """Make the service unreachable: reset new connections, drop open ones."""
        with self._lock:
            self._open = False
            for conn in self._conns:
                _reset(conn)
            self._conns.clear()

    def restore(self) -> None:
        """Let clients through again."""
        with self._lock:
            self._open = True

    def close(self) -> None:
        """Stop listening (the drill is over)."""
        self.cut()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if not self._open:
                    self.refused += 1
                    _reset(client)
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._conns.discard(src)


def _reset(conn: socket.socket) -> None:
    """Close with a TCP RST (linger 0): the client sees 'connection reset', as with a dead peer."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


def answers(result: Any, read: Any = read_jsonl) -> dict[str | None, Any]:
    """The OpenAI invariant on a run's real output and error files, and what each request got.

    Every ``custom_id`` appears exactly once across both files; returns each line by custom_id
    without what differs from run to run (line and response ids, creation times), so that two runs
    of one batch compare equal when every request got the same answer.
    """
    rows = read(result.output_uri) + read(result.error_uri)
    ids = [r["custom_id"] for r in rows]
    assert len(ids) == len(set(ids)) == result.request_counts.total, ids
    got: dict[str | None, Any] = {}
    for r in rows:
        r = {k: v for k, v in r.items() if k != "id"}
        if isinstance(r.get("response"), dict):
            response = {k: v for k, v in r["response"].items() if k != "request_id"}
            if isinstance(response.get("body"), dict):
                response["body"] = {k: v for k, v in response["body"].items() if k not in {"id", "created"}}
            r["response"] = response
        got[r["custom_id"]] = r
    return got


_UNDISTURBED: dict[str, dict[str | None, Any]] = {}


def undisturbed(src: Path, shard_size: int) -> dict[str | None, Any]:
    """``answers`` of a run of ``src`` with nothing failing, on the test's own store (``engine_env``);
    run once per session for each batch content, since every drill compares with the same kind of run."""
    key = hashlib.sha256(src.read_bytes()).hexdigest()
    if key not in _UNDISTURBED:
        from flows.batch import BatchRunParameters, process_batch

        _UNDISTURBED[key] = answers(process_batch(BatchRunParameters(input_uri=str(src), shard_size=shard_size)))
    return _UNDISTURBED[key]
