"""Server hooks: user functions called at points of the master's and the workers' lives.

Each hook is declared once in ``HOOKS`` (name, process, arguments, when, what a raise does),
with gunicorn's names and arguments so that a ``gunicorn.conf.py`` keeps working: the
``--hooks`` option, the docs reference page and the argument check all derive from it. Hooks
come from ``--hooks`` sources: a Python file or a module (each function named after a hook is
that hook), or ``HOOK=MODULE:FUNCTION`` for one.

Stdlib only: the master imports this module and never imports gevent. A hook in the master runs
in its loop, so it must be quick; one that raises is logged with its traceback and the master
goes on (a ``hook_failed`` event).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Hook:
    """One hook: where it runs, what it gets, when, and what happens if it raises."""

    name: str
    process: str  # "master" or "worker"
    args: tuple[str, ...]
    when: str
    if_it_raises: str


_LOGGED = "logged (hook_failed, with its traceback); the process goes on"
HOOKS: tuple[Hook, ...] = (
    Hook("on_starting", "master", ("server",), "before the sockets are bound", _LOGGED),
    Hook("when_ready", "master", ("server",), "sockets bound, before the first worker", _LOGGED),
    Hook("on_reload", "master", ("server",), "a HUP's new settings accepted", _LOGGED),
    Hook("pre_fork", "master", ("server", "worker"), "before a worker is started", _LOGGED),
    Hook(
        "post_fork",
        "worker",
        ("server", "worker"),
        "in the new worker, after gevent's patching, before the app is imported",
        "logged; the worker exits and the master starts another (as an app that cannot load "
        "would be, exit 3 with --workers 1 at start)",
    ),
    Hook(
        "post_worker_init",
        "worker",
        ("worker",),
        "the app is loaded, before the worker accepts",
        "logged; the worker exits as post_fork's would",
    ),
    Hook(
        "pre_request",
        "worker",
        ("worker", "req"),
        "an HTTP request's head is read, before the app is called",
        "logged; the request is answered 500 and the app is not called",
    ),
    Hook(
        "post_request",
        "worker",
        ("worker", "req", "environ", "resp"),
        "an HTTP response has been sent (its iterable closed)",
        "logged; the response has gone already",
    ),
    Hook("worker_int", "worker", ("worker",), "a worker is told to stop at once (QUIT)", _LOGGED),
    Hook(
        "worker_abort",
        "worker",
        ("worker",),
        "a worker missed its heartbeat for --timeout; the master kills it 0.5 s later",
        _LOGGED,
    ),
    Hook("worker_exit", "worker", ("server", "worker"), "a worker has stopped serving", _LOGGED),
    Hook("child_exit", "master", ("server", "worker"), "a worker process has ended", _LOGGED),
    Hook(
        "nworkers_changed",
        "master",
        ("server", "new_value", "old_value"),
        "the wanted number of workers changed (TTIN, TTOU, HUP)",
        _LOGGED,
    ),
    Hook("pre_exec", "master", ("server",), "USR2, before the new master starts", _LOGGED),
    Hook("on_exit", "master", ("server",), "the master is about to exit", _LOGGED),
)
HOOKS_BY_NAME = {hook.name: hook for hook in HOOKS}
# gunicorn hooks with no meaning here: a file moved from gunicorn may define them
NOT_CALLED = {"ssl_context": "TLS is set with --certfile/--keyfile/--ciphers"}


class HookError(ValueError):
    """A hook source that cannot be used; the message is the one line shown to the user."""


def parse_sources(text: str) -> tuple[str, ...]:
    """The ``hooks`` option: comma-separated ``FILE.py``, ``MODULE`` or ``HOOK=MODULE:FUNCTION``.

    Only the form is checked here; files are made absolute so a worker started after --chdir
    finds the same file. Importing is ``load``'s, before anything binds.
    """
    sources = []
    for raw in text.split(","):
        source = raw.strip()
        if not source or source.lower() == "none":
            continue
        name, sep, target = source.partition("=")
        if sep:
            if name.strip() not in HOOKS_BY_NAME:
                raise ValueError(f"{name.strip()!r} is no hook (known: {', '.join(HOOKS_BY_NAME)})")
            module, colon, function = target.strip().rpartition(":")
            if not colon or not module or not function:
                raise ValueError(f"expected {name.strip()}=MODULE:FUNCTION, got {source!r}")
            if module.endswith(".py"):
                module = os.path.abspath(module)
            sources.append(f"{name.strip()}={module}:{function}")
        elif source.endswith(".py"):
            sources.append(os.path.abspath(source))
        else:
            sources.append(source)
    return tuple(sources)


@dataclass
class Hooks:
    """The hooks in force; ``call`` runs one if set, guarded."""

    functions: dict[str, Callable[..., Any]] = field(default_factory=dict)
    log: Any = None
    ignored: tuple[str, ...] = ()  # gunicorn hooks found that greenserve does not call

    def __contains__(self, name: str) -> bool:
        return name in self.functions

    def get(self, name: str) -> Callable[..., Any] | None:
        return self.functions.get(name)

    def call(self, name: str, *args: Any) -> bool:
        """Run hook ``name`` if set; False if it raised (logged with its traceback)."""
        function = self.functions.get(name)
        if function is None:
            return True
        try:
            function(*args)
        except Exception as exc:
            self.failed(name, exc)
            return False
        return True

    def failed(self, name: str, exc: BaseException) -> None:
        if self.log is not None:
            self.log.error("hook_failed", hook=name, error=repr(exc), exc_info=exc)


_loaded_files: dict[str, Any] = {}
_lock = threading.Lock()


def load(sources: Sequence[str], log: Any = None, *, process: str | None = None) -> Hooks:
    """Import the sources and check each hook's arguments; HookError names what is wrong.

    ``process``: keep only that process's hooks (the master and a worker each import the
    sources; a worker's functions are never called in the master and the other way round).
    """
    functions: dict[str, Callable[..., Any]] = {}
    origin: dict[str, str] = {}
    ignored: list[str] = []
    cwd = os.getcwd()
    if cwd not in sys.path:  # as the app is imported: modules from the working directory
        sys.path.insert(0, cwd)
    for source in sources:
        name, sep, target = source.partition("=")
        if sep:
            found = {name: _attribute(target)}
        else:
            namespace = vars(_module(source))
            found = {key: value for key, value in namespace.items() if key in HOOKS_BY_NAME}
            ignored += [key for key in NOT_CALLED if callable(namespace.get(key))]
        for hook_name, function in found.items():
            if hook_name in origin:
                raise HookError(
                    f"hook {hook_name} is declared twice, in {origin[hook_name]} and {source}"
                )
            _check(HOOKS_BY_NAME[hook_name], function, source)
            origin[hook_name] = source
            if process is None or HOOKS_BY_NAME[hook_name].process == process:
                functions[hook_name] = function
    return Hooks(functions, log, ignored=tuple(ignored))


def _module(source: str) -> Any:
    try:
        if source.endswith(".py"):
            with _lock:
                if source not in _loaded_files:
                    spec = importlib.util.spec_from_file_location(
                        f"greenserve_hooks_{len(_loaded_files)}", source
                    )
                    if spec is None or spec.loader is None:
                        raise HookError(f"hooks file {source} cannot be loaded")
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
                    _loaded_files[source] = module
                return _loaded_files[source]
        return importlib.import_module(source)
    except HookError:
        raise
    except FileNotFoundError:
        raise HookError(f"hooks file {source} does not exist") from None
    except BaseException as exc:  # the user's import failed: one line, not a traceback
        raise HookError(f"hooks {source} failed to import: {exc!r}") from None


def _attribute(target: str) -> Any:
    module_name, _, attr = target.rpartition(":")
    module = _module(module_name)
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise HookError(f"hooks module {module_name!r} has no {attr!r}")
        value = getattr(value, part)
    return value


def _check(hook: Hook, function: Any, source: str) -> None:
    """A hook that cannot take gunicorn's arguments fails at start, not at its first call."""
    if not callable(function):
        raise HookError(f"hook {hook.name} from {source} is not callable")
    try:
        inspect.signature(function).bind(*hook.args)
    except TypeError:
        raise HookError(
            f"hook {hook.name} from {source} must take ({', '.join(hook.args)})"
        ) from None
    except ValueError:  # a builtin without a signature: trust it
        pass


def patched_master() -> bool:
    """True if importing the hooks monkey-patched this process (the master never runs on
    gevent: its signal handling, Queue reads and forkserver assume the real stdlib)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_anything_patched())


@dataclass
class ServerView:
    """The ``server`` a hook gets: the master's pid, settings and logger (gunicorn's arbiter
    exposes the same names: ``pid``, ``cfg``, ``log``, ``num_workers``)."""

    pid: int
    settings: Any
    log: Any
    num_workers: int = 0
    address: list[str] = field(default_factory=list)

    @property
    def cfg(self) -> Any:
        return self.settings


@dataclass
class WorkerView:
    """The ``worker`` a hook gets. In the master (pre_fork, child_exit) ``pid`` is None before
    the start and ``exitcode`` is set after the end; in the worker ``app`` is the loaded app."""

    slot: int
    generation: int
    pid: int | None
    ppid: int
    settings: Any
    log: Any
    app: Any = None
    exitcode: int | None = None
    alive: bool = True

    @property
    def cfg(self) -> Any:
        return self.settings

    @property
    def age(self) -> int:  # gunicorn: a counter that orders workers by start; here: generation
        return self.generation
