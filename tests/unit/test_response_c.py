"""The response's hot path in C (greenserve._response) against the Python class it stands in for.

``Response`` (C fields and hot methods, PythonResponse's methods for the rest) must send the
same bytes and leave the same state as ``PythonResponse`` for any response an app can make,
including the ones C hands back to Python; checked on generated responses. The Date cache's
format is checked against email.utils.formatdate.
"""

from __future__ import annotations

import gc
import os
import sys
import weakref
from email.utils import formatdate
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenserve.worker.protocols import http_response
from greenserve.worker.protocols.http_parser import Head
from greenserve.worker.protocols.http_response import PythonDateCache, PythonResponse

C = http_response.RESPONSE_C

needs_extension = pytest.mark.skipif(
    C is None and not os.environ.get("CI"),
    reason="greenserve._response is not built (no compiler at install)",
)

END_BYTES = b"\r\nDate: Fri, 27 Nov 2026 07:00:00 GMT\r\nServer: greenserve\r\n\r\n"
STATUSES = st.sampled_from(["200 OK", "404 Not Found", "204 No Content", "304 Not Modified",
                            "101 Switching Protocols", "500 Oops", "200 OK\r\nX: y"])  # fmt: skip
RESPONSE_HEADERS = st.sampled_from(
    [
        ("Content-Type", "text/plain"), ("Content-Length", "5"), ("Content-Length", "0"),
        ("Content-Length", "50"), ("X-Request-ID", "app"), ("Connection", "close"),
        ("Connection", "keep-alive"), ("Transfer-Encoding", "chunked"), ("Set-Cookie", "a=1"),
        ("Bad Name", "v"), ("X-Value", "a\r\nb"), ("content-length", "-1"),
    ]
)  # fmt: skip
# bytes of every size class, and what an app should not write (C hands both to Python)
BODIES = st.sampled_from(
    [b"hello", b"", b"x" * 50, b"y" * 17000, b"hello world", bytearray(b"ba"), "text"]
)
STATE = ("keep_alive", "length", "body_sent", "truncated", "chunked", "headers_sent", "no_body",
         "status", "status_code", "expected")  # fmt: skip


def respond(
    cls: type, status: str, headers: list, chunks: list[Any], expected: int | None,
    method: bytes, version: str, keep_alive: bool, draining: bool, restart: bool = False,
) -> tuple[bytes, Any]:  # fmt: skip
    """One response made with ``cls``: what was sent, and the state the connection goes on
    with (or the exception). ``restart``: a second start_response with exc_info at the end."""
    sent: list[bytes] = []
    sock = SimpleNamespace(sendall=lambda data: sent.append(bytes(data)))
    date = SimpleNamespace(end=lambda: END_BYTES)
    head = Head()
    head.method, head.version, head.keep_alive = method, version, keep_alive
    writer = cls(sock, False, SimpleNamespace(draining=draining, date=date), head, "req-1")
    try:
        write = writer.start_response(status, list(headers))
        writer.expected = expected
        for chunk in chunks:
            write(chunk)
        if restart:
            try:
                raise KeyError("app")
            except KeyError:
                writer.start_response("500 Oops", [], sys.exc_info())
        writer.finish()
    except Exception as exc:
        return b"".join(sent), type(exc).__name__
    return b"".join(sent), {name: getattr(writer, name) for name in STATE}


class Traced(http_response.Response):
    """The C class with its hand-offs to Python recorded."""

    __slots__ = ()
    handed: list[str] = []

    def _start_response(self, *args: Any) -> Any:
        self.handed.append("start_response")
        return PythonResponse.start_response(self, *args)

    def _write(self, data: Any) -> None:
        self.handed.append("write")
        PythonResponse.write(self, data)

    def _finish(self) -> None:
        self.handed.append("finish")
        PythonResponse.finish(self)


