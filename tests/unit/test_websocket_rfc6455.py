"""RFC 6455 framing, section by section, against ``wsgi.websocket`` in process (no socket).

The Autobahn testsuite needs its own server process and network; these are its framing cases
that matter for a server, written from the RFC: each feeds a handshake and client frames to the
real HTTP and WebSocket code through an in-memory socket and reads the frames the server wrote.
"""

from __future__ import annotations

import struct

import pytest

from tests.helpers import serve_in_process

TEXT, BINARY, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
KEY = b"\x37\xfa\x21\x3d"  # RFC 6455 5.7's masking key


def echo(environ: dict, start_response):
    """gevent-websocket's echo: every message back, as received, until the close."""
    ws = environ["wsgi.websocket"]
    while True:
        message = ws.receive()
        if message is None:
            return []
        ws.send(message)


def frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if masked else 0
    if len(payload) < 126:
        head += bytes([bit | len(payload)])
    elif len(payload) < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", len(payload))
    if not masked:
        return head + payload
    return head + KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))


def close(code: int | None = None, reason: bytes = b"") -> bytes:
    return frame(CLOSE, b"" if code is None else struct.pack("!H", code) + reason)


DELIVERY = ["frames"]


@pytest.fixture(autouse=True, params=["frames", "joined", "bytewise"])
def delivery(request):
    """Every case three ways: one recv per frame; everything, handshake included, in one recv;
    one byte per recv. Whole messages are framed on a fast path and everything else by the
    engine, so these check that the two agree wherever the reads split the frames."""
    DELIVERY[0] = request.param
    yield request.param
    DELIVERY[0] = "frames"


def chunks(*frames: bytes) -> list[bytes]:
    how = DELIVERY[0]
    if how == "joined":
        return [HANDSHAKE + b"".join(frames)]
    if how == "bytewise":
        return [HANDSHAKE, *(bytes((byte,)) for byte in b"".join(frames))]
    return [HANDSHAKE, *frames]


def exchange(*frames: bytes, app=echo, **settings) -> list[tuple[bool, int, bytes]]:
    """The frames the server sent (fin, opcode, payload), each checked to be unmasked."""
    out, _ = serve_in_process(app, chunks(*frames), **settings)
    assert out.startswith(b"HTTP/1.1 101 "), out[:80]
    data = out[out.index(b"\r\n\r\n") + 4 :]
    found = []
    while data:
        fin, opcode, length = bool(data[0] & 0x80), data[0] & 0x0F, data[1] & 0x7F
        assert data[0] & 0x70 == 0, "RSV bits set by the server"
        assert not data[1] & 0x80, "a server must not mask (5.1)"
        offset = 2
        if length == 126:
            (length,), offset = struct.unpack("!H", data[2:4]), 4
        elif length == 127:
            (length,), offset = struct.unpack("!Q", data[2:10]), 10
        found.append((fin, opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return found


def closed_with(frames: list[tuple[bool, int, bytes]]) -> int | None:
    """The status code of the server's Close frame (None: a Close without one)."""
    assert frames and frames[-1][1] == CLOSE, frames
    payload = frames[-1][2]
    return struct.unpack("!H", payload[:2])[0] if payload else None


class TestSection5_2BaseFraming:
    @pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 100_000])
    def test_every_payload_length_encoding_round_trips(self, size):
        """7-bit, 16-bit and 64-bit lengths, at and around each boundary (Autobahn 1.1.x)."""
        payload = bytes(i % 251 for i in range(size))
        frames = exchange(frame(BINARY, payload), close(1000))
        assert frames[0] == (True, BINARY, payload)
        assert closed_with(frames) == 1000

    def test_messages_are_answered_in_order_with_control_frames_between(self):
        """Whole messages (the fast path) and engine frames interleaved, the Close last: every
        message is answered before the Close, whichever way the reads split them."""
        frames = exchange(
            frame(TEXT, b"one"),
            frame(BINARY, b"\x00two"),
            frame(PING, b"p"),
            frame(TEXT, b"thr", fin=False),
            frame(CONT, b"ee"),
            frame(TEXT, "\u00e9".encode() * 70),  # a 16-bit length
            close(1000),
        )
        assert frames == [
            (True, TEXT, b"one"),
            (True, BINARY, b"\x00two"),
            (True, PONG, b"p"),
            (True, TEXT, b"three"),
            (True, TEXT, "\u00e9".encode() * 70),
            (True, CLOSE, frames[-1][2]),
        ]
        assert closed_with(frames) == 1000

    @pytest.mark.parametrize("rsv", [1, 2, 4, 7])
    def test_rsv_bits_without_an_extension_fail_with_1002(self, rsv):
        """Autobahn 3.x: no extension was negotiated, so RSV1-3 must be 0."""
        frames = exchange(frame(TEXT, b"hi", rsv=rsv))
        assert closed_with(frames) == 1002

    @pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
    def test_reserved_opcodes_fail_with_1002(self, opcode):
        """Autobahn 4.1.x and 4.2.x."""
        assert closed_with(exchange(frame(opcode, b"x"))) == 1002


