"""An app module that takes two seconds to import (a worker is still booting meanwhile)."""

import time

time.sleep(2)


def handle(sock, address):
    sock.sendall(sock.recv(100))
