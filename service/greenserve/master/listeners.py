"""Every listening socket the master serves on, and what a reload keeps of them.

One socket per ``--bind`` (TCP, ``unix:`` path or inherited ``fd://N``); with ``--reuse-port``
each worker slot also gets its own SO_REUSEPORT copy of every TCP bind, owned here so it outlives
the slot's workers. A reload derives a new ``Listeners`` that keeps the sockets of unchanged binds
(a unix path cannot be bound twice, and a kept socket loses no queued connection); closing the
old set after the hand-over closes only what the new one does not use.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Mapping

from greenserve.config import Address, Bind, FdAddress, Settings, UnixAddress
from greenserve.master.sockets import BindError, accept_queue, bind_listener, bound_address


class Listeners:
    """The sockets of one set of binds; the master's only owner of listening sockets."""

    def __init__(self, settings: Settings) -> None:
        self.binds = settings.bind
        self.backlog = settings.backlog
        self.reuse_port = settings.reuse_port
        self.unix_mode = settings.unix_mode
        self.owner = (settings.user, settings.group)
        self.shared: dict[Bind, socket.socket] = {}
        self.per_slot: dict[tuple[Bind, int], socket.socket] = {}  # --reuse-port copies
        self.created_paths: set[str] = set()  # unix socket files to remove on close

    def compatible(self, settings: Settings) -> bool:
        """Whether ``settings`` serve on exactly these sockets."""
        return (settings.bind, settings.reuse_port, settings.backlog) == (
            self.binds,
            self.reuse_port,
            self.backlog,
        )

    def open(
        self, previous: Listeners | None = None, inherited: Mapping[Bind, int] | None = None
    ) -> None:
        """Bind every address; all or none. ``previous``'s socket of the same bind is kept
        (reload); a socket ``inherited`` from an upgrading master is adopted (USR2)."""
        try:
            for bind in self.binds:
                if inherited and bind in inherited:
                    self.shared[bind] = _inherit(FdAddress(inherited[bind]), shown=bind)
                    if isinstance(bind, UnixAddress):
                        self.created_paths.add(bind.path)  # this master removes it now
                    continue
                kept = previous.shared.get(bind) if previous is not None else None
                if (
                    kept is not None
                    and previous is not None
                    and previous.reuse_port == self.reuse_port
                ):
                    self.shared[bind] = kept
                    if isinstance(bind, UnixAddress) and bind.path in previous.created_paths:
                        self.created_paths.add(bind.path)
                    continue
                self.shared[bind] = self._bind(bind)
        except BaseException:
            self.close(previous)
            raise

    def _bind(self, bind: Bind) -> socket.socket:
        if isinstance(bind, UnixAddress):
            return self._bind_unix(bind)
        if isinstance(bind, FdAddress):
            return _inherit(bind)
        return bind_listener(bind, backlog=self.backlog, reuse_port=self.reuse_port)

    def _bind_unix(self, bind: UnixAddress) -> socket.socket:
        path = bind.path
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            self.created_paths.add(path)
            os.chmod(path, self.unix_mode)
            user, group = self.owner
            if user is not None or group is not None:
                os.chown(path, -1 if user is None else user, -1 if group is None else group)
            sock.listen(self.backlog)
        except OSError as exc:
            sock.close()
            raise BindError(f"cannot bind {bind}: {exc.strerror or exc}") from None
        return sock

    def for_slot(self, slot: int) -> tuple[socket.socket, ...]:
        """The sockets a slot's workers serve: the shared ones, or the slot's own TCP copies."""
        if not self.reuse_port or slot == 0:
            return tuple(self.shared.values())
        sockets = []
        for bind, shared in self.shared.items():
            if not isinstance(bind, Address):
                sockets.append(shared)  # a path or an inherited fd has no per-slot copy
                continue
            key = (bind, slot)
            if key not in self.per_slot:
                # the same address as the shared socket (its port, should the setting say 0)
                self.per_slot[key] = bind_listener(
                    bound_address(shared), backlog=self.backlog, reuse_port=True
                )
            sockets.append(self.per_slot[key])
        return tuple(sockets)

    def drop_slot(self, slot: int) -> None:
        """--reuse-port: a slot scaled away must stop receiving connections from the kernel."""
        for key in [key for key in self.per_slot if key[1] == slot]:
            self.per_slot.pop(key).close()

    def addresses(self) -> list[str]:
        """What each bind really listens on (a port 0 resolved), for logs and titles."""
        shown = []
        for bind, sock in self.shared.items():
            shown.append(str(bound_address(sock)) if isinstance(bind, Address) else str(bind))
        return shown

    def queues(self) -> tuple[tuple[str, int], ...]:
        """Each bind's accept queue now (its per-slot copies included, --reuse-port); 0 where
        the kernel does not say (a unix socket)."""
        depth: dict[str, int] = {}
        for bind, sock in self.shared.items():
            depth[str(bind)] = accept_queue(sock)
        for (bind, _), sock in self.per_slot.items():
            depth[str(bind)] = depth.get(str(bind), 0) + accept_queue(sock)
        return tuple(depth.items())

    def handed_over(self) -> None:
        """Another master serves these sockets now: closing them here must not remove files."""
        self.created_paths = set()

    def fds(self) -> dict[str, int]:
        """Each bind's shared socket, for a new master (USR2)."""
        return {str(bind): sock.fileno() for bind, sock in self.shared.items()}

    def all_sockets(self) -> set[socket.socket]:
        return {*self.shared.values(), *self.per_slot.values()}

    def close(self, *keep: Listeners | None) -> None:
        """Close every socket no ``keep`` set uses; remove the unix socket files created."""
        kept: set[socket.socket] = set()
        kept_paths: set[str] = set()
        for other in keep:
            if other is not None:
                kept |= other.all_sockets()
                kept_paths |= other.created_paths
        for sock in self.all_sockets() - kept:
            sock.close()
        for path in self.created_paths - kept_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.shared, self.per_slot = {}, {}
        self.created_paths = set()


def _remove_stale(path: str) -> None:
    """A socket file left by a dead server is replaced; one a live server answers on is not."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BindError(f"cannot bind unix:{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise BindError(f"cannot bind unix:{path}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: stale
        return
    except OSError as exc:
        raise BindError(f"cannot bind unix:{path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise BindError(f"cannot bind unix:{path}: address already in use")


def _inherit(bind: FdAddress, shown: Bind | None = None) -> socket.socket:
    """A listening stream socket handed down as a file descriptor."""
    try:
        sock = socket.socket(fileno=bind.fd)
    except OSError as exc:
        raise BindError(f"cannot use {shown or bind}: {exc.strerror or exc}") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise BindError(f"cannot use {shown or bind}: not a listening stream socket")
    return sock