class TestSection5_3Masking:
    def test_an_unmasked_client_frame_fails_with_1002(self):
        assert closed_with(exchange(frame(TEXT, b"Hello", masked=False))) == 1002

    def test_the_rfc_example_frames(self):
        """5.7: a masked "Hello" from the client; the server's unmasked "Hello" byte for byte."""
        hello = bytes.fromhex("818537fa213d7f9f4d5158")
        out, _ = serve_in_process(echo, chunks(hello, close(1000)))
        assert bytes.fromhex("810548656c6c6f") in out


class TestSection5_4Fragmentation:
    def test_a_fragmented_text_message_is_one_message(self):
        frames = exchange(
            frame(TEXT, b"Hel", fin=False),
            frame(CONT, b"lo ", fin=False),
            frame(CONT, b"world"),
            close(1000),
        )
        assert frames[0] == (True, TEXT, b"Hello world")

    def test_a_ping_between_fragments_is_answered_first(self):
        """Control frames may come in the middle of a fragmented message (Autobahn 5.6)."""
        frames = exchange(
            frame(TEXT, b"frag", fin=False),
            frame(PING, b"in the middle"),
            frame(CONT, b"ment"),
            close(1000),
        )
        assert frames[0] == (True, PONG, b"in the middle")
        assert frames[1] == (True, TEXT, b"fragment")

    def test_a_continuation_with_nothing_to_continue_fails_with_1002(self):
        """Autobahn 5.9-5.12."""
        assert closed_with(exchange(frame(CONT, b"orphan"))) == 1002

    def test_a_new_message_inside_a_fragmented_one_fails_with_1002(self):
        frames = exchange(frame(TEXT, b"first", fin=False), frame(TEXT, b"second"))
        assert closed_with(frames) == 1002


class TestSection5_5ControlFrames:
    def test_ping_with_125_bytes_gets_the_same_payload_back(self):
        """5.5.2/5.5.3, Autobahn 2.4."""
        payload = bytes(range(125))
        frames = exchange(frame(PING, payload), close(1000))
        assert frames[0] == (True, PONG, payload)

    def test_a_control_frame_over_125_bytes_fails_with_1002(self):
        """5.5: control frames carry at most 125 bytes (Autobahn 2.5)."""
        assert closed_with(exchange(frame(PING, b"x" * 126))) == 1002

    def test_a_fragmented_control_frame_fails_with_1002(self):
        assert closed_with(exchange(frame(PING, b"x", fin=False))) == 1002

    def test_an_unsolicited_pong_is_ignored(self):
        """5.5.3, Autobahn 2.8: a pong nobody asked for is not an error."""
        frames = exchange(frame(PONG, b"unasked"), frame(TEXT, b"still here"), close(1000))
        assert frames[0] == (True, TEXT, b"still here")
        assert closed_with(frames) == 1000


