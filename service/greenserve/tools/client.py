"""``greenserve client``: talk to a running TCP service line by line (the seed's client)."""

from __future__ import annotations

import contextlib
import socket
import sys
from typing import TextIO

from greenserve.config import Address

PROMPT = ">>: "
REPLY_WAIT = 2.0  # seconds to wait for the first byte of a reply
REPLY_SETTLE = 0.05  # a reply is complete once nothing more arrives for this long


def read_reply(sock: socket.socket, expected: int) -> bytes:
    """Read until ``expected`` bytes came (an echo), or the reply pauses, or the server closes."""
    sock.settimeout(REPLY_WAIT)
    received = b""
    while len(received) < expected:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            if not received:
                raise ConnectionError("the server closed the connection")
            break
        received += chunk
        sock.settimeout(REPLY_SETTLE)
    return received


def run(address: Address, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    """Send each input line, print each reply; 0 at end of input, 1 if the server is away."""
    try:
        sock = socket.create_connection((address.host, address.port), timeout=5)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"greenserve client: cannot connect to {address}: {reason.lower()}", file=sys.stderr)
        return 1
    interactive = stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()
    with sock:
        while True:
            try:
                line = input(PROMPT) if interactive else stdin.readline()
            except (EOFError, KeyboardInterrupt):
                if interactive:
                    stdout.write("\n")
                return 0
            if not interactive and not line:
                return 0
            payload = (line.rstrip("\n") + "\n").encode()
            try:
                sock.sendall(payload)
                reply = read_reply(sock, len(payload))
            except OSError as exc:
                print(f"greenserve client: {address}: {exc}", file=sys.stderr)
                return 1
            stdout.write(reply.decode(errors="replace"))
            if not reply.endswith(b"\n"):
                stdout.write("\n")
            stdout.flush()
