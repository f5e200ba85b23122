"""The streamed line rule (``LineSplitter``) gives what ``split_lines`` gives on the whole bytes,
wherever the chunks are cut."""

import json

import pytest

from nightshift.core.jsonl import BOM, LineCounter, UndecodableLine, decode_line, iter_lines, split_lines


def _by_the_rule(data: bytes) -> list[tuple[int, str]]:
    """The rule as written down (records end at ``\\n`` only), independent of the splitter."""
    data = data.removeprefix(BOM)
    return [(n, decode_line(raw)) for n, raw in enumerate(data.split(b"\n"), start=1) if raw.strip()]


def _line(i: int, text: str) -> bytes:
    return json.dumps({"custom_id": f"r{i}", "body": {"text": text}}, ensure_ascii=False).encode()


#: A BOM, a CRLF line, blank and spaces-only lines, U+2028/U+2029/U+0085 and a form feed inside
#: strings, multi-byte characters, a line that is not UTF-8, and no final newline.
FILE = (
    BOM
    + _line(1, "crlf")
    + b"\r\n\n   \n"
    + _line(2, "split\u2028here\u2029and\u0085there\x0c")
    + b"\n"
    + _line(3, "caf\u00e9 \u6771\u4eac \U0001f98a")
    + b"\n\xff\xfe not utf-8\n\n"
    + _line(4, "last, no newline")
)


def test_the_whole_file_follows_the_rule():
    lines = list(split_lines(FILE))
    assert lines == _by_the_rule(FILE)
    assert [n for n, _ in lines] == [1, 4, 5, 6, 8]  # blank lines keep their numbers
    assert json.loads(lines[1][1])["body"]["text"] == "split\u2028here\u2029and\u0085there\x0c"
    assert isinstance(lines[3][1], UndecodableLine) and "byte 1" in lines[3][1].reason
    assert not lines[0][1].endswith("\r")


def _cuts_at(data: bytes, *needles: bytes, offset: int = 0) -> list[int]:
    return [data.index(needle) + offset for needle in needles]


@pytest.mark.parametrize(
    "cuts",
    [
        pytest.param([1, 2], id="inside-the-BOM"),
        pytest.param(_cuts_at(FILE, b"\r\n", offset=1), id="between-CR-and-LF"),
        pytest.param(_cuts_at(FILE, "\u2028".encode(), offset=1) + _cuts_at(FILE, "\u2028".encode(), offset=2), id="in-U+2028"),
        pytest.param(_cuts_at(FILE, "\U0001f98a".encode(), offset=1), id="in-a-4-byte-char"),
        pytest.param(_cuts_at(FILE, "\u00e9".encode(), offset=1), id="in-a-2-byte-char"),
        pytest.param(_cuts_at(FILE, b"\n   \n", offset=1), id="before-a-blank-line"),
        pytest.param(list(range(1, len(FILE))), id="every-byte"),
    ],
)
def test_chunks_cut_anywhere_give_the_same_lines(cuts):
    chunks = [FILE[a:b] for a, b in zip([0, *cuts], [*cuts, len(FILE)], strict=True)]
    assert b"".join(chunks) == FILE
    streamed = list(iter_lines(chunks))
    assert streamed == list(split_lines(FILE)) == _by_the_rule(FILE)
    assert [type(text) for _, text in streamed] == [type(text) for _, text in split_lines(FILE)]


@pytest.mark.parametrize(
    "data",
    [b"", BOM, BOM[:2], BOM + b"\n\n{}", b"\n", b"{}\n\n", b"\xef\xbb\n{}", b" \r\n\t\n"],
    ids=["empty", "bom-only", "half-a-bom", "bom-then-blanks", "one-newline", "trailing-blank", "not-a-bom", "whitespace"],
)
def test_edge_files_byte_by_byte(data):
    chunks = [data[i : i + 1] for i in range(len(data))]
    assert list(iter_lines(chunks)) == list(split_lines(data)) == _by_the_rule(data)


def test_the_gateway_counts_what_the_flow_splits():
    counter = LineCounter()
    for i in range(0, len(FILE), 7):
        counter.feed(FILE[i : i + 7])
    counter.finish()
    assert counter.lines == len(_by_the_rule(FILE)) == 5
    assert counter.objects == 4