class TestSection5_6And8_1Utf8:
    def test_invalid_utf8_in_a_text_frame_fails_with_1007(self):
        assert closed_with(exchange(frame(TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xed\xa0\x80"))) == (
            1007
        )

    def test_a_code_point_split_across_fragments_is_valid(self):
        """Autobahn 6.2.x: validity is of the whole message, not of each fragment."""
        snowman = "\u2603".encode()
        frames = exchange(
            frame(TEXT, b"a" + snowman[:1], fin=False),
            frame(CONT, snowman[1:2], fin=False),
            frame(CONT, snowman[2:] + b"b"),
            close(1000),
        )
        assert frames[0] == (True, TEXT, b"a" + snowman + b"b")

    def test_invalid_utf8_in_a_later_fragment_fails_with_1007(self):
        frames = exchange(frame(TEXT, b"fine", fin=False), frame(CONT, b"\xff"))
        assert closed_with(frames) == 1007

    def test_binary_frames_are_not_checked_for_utf8(self):
        frames = exchange(frame(BINARY, b"\xff\xfe"), close(1000))
        assert frames[0] == (True, BINARY, b"\xff\xfe")


class TestSection5_5_1And7_4Close:
    @pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000])
    def test_a_valid_close_code_is_answered_with_a_close(self, code):
        """7.4.1 codes and the registered 3000-3999 range (Autobahn 7.7.x)."""
        frames = exchange(close(code, b"bye"))
        assert frames[-1][1] == CLOSE
        assert closed_with(frames) in (code, 1000)

    def test_a_close_without_a_code_is_answered(self):
        """Autobahn 7.3.1: an empty Close gets a Close back."""
        assert exchange(close())[-1][1] == CLOSE

    @pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000])
    def test_an_invalid_close_code_fails_with_1002(self, code):
        """7.4.1/7.4.2: reserved or never-sent codes (Autobahn 7.9.x)."""
        assert closed_with(exchange(close(code))) == 1002

    def test_a_close_payload_of_one_byte_fails_with_1002(self):
        """5.5.1: a body, if any, starts with a two-byte code (Autobahn 7.3.2)."""
        assert closed_with(exchange(frame(CLOSE, b"\x03"))) == 1002

    def test_a_close_reason_that_is_not_utf8_fails_with_1007(self):
        """5.5.1: the reason is UTF-8 (Autobahn 7.5.1)."""
        assert closed_with(exchange(close(1000, b"\xff\xfe"))) == 1007

    def test_frames_after_the_close_are_ignored(self):
        """Autobahn 7.1.x: nothing after the Close is processed or echoed."""
        frames = exchange(close(1000), frame(TEXT, b"too late"), frame(PING, b"late"))
        assert [opcode for _, opcode, _ in frames] == [CLOSE]


class TestSection10_4Limits:
    def test_a_message_over_ws_max_message_fails_with_1009(self):
        frames = exchange(frame(BINARY, b"x" * 2000), ws_max_message=1024)
        assert closed_with(frames) == 1009

    def test_the_limit_applies_to_the_reassembled_message(self):
        frames = exchange(
            frame(BINARY, b"x" * 600, fin=False),
            frame(CONT, b"x" * 600),
            ws_max_message=1024,
        )
        assert closed_with(frames) == 1009


class TestEngineOnFirstNeed:
    """The frame engine (``websockets``' ServerProtocol) is made by the first frame that needs
    it: whole short messages, and an idle WebSocket, never pay for one."""

    @staticmethod
    def run(*frames: bytes, ping: bool = False) -> tuple[list[tuple[bool, int, bytes]], list]:
        """``ping``: the app pings first, as --ws-ping-interval's timer would."""
        kept: list[object] = []

        def app(environ: dict, start_response):
            ws = environ["wsgi.websocket"]
            kept.append(ws)
            if ping:
                ws._start()
                ws.ping()
            return echo(environ, start_response)

        return exchange(*frames, app=app), kept

    def test_whole_messages_and_a_dropped_connection_need_no_engine(self):
        frames, (ws,) = self.run(frame(TEXT, b"one"), frame(BINARY, b"two"))
        assert frames == [(True, TEXT, b"one"), (True, BINARY, b"two")]
        assert ws.engine is None
        assert ws.close_code == 1006  # the peer went without a Close

    def test_a_ping_of_ours_and_its_pong_need_no_engine(self):
        frames, (ws,) = self.run(frame(PONG, b"greenserve"), frame(TEXT, b"one"), ping=True)
        assert frames == [(True, PING, b"greenserve"), (True, TEXT, b"one")]
        assert ws.engine is None
        assert not ws.awaiting_pong  # answered: the next ping does not close with 1011

    @pytest.mark.parametrize(
        "needs",
        [
            frame(PING, b"p"),
            frame(TEXT, b"fr", fin=False) + frame(CONT, b"ag"),
            frame(TEXT, b"\xff"),  # not UTF-8: failed with 1007
        ],
        ids=["ping", "fragments", "invalid-utf8"],
    )
    def test_a_frame_that_needs_it_makes_it_after_the_fast_path_ones(self, needs):
        frames, (ws,) = self.run(frame(TEXT, b"first"), needs, close(1000))
        assert frames[0] == (True, TEXT, b"first")
        assert ws.engine is not None
        assert frames[-1][1] == CLOSE
        if needs.startswith(b"\x89"):
            assert frames[1] == (True, PONG, b"p")
            assert ws.close_code == 1000
        elif needs.startswith(b"\x01"):
            assert frames[1] == (True, TEXT, b"frag")
            assert ws.close_code == 1000
        else:
            assert closed_with(frames) == 1007
