"""HUP: what a new generation is built from, and what is kept to roll back to.

The master starts a new generation only from settings that load, a certificate that checks and
sockets that bind; ``prepare`` does all three or raises one line. Until every slot of the new
generation accepts, ``Reload`` keeps the previous settings, generation and (when the binds
changed) sockets, so a generation whose app cannot load is undone without a gap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from greenserve.config import Bind, Settings, load
from greenserve.master.listeners import Listeners
from greenserve.tls_context import check as check_tls


@dataclass(frozen=True)
class Next:
    """A generation ready to start: its settings, certificate and sockets."""

    settings: Settings
    certificate: Any  # tls.Certificate, or None without TLS
    listeners: Listeners  # the running ones when the binds did not change


def prepare(
    argv: list[str],
    environ: Mapping[str, str],
    bind_override: tuple[Bind, ...] | None,
    current: Listeners,
) -> Next:
    """Raises ConfigError, TlsError or BindError; nothing running is touched then."""
    new = load(argv, environ)
    if bind_override:
        new = new.with_changes(bind=bind_override)
    certificate = check_tls(new)  # a bad new certificate leaves the old one serving
    if current.compatible(new):
        return Next(new, certificate, current)
    fresh = Listeners(new)
    fresh.open(previous=current)
    return Next(new, certificate, fresh)


@dataclass
class Reload:
    """What a reload replaced, to roll back to if the new generation cannot start."""

    settings: Settings
    generation: int
    listeners: Listeners | None  # the serving sockets when binds changed, closed after hand-over

    def replaced(self, previous: Listeners, current: Listeners) -> None:
        """Another reload changed the binds again before this one completed."""
        if self.listeners is None:
            self.listeners = previous  # the serving sockets: kept for a rollback
        else:  # the sockets in between never served
            previous.close(current, self.listeners)

    def complete(self, current: Listeners) -> None:
        """Every slot hands over: the draining workers keep their own copies of old sockets."""
        if self.listeners is not None:
            self.listeners.close(current)

    def roll_back(self, current: Listeners) -> Listeners:
        """The sockets to serve again."""
        if self.listeners is None:
            return current
        current.close(self.listeners)
        return self.listeners

    def close(self) -> None:
        if self.listeners is not None:
            self.listeners.close()
