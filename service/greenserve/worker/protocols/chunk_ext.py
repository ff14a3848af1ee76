"""Chunk-size lines checked against RFC 9112 7.1.1, where llhttp is lenient.

llhttp (through httptools) frames chunked bodies and rejects most malformed chunk extensions,
but it accepts an empty extension name (``5;=v``) and an empty value (``5;a=`` and ``5;a=;b``),
which the grammar forbids (``chunk-ext-name = token``, ``chunk-ext-val = token /
quoted-string``). gunicorn answers these with 400; so does greenserve. httptools reports neither
the extension nor a byte position, so ``ChunkLines`` follows a chunked body's framing on its
own (only for chunked requests: a size line, skip the data, next size line, then the trailer
section) and checks each size line. ``body_starts`` finds where a head ends in a buffer of
requests, with a fresh parser, once per chunked request.

Nothing here touches a socket: bytes in, an error or nothing out.
"""

from __future__ import annotations

import re

import httptools

from greenserve.worker.protocols.llhttp import HttpError, request_parser

# RFC 9112 7.1 and 7.1.1, with RFC 9110 5.6.2 token, 5.6.3 BWS and 5.6.4 quoted-string.
# llhttp is stricter on whitespace (none after ";" or around "=") and rejects those lines first.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# Whitespace after a bare size is llhttp's lenient_spaces_after_chunk_size, kept as gunicorn
# keeps it (it strips the size); a line's end has none after an extension.
_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]+)(?:(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)+|[ \t]*)\r\n"
    % (_TOKEN, _TOKEN, _QUOTED)
)

MAX_SIZE_LINE = 8190  # like a request line: a longer size line is refused, not buffered

_SIZE, _DATA, _TRAILER, _DONE = range(4)


class ChunkLines:
    """Follows one chunked body from its first size line; ``feed`` raises HttpError(400) at the
    first size line the grammar forbids. ``done`` once the trailer section has ended."""

    __slots__ = ("line", "skip", "state")

    def __init__(self) -> None:
        self.state = _SIZE
        self.line = b""  # a size or trailer line not yet whole
        self.skip = 0  # chunk data (and its CRLF) still to pass over

    @property
    def done(self) -> bool:
        return self.state == _DONE

    def feed(self, data: bytes) -> int:
        """Follow ``data``; returns how many of its bytes belong to this body (all of them
        unless the body ended inside it)."""
        at, end = 0, len(data)
        while at < end and self.state != _DONE:
            if self.state == _DATA:
                step = min(self.skip, end - at)
                self.skip -= step
                at += step
                if not self.skip:
                    self.state = _SIZE
                continue
            newline = data.find(b"\n", at)
            stop = end if newline < 0 else newline + 1
            self.line += data[at:stop]
            at = stop
            if len(self.line) > MAX_SIZE_LINE:
                raise HttpError(400, "chunk size line too long")
            if newline < 0:
                break
            line, self.line = self.line, b""
            if self.state == _TRAILER:
                if line == b"\r\n":
                    self.state = _DONE
                continue
            match = _SIZE_LINE.fullmatch(line)
            if match is None:
                raise HttpError(400, "invalid chunk extension")
            size = int(match.group(1), 16)
            if size:
                self.state, self.skip = _DATA, size + 2
            else:
                self.state = _TRAILER
        return at


def body_starts(buffer: bytes, heads: list[int]) -> list[int]:
    """Where the body of each given head begins in ``buffer`` (which starts at a request
    boundary); ``heads`` are 0-based ordinals of heads in it, ascending.

    llhttp calls on_headers_complete as it takes a head's last LF, so a fresh parser fed one
    line at a time tells which line ended each head. Only chunked requests come here.
    """
    counter = _HeadCounter()
    parser = request_parser(counter)
    wanted = iter(heads)
    target = next(wanted, None)
    found: list[int] = []
    at = 0
    try:
        while target is not None and at < len(buffer):
            newline = buffer.find(b"\n", at)
            stop = len(buffer) if newline < 0 else newline + 1
            parser.feed_data(buffer[at:stop])
            at = stop
            while target is not None and counter.heads > target:
                found.append(at)
                target = next(wanted, None)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        pass
    return found


class _HeadCounter:
    __slots__ = ("heads",)

    def __init__(self) -> None:
        self.heads = 0

    def on_headers_complete(self) -> None:
        self.heads += 1
