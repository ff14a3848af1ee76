"""The C extensions built with AddressSanitizer and UndefinedBehaviorSanitizer, and the tests
that drive them (the differential tests against llhttp, generated heads and responses, the
in-process HTTP corpus; the app metric value against prometheus_client's; greenlets on kept
frame stack chunks; --otel's sampling gate; the response's hot path; a plain request's
cycle and serve's loop; --static's C front) run against that
build: a read past a buffer, a use after free or undefined behaviour stops the run with the
sanitizer's report.

The interpreter is not instrumented: libasan is preloaded, and PYTHONMALLOC=malloc lets it see
every allocation the extension reads. Leak checking is off (the interpreter's own allocations
at exit are not ours to judge).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import ROOT, need

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SOURCE = ROOT / "service" / "greenserve" / "_fasthead.c"
APPVALUE = ROOT / "service" / "greenserve" / "_appvalue.c"
STACKCACHE = ROOT / "service" / "greenserve" / "_stackcache.c"
TRACEGATE = ROOT / "service" / "greenserve" / "_tracegate.c"
RESPONSE = ROOT / "service" / "greenserve" / "_response.c"
CYCLE = ROOT / "service" / "greenserve" / "_cycle.c"
STATIC = ROOT / "service" / "greenserve" / "_static.c"
FLAGS = [
    "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
    "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
]  # fmt: skip
# The in-process HTTP corpus through the C path, whole and split at random (byte by byte it
# takes minutes with every allocation checked; test_fasthead.py feeds every byte anyway).
DRIVEN_BY = [
    "tests/unit/test_fasthead.py",
    "tests/unit/test_http_protocol.py",
    "tests/unit/test_response_c.py",
    "tests/unit/test_cycle_c.py",
    "tests/unit/test_appvalue.py",
    "tests/unit/test_stackcache.py",
    "tests/unit/test_tracing.py",
    "tests/unit/test_static_c.py",
    "-k",
    "not python and not bytewise",
]


def _build(tree: Path, source: Path) -> Path:
    """A copy of the package whose extensions are sanitized builds: _fasthead from ``source``,
    _appvalue, _stackcache, _tracegate, _response, _cycle and _static from their own."""
    package = tree / "greenserve"
    skipped = shutil.ignore_patterns("*.so", "__pycache__")
    shutil.copytree(ROOT / "service" / "greenserve", package, ignore=skipped)
    include = sysconfig.get_paths()["include"]
    built = (
        ("_fasthead", source),
        ("_appvalue", APPVALUE),
        ("_stackcache", STACKCACHE),
        ("_tracegate", TRACEGATE),
        ("_response", RESPONSE),
        ("_cycle", CYCLE),
        ("_static", STATIC),
    )
    for name, built_from in built:
        target = package / f"{name}{sysconfig.get_config_var('EXT_SUFFIX')}"
        # _cycle's serve loop waits on the hub, so its frames are on a greenlet's stack when
        # greenlet copies that stack to the heap: a copy that reads the redzones ASan puts
        # around locals (reported as a stack-buffer-underflow in greenlet's memcpy). Its heap
        # accesses stay checked; its locals' redzones are left out.
        stack = ["--param=asan-stack=0"] if name == "_cycle" else []
        subprocess.run(
            [need("gcc"), *FLAGS, *stack, f"-I{include}", str(built_from), "-o", str(target)],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return tree


def _run(tree: Path, reports: Path, *tests: str) -> subprocess.CompletedProcess[str]:
    libasan = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = {
        **os.environ,
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": f"detect_leaks=0:log_path={reports}",
        "UBSAN_OPTIONS": f"print_stacktrace=1:halt_on_error=1:log_path={reports}",
        "PYTHONMALLOC": "malloc",
        "PYTHONPATH": os.pathsep.join([str(tree), str(ROOT)]),
        "CI": "true",  # the tests then insist that the extension is there
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )


def _reports(reports: Path) -> str:
    return "".join(p.read_text() for p in reports.parent.glob(reports.name + "*"))


def test_the_extensions_tests_are_clean_under_asan_and_ubsan(tmp_path):
    tree = _build(tmp_path / "tree", SOURCE)
    probe = subprocess.run(
        [sys.executable, "-c", "import greenserve._fasthead as f; print(f.__file__)"],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "tree")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # importable only with libasan loaded first: the build really is instrumented
    assert probe.returncode != 0 and "ASan runtime does not come first" in probe.stderr
    reports = tmp_path / "sanitizer"
    result = _run(tree, reports, *DRIVEN_BY)
    assert result.returncode == 0, _reports(reports) + result.stdout[-3000:]
    assert " passed" in result.stdout and _reports(reports) == ""


def test_an_overread_is_caught(tmp_path):
    """The set-up can fail: one byte read past a request's bytes stops the run."""
    source = SOURCE.read_text()
    anchor = "const unsigned char *blank = data + size - 2;"
    assert anchor in source
    mutated = tmp_path / "_fasthead.c"
    overread = " volatile unsigned char past = data[size + 1]; (void)past;"
    mutated.write_text(source.replace(anchor, anchor + overread, 1))
    reports = tmp_path / "sanitizer"
    result = _run(_build(tmp_path / "tree", mutated), reports, "tests/unit/test_fasthead.py")
    assert result.returncode != 0
    assert "heap-buffer-overflow" in _reports(reports)
