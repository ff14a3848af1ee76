"""The slot table: which worker process serves which slot, and every decision about them.

Stdlib only, no signals sent, no logging, no clock read: each method takes ``now`` and returns
the processes the master must act on, so hand-over order, backoff, recycling and rollback are
tested with fake processes in milliseconds (tests/unit/test_slots.py). ``Master`` performs the
side effects (spawn, kill, log) and is the only caller.

A slot's worker is replaced without a gap: the new process starts while the old one (``outgoing``)
keeps serving, and the old one is retired only once the new one accepts.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field
from typing import Any

from greenserve.spec import EXIT_APP_LOAD

EARLY_DEATH = 1.0  # a worker dying sooner than this after start is "crashing on boot"
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 10.0
# A worker ignores TERM until it can drain (inherited from the forkserver, see preload.py), so a
# stop request sent while it boots would be lost: it is repeated until the process is gone.
STOP_RESEND = 0.5


@dataclass(eq=False)
class WorkerProcess:
    """One live worker process as the table sees it; ``channels`` is the master's own business."""

    slot: int
    generation: int
    pid: int
    started_at: float
    channels: Any = None
    ready: bool = False  # it accepts connections
    last_report: float | None = None  # when its last stats snapshot arrived
    wants_retire: str = ""  # why it asked to be replaced (worker/recycle.py), waiting for its turn
    kill_reason: str | None = None  # why the master ends it; None for an asked-for stop
    stop_signal: int | None = None  # TERM or QUIT once asked to stop; repeated until it exits
    stop_sent_at: float = 0.0
    abort_sent_at: float | None = None  # stacks asked for before a timeout kill


@dataclass(eq=False)
class Slot:
    """A worker position: one serving process, plus the one it replaces during a hand-over."""

    index: int
    worker: WorkerProcess | None = None
    outgoing: WorkerProcess | None = None  # retired once ``worker`` accepts
    failures: int = 0
    start_at: float | None = 0.0  # when to (re)start; None = nothing scheduled
    wanted: bool = True  # False once scaled down: kept so its counters stay on /metrics


@dataclass(frozen=True)
class Exit:
    """What a process's death means.

    ``reason``: a restart reason for the metrics (None when the exit was asked for);
    ``then``: None, ``"restart"`` (after ``delay``), ``"abort_reload"`` or ``"halt"`` (the app
    cannot load and there is nothing to roll back to); ``slot_idle``: no process of the slot
    serves any more, so siblings must not defer accepts to it.
    """

    reason: str | None
    lived: float
    then: str | None = None
    delay: float = 0.0
    slot_idle: bool = False


@dataclass(frozen=True)
class SlotLiveness:
    """One slot as /healthz and the liveness metrics show it."""

    index: int
    pid: int | None
    ready: bool
    last_report: float | None


