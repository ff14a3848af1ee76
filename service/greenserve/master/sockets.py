"""Binding listening sockets in the master: once, before any worker starts."""

from __future__ import annotations

import errno
import socket
import struct

from greenserve.config import Address

BACKLOG = 2048
_TCP_INFO_SIZE = 104
_QUEUED_OFFSET = 24  # struct tcp_info: tcpi_unacked, the accept queue's length on a listener


class BindError(RuntimeError):
    """The address cannot be bound; the message is the one line shown to the user."""


def bind_listener(
    address: Address, *, backlog: int = BACKLOG, reuse_port: bool = False
) -> socket.socket:
    """A listening TCP socket with SO_REUSEADDR (and SO_REUSEPORT if asked), for workers."""
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise BindError(f"cannot bind {address}: {exc.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot bind {address}: {bind_reason(exc)}") from None
    return sock


def bind_reason(exc: OSError) -> str:
    """Why a bind failed, in the words the user's next step depends on."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    return exc.strerror or str(exc)


def accept_queue(sock: socket.socket) -> int:
    """Connections waiting in a TCP listener's accept queue (the kernel's count; 0 when
    unknown, as on a unix socket)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return 0
    queued: int = struct.unpack_from("I", info, _QUEUED_OFFSET)[0]
    return queued


def bound_address(sock: socket.socket) -> Address:
    """The address a socket really listens on (port 0 resolved)."""
    host, port = sock.getsockname()[:2]
    return Address(host, port)


def one_line(exc: BaseException) -> str:
    """An error for a one-line startup message: its first line, or its type's name."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
