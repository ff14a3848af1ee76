"""Chunk-size lines checked against RFC 9112 7.1.1 where llhttp is lenient (chunk_ext.py)."""

from __future__ import annotations

import zlib

import pytest

from greenserve.worker.protocols.chunk_ext import MAX_SIZE_LINE, ChunkLines, body_starts
from greenserve.worker.protocols.llhttp import HttpError
from tests.apps.greenserve_testapps import conformance
from tests.helpers import SPLIT_MODES, parse_responses, serve_in_process, split
from tests.http_corpus.corpus import MALFORMED, chunked, chunked_with, req

GOOD = b'5;a=1;b;c="x\\"y"\r\nhello\r\n3 \r\nabc\r\n0;last\r\nX-T: 1\r\n\r\n'
BAD_LINES = [b"5;a=", b"5;a=;b", b"5;=v", b"5;a=v ", b"0;last="]
CHUNK_CASES = [m for m in MALFORMED if m[0].startswith(("chunk extension", "chunk size line"))]


def pieces(data: bytes) -> list[list[bytes]]:
    """``data`` whole, byte by byte, and cut in two at every point."""
    cuts = [[data[:at], data[at:]] for at in range(1, len(data))]
    return [[data], [data[i : i + 1] for i in range(len(data))], *cuts]


class TestChunkLines:
    """The guard alone: the same verdict however the body is cut into reads."""

    @pytest.mark.parametrize("cut", range(len(pieces(GOOD))))
    def test_a_valid_body_passes_and_ends_where_it_ends(self, cut):
        lines = ChunkLines()
        body = GOOD + b"GET / HTTP/1.1\r\n"  # the next request is not the body's
        used = sum(lines.feed(piece) for piece in pieces(body)[cut] if not lines.done)
        assert lines.done and used == len(GOOD)

    @pytest.mark.parametrize("line", BAD_LINES)
    def test_a_forbidden_line_is_a_400_however_it_arrives(self, line):
        body = (
            b"5\r\nhello\r\n"
            + line
            + b"\r\n"
            + (b"hello\r\n0\r\n\r\n" if line[0] == 53 else b"\r\n")
        )
        for reads in pieces(body):
            lines = ChunkLines()
            with pytest.raises(HttpError) as caught:
                for piece in reads:
                    lines.feed(piece)
            assert caught.value.status == 400

    def test_a_size_line_without_end_is_refused_not_buffered(self):
        lines = ChunkLines()
        with pytest.raises(HttpError):
            for _ in range(MAX_SIZE_LINE // 1000 + 2):
                lines.feed(b"5;a=" + b"v" * 1000)
        assert len(lines.line) <= MAX_SIZE_LINE + 1004

    def test_chunk_data_that_looks_like_a_bad_size_line_is_data(self):
        lines = ChunkLines()
        data = b"5;a=\r\n"
        lines.feed(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
        assert lines.done


class TestBodyStarts:
    """Where each head's body begins, in a buffer of pipelined requests."""

    def test_heads_behind_bodies_that_hold_request_lookalikes(self):
        decoy = b"POST / HTTP/1.1\r\nHost: a\r\n\r\n"
        first = req("POST / HTTP/1.1", "Host: a", f"Content-Length: {len(decoy)}", body=decoy)
        second = req("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked")
        buffer = first + second + chunked(b"x")
        assert body_starts(buffer, [0, 1]) == [len(first) - len(decoy), len(first + second)]


def run(request: bytes, mode: str):
    return serve_in_process(conformance, split(request, mode, zlib.crc32(request)))


class TestOnTheConnection:
    """Every way the reads can fall: the head and the bad line together or apart, pipelined."""

    @pytest.mark.parametrize("mode", SPLIT_MODES)
    @pytest.mark.parametrize(
        ("name", "request_bytes", "status"), CHUNK_CASES, ids=[c[0] for c in CHUNK_CASES]
    )
    def test_malformed_chunked_bodies_in_every_split(self, name, request_bytes, status, mode):
        raw, _ = run(request_bytes, mode)
        assert raw.startswith(b"HTTP/1.1 400 "), raw[:200]
        assert b"Connection: close" in raw.split(b"\r\n\r\n")[0]

    @pytest.mark.parametrize("mode", SPLIT_MODES)
    def test_requests_before_a_bad_one_are_answered_and_none_after(self, mode):
        good = req(
            "POST /echo HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", body=chunked(b"ok")
        )
        after = req("GET / HTTP/1.1", "Host: a")
        raw, _ = run(req("GET / HTTP/1.1", "Host: a") + good + chunked_with(b"5;a=") + after, mode)
        assert [r.status for r in parse_responses(raw)] == [200, 200, 400]

    @pytest.mark.parametrize("mode", SPLIT_MODES)
    def test_a_bad_line_deep_in_a_long_body(self, mode):
        body = (
            b"".join(b"400\r\n" + b"z" * 1024 + b"\r\n" for _ in range(70))
            + b"1;x=\r\nz\r\n0\r\n\r\n"
        )
        request = req("POST /echo HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", body=body)
        raw, _ = run(request, "whole" if mode == "bytewise" else mode)  # 70 KiB a byte a read: slow
        assert raw.startswith(b"HTTP/1.1 400 "), raw[:200]

    def test_valid_pipelined_chunked_requests_all_pass(self):
        one = req("POST /echo HTTP/1.1", "Host: a", "Transfer-Encoding: chunked")
        raw, _ = run(
            (one + GOOD) * 3 + req("GET / HTTP/1.1", "Host: a", "Connection: close"), "whole"
        )
        assert [r.status for r in parse_responses(raw)] == [200, 200, 200, 200]
