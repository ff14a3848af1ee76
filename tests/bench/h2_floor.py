"""The h2 library's own CPU per HTTP/2 request, in process: no socket, no TLS, no greenlet, no
app. A server H2Connection made as greenserve makes it (h2_connection.server_engine: its HPACK
encoder and decoder from h2_hpack.py, h2's header validation off, the default settings) takes
clients' GET requests (HEADERS with END_STREAM, --per-read of them per receive_data, as h2load
-m 10 sends them) and sends each a hello response (HEADERS, then DATA with END_STREAM). What
HTTP/2 costs a greenserve worker per request before anything of greenserve's own runs. Not run
by CI.

    python -m tests.bench.h2_floor [--requests 20000] [--per-read 10] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import h2
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived

from greenserve.config import load
from greenserve.worker.protocols.h2_connection import server_engine

REQUEST = [
    (":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "127.0.0.1:8443"),
    ("user-agent", "h2load nghttp2/1.52.0"),
]  # fmt: skip
HELLO = "greenserve.worker.apps:hello"
BODY = b"Hello, world!\n"
RESPONSE = [
    (b":status", b"200"), (b"content-type", b"text/plain"),
    (b"content-length", str(len(BODY)).encode()), (b"x-request-id", b"0123456789ab-1"),
]  # fmt: skip


def _connections() -> tuple[H2Connection, H2Connection]:
    """(client, server), past the prefaces and SETTINGS; the server's h2 as greenserve makes it
    with its default settings, the client's connection window at its largest (it reads no
    response here, so it would never open it again)."""
    client = H2Connection(H2Configuration(client_side=True))
    client.initiate_connection()
    client.increment_flow_control_window(2**31 - 1 - 65_535)
    defaults = load([HELLO], {})
    server = server_engine(
        defaults.http2_max_concurrent_streams,
        defaults.http2_initial_window_size,
        defaults.http2_max_header_list_size,
    )
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    server.data_to_send()
    return client, server


def run(requests: int, per_read: int) -> float:
    """Microseconds of CPU per request in the server's H2Connection."""
    client, server = _connections()
    reads = []
    for first in range(0, requests, per_read):
        for index in range(first, min(first + per_read, requests)):
            client.send_headers(1 + 2 * index, REQUEST, end_stream=True)
        reads.append(client.data_to_send())
        client.streams.clear()  # it sees no responses: its table would only grow
    started = time.process_time()
    for data in reads:
        for event in server.receive_data(data):
            if isinstance(event, RequestReceived):
                server.send_headers(event.stream_id, RESPONSE)
                server.send_data(event.stream_id, BODY, end_stream=True)
        server.data_to_send()
    return (time.process_time() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--per-read", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    costs = [run(args.requests, args.per_read) for _ in range(args.runs)]
    print(
        f"h2 {h2.__version__}, as greenserve configures it: {statistics.median(costs):.1f} us of "
        f"CPU per request (median of {args.runs} runs: "
        f"{' '.join(f'{cost:.1f}' for cost in costs)}), {args.per_read} requests per read"
    )


if __name__ == "__main__":
    main()
