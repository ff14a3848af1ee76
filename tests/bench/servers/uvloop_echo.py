"""asyncio + uvloop echo server, one process per worker on one shared socket."""

import asyncio
import os
import socket
import sys

import uvloop


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def serve(listener: socket.socket) -> None:
    server = await asyncio.get_running_loop().create_server(Echo, sock=listener)
    await server.serve_forever()


def main() -> None:
    port, processes = int(sys.argv[1]), int(sys.argv[2])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(2048)
    for _ in range(processes - 1):
        if os.fork() == 0:
            break
    uvloop.run(serve(listener))


main()
