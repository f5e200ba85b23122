"""The one rule for splitting and decoding a JSONL batch file, shared by the gateway (which counts
lines while an upload streams in) and the flow (which validates them).

JSON Lines separates records with ``\\n`` only. Python's ``str.splitlines`` also splits on
U+2028, U+2029, U+0085, form feeds and more, all of which may stand inside a JSON string, so one
request would become several broken ones. Each line is decoded on its own: a line that is not
UTF-8 is one bad line (an error row that keeps its number), never a reason to refuse the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

BOM = b"\xef\xbb\xbf"


class UndecodableLine(str):
    """A line whose bytes are not UTF-8: its text is a placeholder, ``reason`` says where it broke."""

    reason: str

    def __new__(cls, reason: str) -> UndecodableLine:
        line = super().__new__(cls, "")
        line.reason = reason
        return line


def decode_line(raw: bytes) -> str:
    """The text of one line (``\\r`` of a CRLF file dropped), or an ``UndecodableLine``."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return UndecodableLine(f"line is not UTF-8 text (byte {exc.start + 1} of the line)")


def split_lines(data: bytes) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for every non-blank line of ``data``, numbered as an editor shows them."""
    if data.startswith(BOM):
        data = data[len(BOM) :]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if raw.strip():
            yield number, decode_line(raw)


def is_json_object(text: str) -> bool:
    """True when the line parses as a JSON object (what a batch request line must be)."""
    if isinstance(text, UndecodableLine):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


class LineCounter:
    """Counts the lines and JSON-object lines of a file fed in chunks, by the same rule as
    ``split_lines``: the gateway's count equals the flow's."""

    def __init__(self) -> None:
        self.lines = 0
        self.objects = 0
        self._tail = b""
        self._first = True

    def feed(self, chunk: bytes) -> None:
        """Count the complete lines in ``chunk`` (a partial last line waits for the next chunk)."""
        data = self._tail + chunk
        if self._first and (len(data) >= len(BOM) or b"\n" in data):
            data = data.removeprefix(BOM)
            self._first = False
        *complete, self._tail = data.split(b"\n")
        for raw in complete:
            self._count(raw)

    def finish(self) -> None:
        """Count the last line (a file need not end with a newline)."""
        self._count(self._tail.removeprefix(BOM) if self._first else self._tail)
        self._tail = b""

    def _count(self, raw: bytes) -> None:
        if raw.strip():
            self.lines += 1
            self.objects += is_json_object(decode_line(raw))
