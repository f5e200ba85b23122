"""The one rule for splitting and decoding a JSONL batch file, shared by the gateway (which counts
lines while an upload streams in) and the flow (which validates them).

JSON Lines separates records with ``\\n`` only. Python's ``str.splitlines`` also splits on
U+2028, U+2029, U+0085, form feeds and more, all of which may stand inside a JSON string, so one
request would become several broken ones. Each line is decoded on its own: a line that is not
UTF-8 is one bad line (an error row that keeps its number), never a reason to refuse the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

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


class LineSplitter:
    """Splits a file fed in chunks into ``(line number, text)`` pairs: the one line rule, whole or streamed.

    A chunk may end anywhere (inside a line, a ``\\r\\n`` or a multi-byte UTF-8 character): the
    unfinished last line waits for the next chunk, so only one line is ever held beyond a chunk.
    """

    def __init__(self) -> None:
        self._number = 0
        self._pending: list[bytes] = []
        self._first = True

    def feed(self, chunk: bytes) -> list[tuple[int, str]]:
        """The non-blank lines ``chunk`` completes."""
        if b"\n" not in chunk:
            self._pending.append(chunk)
            if not self._first or sum(map(len, self._pending)) < len(BOM):
                return []
            chunk, self._pending = b"".join(self._pending), []
        else:
            chunk, self._pending = b"".join([*self._pending, chunk]), []
        if self._first:
            chunk = chunk.removeprefix(BOM)
            self._first = False
        *complete, tail = chunk.split(b"\n")
        if tail:
            self._pending.append(tail)
        return self._lines(complete)

    def finish(self) -> list[tuple[int, str]]:
        """The last line (a file need not end with a newline)."""
        raw, self._pending = b"".join(self._pending), []
        if self._first:
            raw = raw.removeprefix(BOM)
            self._first = False
        return self._lines([raw])

    def _lines(self, raws: list[bytes]) -> list[tuple[int, str]]:
        start, self._number = self._number + 1, self._number + len(raws)
        return [(number, decode_line(raw)) for number, raw in enumerate(raws, start=start) if raw.strip()]


def iter_lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for every non-blank line of a file read in ``chunks``."""
    splitter = LineSplitter()
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.finish()


def split_lines(data: bytes) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for every non-blank line of ``data``, numbered as an editor shows them."""
    return iter_lines((data,))


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
        self._splitter = LineSplitter()

    def feed(self, chunk: bytes) -> None:
        """Count the complete lines in ``chunk`` (a partial last line waits for the next chunk)."""
        self._count(self._splitter.feed(chunk))

    def finish(self) -> None:
        """Count the last line (a file need not end with a newline)."""
        self._count(self._splitter.finish())

    def _count(self, lines: list[tuple[int, str]]) -> None:
        for _, text in lines:
            self.lines += 1
            self.objects += is_json_object(text)
