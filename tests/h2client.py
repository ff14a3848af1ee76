"""A raw HTTP/2 client for the tests: the h2 library's client side over a blocking socket, plus
hand-made frames for what no well-behaved client sends (floods, broken frames)."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, ResponseReceived, StreamEnded, StreamReset

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types (RFC 9113 6)
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9,
)  # fmt: skip
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream_id & 0x7FFFFFFF
    ) + payload  # fmt: skip


def settings_frame(**values: int) -> bytes:
    codes = {"initial_window_size": 0x4, "max_frame_size": 0x5, "enable_push": 0x2}
    body = b"".join(struct.pack(">HI", codes[k], v) for k, v in values.items())
    return frame(SETTINGS, 0, 0, body)


def read_frames(
    sock: socket.socket, timeout: float = 10, until: Any = None
) -> list[tuple[int, int, int, bytes]]:
    """The frames the server sends, (type, flags, stream id, body), until it closes, ``until``
    (called with the frames so far) is true, or ``timeout``."""
    sock.settimeout(0.2)
    data = b""
    frames: list[tuple[int, int, int, bytes]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            continue
        except (ConnectionResetError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
        while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
            length = int.from_bytes(data[:3], "big")
            stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
            frames.append((data[3], data[4], stream_id, data[9 : 9 + length]))
            data = data[9 + length :]
        if until is not None and until(frames):
            break
    return frames


def request_block(encoder: Any, path: str) -> bytes:
    """A GET's header block, HPACK-encoded with the connection's encoder."""
    return encoder.encode(
        [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")]
    )


def goaway_code(frames: list[tuple[int, int, int, bytes]]) -> int | None:
    """The error code of the server's GOAWAY, if it sent one."""
    for kind, _, _, body in frames:
        if kind == GOAWAY:
            return int.from_bytes(body[4:8], "big")
    return None


def connect(address: tuple[str, int], tls: ssl.SSLContext | None = None) -> socket.socket:
    sock = socket.create_connection(address, timeout=10)
    if tls is not None:
        tls.set_alpn_protocols(["h2"])
        sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
        assert sock.selected_alpn_protocol() == "h2"
    return sock


class Client:
    """A well-behaved client (h2's state machine) for requests and what the server answers."""

    def __init__(
        self,
        address: tuple[str, int],
        tls: ssl.SSLContext | None = None,
        settings: dict[int, int] | None = None,
    ) -> None:
        self.sock = connect(address, tls)
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.sock.sendall(self.h2.data_to_send())
        self.responses: dict[int, dict[str, Any]] = {}
        self.goaway: ConnectionTerminated | None = None
        self.closed = False

    def request(self, path: str, method: str = "GET", body: bytes | None = None) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", "http"),
                   (":authority", "localhost")]  # fmt: skip
        if body is not None:
            headers.append(("content-length", str(len(body))))
        self.h2.send_headers(stream_id, headers, end_stream=body is None)
        if body is not None:
            self.h2.send_data(stream_id, body, end_stream=True)
        self.sock.sendall(self.h2.data_to_send())
        self.responses[stream_id] = {"status": None, "body": b"", "done": False, "reset": None}
        return stream_id

    def pump(self, until: Any, timeout: float = 10) -> None:
        """Read and answer frames until ``until()`` is true, the server closes, or timeout."""
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while not until() and not self.closed and time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
                break
            for event in self.h2.receive_data(data):
                response = self.responses.get(getattr(event, "stream_id", 0))
                if isinstance(event, ResponseReceived) and response is not None:
                    response["status"] = int(dict(event.headers)[":status"])
                    response["headers"] = dict(event.headers)
                elif hasattr(event, "data") and response is not None:
                    response["body"] += event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded) and response is not None:
                    response["done"] = True
                elif isinstance(event, StreamReset) and response is not None:
                    response["reset"] = event.error_code
                elif isinstance(event, ConnectionTerminated):
                    self.goaway = event
            pending = self.h2.data_to_send()
            if pending:
                self.sock.sendall(pending)

    def finished(self, *stream_ids: int) -> bool:
        return all(
            self.responses[s]["done"] or self.responses[s]["reset"] is not None for s in stream_ids
        )

    def close(self) -> None:
        self.sock.close()