@dataclass
class SlotTable:
    """Every slot and every live process, serving, handing over or draining."""

    count: InitVar[int]  # the slots to start with (due at ``now``); desired() says how many now
    now: InitVar[float] = 0.0
    slots: dict[int, Slot] = field(default_factory=dict)
    retiring: list[WorkerProcess] = field(default_factory=list)  # told to drain, in no slot

    def __post_init__(self, count: int, now: float) -> None:
        for index in range(count):
            self.slots[index] = Slot(index, start_at=now)

    # -- reading -------------------------------------------------------------------------------

    def live(self) -> list[WorkerProcess]:
        """Every live process: serving, handing over, and draining."""
        found = []
        for slot in self.slots.values():
            found += [w for w in (slot.worker, slot.outgoing) if w is not None]
        return found + self.retiring

    def desired(self) -> int:
        return sum(1 for slot in self.slots.values() if slot.wanted)

    def wanted(self) -> list[Slot]:
        return [slot for slot in self.slots.values() if slot.wanted]

    def ready_count(self) -> int:
        return sum(1 for s in self.wanted() if s.worker is not None and s.worker.ready)

    def all_ready(self) -> bool:
        wanted = self.wanted()
        return bool(wanted) and self.ready_count() == len(wanted)

    def handing_over(self) -> bool:
        return any(slot.outgoing is not None for slot in self.slots.values())

    def liveness(self) -> tuple[SlotLiveness, ...]:
        return tuple(
            SlotLiveness(
                slot.index,
                slot.worker.pid if slot.worker else None,
                bool(slot.worker and slot.worker.ready),
                slot.worker.last_report if slot.worker else None,
            )
            for slot in sorted(self.slots.values(), key=lambda s: s.index)
        )

    # -- starting and reporting ----------------------------------------------------------------

    def due(self, now: float) -> list[int]:
        """Slots whose process should be started now."""
        return [
            slot.index
            for slot in self.slots.values()
            if slot.worker is None
            and slot.wanted
            and slot.start_at is not None
            and slot.start_at <= now
        ]

    def started(self, worker: WorkerProcess) -> None:
        slot = self.slots[worker.slot]
        slot.worker, slot.start_at = worker, None

    def reported(self, worker: WorkerProcess, *, ready: bool, retire: str, now: float) -> None:
        worker.ready = worker.ready or ready
        worker.wants_retire = worker.wants_retire or retire
        worker.last_report = now

    def hand_over(self) -> list[WorkerProcess]:
        """Outgoing processes whose successor accepts now: retired, for the master to drain."""
        done = []
        for slot in self.slots.values():
            if slot.outgoing is not None and slot.worker is not None and slot.worker.ready:
                done.append(slot.outgoing)
                self.retiring.append(slot.outgoing)
                slot.outgoing = None
        return done

    # -- replacing -----------------------------------------------------------------------------

    def replace(self, index: int, reason: str, now: float) -> list[WorkerProcess]:
        """Start a new process for the slot; the current one drains once the new one accepts.

        Returns the processes to drain now: one that was itself replacing another and never
        served (the first process keeps serving until the newest accepts).
        """
        slot = self.slots[index]
        current = slot.worker
        slot.worker, slot.start_at, slot.failures = None, now, 0
        if current is None:
            return []
        current.kill_reason = reason
        if slot.outgoing is None:
            slot.outgoing = current
            return []
        self.retiring.append(current)
        return [current]

    def replace_all(self, reason: str, now: float) -> list[WorkerProcess]:
        drained = []
        for slot in self.wanted():
            drained += self.replace(slot.index, reason, now)
        return drained

    def recycle(self, now: float) -> WorkerProcess | None:
        """--max-requests: one asking worker is replaced at a time, never two together."""
        if any(s.outgoing is not None or s.worker is None for s in self.wanted()):
            return None
        for slot in self.wanted():
            worker = slot.worker
            if worker is not None and worker.ready and worker.wants_retire:
                self.replace(slot.index, worker.wants_retire, now)
                return worker
        return None

    def roll_back(self) -> list[WorkerProcess]:
        """A new generation cannot load its app: every old process serves its slot again.

        Returns the new-generation processes, to be drained.
        """
        drained = []
        for slot in self.slots.values():
            if slot.outgoing is None:
                continue
            if slot.worker is not None:
                slot.worker.kill_reason = "reload"
                self.retiring.append(slot.worker)
                drained.append(slot.worker)
            slot.worker, slot.outgoing = slot.outgoing, None
            slot.worker.kill_reason = None
            slot.start_at = None
        return drained

    def resize(self, count: int, now: float) -> tuple[list[WorkerProcess], list[int]]:
        """Scale to ``count`` slots: returns the processes to drain and the slots given up."""
        drained: list[WorkerProcess] = []
        dropped: list[int] = []
        for index in range(max(count, len(self.slots))):
            slot = self.slots.setdefault(index, Slot(index, start_at=None, wanted=False))
            if index < count and not slot.wanted:
                slot.wanted, slot.failures, slot.start_at = True, 0, now
            elif index >= count and slot.wanted:
                slot.wanted, slot.start_at = False, None
                for worker in (slot.worker, slot.outgoing):
                    if worker is not None:
                        self.retiring.append(worker)
                        drained.append(worker)
                slot.worker = slot.outgoing = None
                dropped.append(index)
        return drained, dropped

    # -- stopping ------------------------------------------------------------------------------

    def asked_to_stop(self, worker: WorkerProcess, signum: int, now: float) -> None:
        worker.stop_signal, worker.stop_sent_at = signum, now

    def stops_to_repeat(self, now: float) -> list[WorkerProcess]:
        return [
            w
            for w in self.live()
            if w.stop_signal is not None and now - w.stop_sent_at >= STOP_RESEND
        ]

    def exited(
        self, worker: WorkerProcess, code: int | None, now: float, *, stopping: bool
    ) -> Exit:
        """Take a dead process out of the table and decide what its slot does next."""
        slot = self.slots.get(worker.slot)
        serving = False
        if slot is not None and slot.worker is worker:
            slot.worker, serving = None, True
        elif slot is not None and slot.outgoing is worker:
            slot.outgoing, serving = None, True
        elif worker in self.retiring:
            self.retiring.remove(worker)
        lived = now - worker.started_at
        reason = worker.kill_reason
        if reason is None and not stopping and serving and slot is not None and slot.wanted:
            reason = "signal" if code is not None and code < 0 else "exit"
        if not serving or slot is None or slot.worker is not None or stopping:
            return Exit(reason, lived)
        idle = slot.outgoing is None
        if code == EXIT_APP_LOAD and not worker.ready:
            then = "abort_reload" if slot.outgoing is not None else "halt"
            return Exit(reason, lived, then, slot_idle=idle)
        if not slot.wanted:
            return Exit(reason, lived, slot_idle=idle)
        if lived < EARLY_DEATH or not worker.ready:
            slot.failures += 1
            delay = min(BACKOFF_FIRST * 2 ** (slot.failures - 1), BACKOFF_MAX)
        else:
            slot.failures, delay = 0, 0.0
        slot.start_at = now + delay
        return Exit(reason, lived, "restart", delay, slot_idle=idle)