@needs_extension
class TestResponse:
    def test_it_is_the_c_class(self) -> None:
        assert isinstance(http_response.Response(None, False, None, Head(), "r"), C.Response)

    def test_hello_stays_in_c_byte_for_byte(self) -> None:
        headers = [("Content-Type", "text/plain"), ("Content-Length", "5")]
        case = ("200 OK", headers, [b"hello"], None, b"GET", "1.1", True, False)
        python = respond(PythonResponse, *case)  # first: fills the caches C reads
        Traced.handed.clear()
        assert respond(Traced, *case) == python
        assert Traced.handed == []
        tail = b"Content-Length: 5\r\nX-Request-ID: req-1" + END_BYTES + b"hello"
        assert python[0].endswith(tail)

    def test_a_streamed_body_within_its_length_stays_in_c(self) -> None:
        headers = [("Content-Length", "20")]
        chunks = [b"a" * 5, b"b" * 5, b"c" * 10]
        case = ("200 OK", headers, chunks, None, b"GET", "1.1", True, False)
        python = respond(PythonResponse, *case)
        Traced.handed.clear()
        assert respond(Traced, *case) == python
        assert Traced.handed == []

    def test_what_c_does_not_take_goes_to_python(self) -> None:
        Traced.handed.clear()
        headers = [("Content-Type", "a/b")]
        case = ("299 Rare", headers, [b"x", b"y"], None, b"GET", "1.1", True, False)
        assert respond(Traced, *case) == respond(PythonResponse, *case)
        # a new status, a first write of unknown length (chunked), the chunk terminator
        assert Traced.handed == ["start_response", "write", "write", "finish"]

    @pytest.mark.parametrize(
        "case",
        [
            ("200 OK", [("Content-Length", "50")], [b"hello"], None),  # short of its length
            ("200 OK", [("Content-Length", "5")], [b"hel", b"lo!!"], None),  # past it: cut
            ("200 OK", [("Content-Length", "5")], [b"hello", b"more"], None),
            ("304 Not Modified", [("Content-Length", "5")], [b"hello"], None),
            ("200 OK", [("Content-Type", "a/b")], [b"a", b"b"], None),  # chunked
            ("200 OK", [("Content-Type", "a/b")], [b"a", b"b"], 2),
            ("200 OK", [], [b"y" * 17000, b"z"], None),  # first write too big for one write
            ("200 OK", [("Connection", "close")], [b"a"], 1),
        ],
    )
    @pytest.mark.parametrize(
        ("method", "version", "draining"),
        [(b"GET", "1.1", False), (b"GET", "1.1", True), (b"HEAD", "1.1", False),
         (b"GET", "1.0", False)],
    )  # fmt: skip
    def test_framing_edges(self, case: tuple, method: bytes, version: str, draining: bool) -> None:
        """What the generated cases reach only now and then, every time."""
        full = (*case, method, version, True, draining)
        python = respond(PythonResponse, *full)
        assert respond(http_response.Response, *full) == python

    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        status=STATUSES,
        headers=st.lists(RESPONSE_HEADERS, max_size=4),
        chunks=st.lists(BODIES, min_size=0, max_size=3),
        listed=st.booleans(),
        method=st.sampled_from([b"GET", b"HEAD"]),
        version=st.sampled_from(["1.1", "1.0"]),
        keep_alive=st.booleans(),
        draining=st.booleans(),
        restart=st.booleans(),
    )
    def test_generated_responses(
        self, status: str, headers: list, chunks: list[Any], listed: bool, method: bytes,
        version: str, keep_alive: bool, draining: bool, restart: bool,
    ) -> None:  # fmt: skip
        """``listed``: the app returned a list, so its total length is known (``expected``)."""
        sized = all(isinstance(chunk, (bytes, bytearray)) for chunk in chunks)
        expected = sum(map(len, chunks)) if listed and sized else None
        case = (status, headers, chunks, expected, method, version, keep_alive, draining, restart)
        python = respond(PythonResponse, *case)  # first: fills the caches C reads
        assert respond(http_response.Response, *case) == python

    def test_keywords_and_a_second_call_are_pythons(self) -> None:
        head = Head()
        writer = http_response.Response(
            sock=SimpleNamespace(sendall=lambda data: None),
            upgrading=True,
            handler=None,
            head=head,
            request_id="r",
        )
        assert writer.keep_alive is False and writer.no_body is False
        writer.start_response(status="200 OK", headers=[])
        with pytest.raises(AssertionError, match="twice"):
            writer.start_response("200 OK", [])

    def test_a_response_in_a_reference_cycle_is_collected(self) -> None:
        class Holder:
            pass

        holder = Holder()
        writer = http_response.Response(None, False, None, Head(), "r")
        writer.expected, holder.writer = holder, writer  # type: ignore[assignment]
        gone = weakref.ref(holder)
        del holder, writer
        gc.collect()
        assert gone() is None

    def test_it_keeps_no_reference_after_it_is_gone(self) -> None:
        headers = [("Content-Type", "text/plain"), ("Content-Length", "5")]
        sock = SimpleNamespace(sendall=lambda data: None)
        handler = SimpleNamespace(draining=False, date=SimpleNamespace(end=lambda: END_BYTES))
        before = sys.getrefcount(headers), sys.getrefcount(sock), sys.getrefcount(handler)
        for _ in range(100):
            writer = http_response.Response(sock, False, handler, Head(), "r")
            writer.start_response("200 OK", headers)(b"hello")
            writer.finish()
            del writer
        assert (sys.getrefcount(headers), sys.getrefcount(sock), sys.getrefcount(handler)) == before

    @pytest.mark.parametrize("held", ["list", "none", "outbox", "unset"])
    def test_a_held_write_is_what_the_sockets_sendall_would_do(self, held: str) -> None:
        """C appends to a CountingSocket's ``out`` list itself (a pipelined batch, corked),
        without calling sendall; any other ``out`` (None, an Outbox, not set yet) is the
        socket's own sendall's to handle."""

        class Sock:
            __slots__ = ("called", "out")

            def sendall(self, data: bytes) -> None:
                self.called.append(bytes(data))

        sock = Sock()
        sock.called = []
        outbox: list[bytes] = []
        if held != "unset":
            sock.out = {"list": [], "none": None, "outbox": SimpleNamespace(append=outbox.append)}[
                held
            ]
        handler = SimpleNamespace(draining=False, date=SimpleNamespace(end=lambda: END_BYTES))
        headers = [("Content-Type", "text/plain"), ("Content-Length", "10")]
        case = ("200 OK", headers, [b"helloworld"], None, b"GET", "1.1", True, False)
        respond(PythonResponse, *case)  # the header cache C reads: C writes the first write
        writer = http_response.Response(sock, False, handler, Head(), "r")
        write = writer.start_response("200 OK", headers)
        write(b"hello")
        write(b"world")
        writer.finish()
        wire = sock.out if held == "list" else sock.called
        assert b"".join(wire).endswith(END_BYTES + b"helloworld") and len(wire) == 2
        assert (sock.called == []) is (held == "list")

    def test_flags_take_booleans_only(self) -> None:
        """The flags are C chars: a truthy non-bool would be a silent difference from Python."""
        writer = http_response.Response(None, False, None, Head(), "r")
        with pytest.raises(TypeError):
            writer.keep_alive = 1  # type: ignore[assignment]


@needs_extension
class TestDateCache:
    @pytest.mark.parametrize(
        "second",
        [0, 68_169_599, 951_782_400, 1_709_164_800, 1_795_737_600, 2_147_483_648, 4_102_444_799],
    )  # 1970, 1972-02-29 23:59:59, 2000-02-29, 2024-02-29, 2026-11-27, 2038, 2099-12-31
    def test_the_format_is_formatdates(self, second: int) -> None:
        assert C.http_date(second) == formatdate(second, usegmt=True).encode()

    def test_every_day_of_a_leap_year_and_a_common_one(self) -> None:
        for day in range(0, 2 * 366):
            second = 1_704_067_200 + day * 86_400 + day * 3_607 % 86_400  # from 2024-01-01
            assert C.http_date(second) == formatdate(second, usegmt=True).encode()

    def test_it_ends_a_header_block_as_the_python_one(self) -> None:
        for _ in range(3):  # a second may turn between the two: then again
            made_in_c, made_in_python = C.DateCache(), PythonDateCache()
            c_end, python_end = made_in_c.end(), made_in_python.end()
            if c_end == python_end:
                break
        assert c_end == python_end
        assert made_in_c.date() in c_end and made_in_c.end() is made_in_c.end()
