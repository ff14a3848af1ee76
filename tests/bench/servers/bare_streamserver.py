"""A bare gevent StreamServer in N forked processes on one shared socket: no metrics, no logs."""

import os
import socket
import sys

from gevent import monkey

monkey.patch_all()

from gevent.server import StreamServer  # noqa: E402 - after monkey patching, on purpose


def echo(sock, address):
    recv, send = sock.recv, sock.send
    while True:
        data = recv(65536)
        if not data:
            return
        sent = send(data)
        while sent < len(data):
            data = data[sent:]
            sent = send(data)


def main() -> None:
    port, processes = int(sys.argv[1]), int(sys.argv[2])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(2048)
    for _ in range(processes - 1):
        if os.fork() == 0:
            break
    StreamServer(listener, echo).serve_forever()


main()
