"""The seed's classic server: monkey.patch_all, an accept loop, gevent.spawn per connection."""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402 - after monkey patching, on purpose
import sys  # noqa: E402 - after monkey patching, on purpose

import gevent  # noqa: E402 - after monkey patching, on purpose


def echo(sock, address):
    with sock:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            sock.sendall(data)


def main() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen(2048)
    while True:
        sock, address = listener.accept()
        gevent.spawn(echo, sock, address)


main()
