"""The app's prometheus_client metrics, made in a worker with a value that takes no lock.

prometheus_client builds every metric's value with ``values.ValueClass`` (a ``MutexValue``: a
float and a ``threading.Lock``). Before a worker imports the app it points that name at
``greenserve._appvalue.Value`` (C, atomic under the GIL, see _appvalue.c): the app's
``Counter.inc()`` goes from 0.33 to 0.13 us and ``Histogram.observe()`` from 0.69 to 0.27 us,
with the app's code unchanged. The values read the same to every collector, so the merge in
the master (appstats.py, appmerge.py) does not know which one made them.

Left alone: a value class other than ``MutexValue`` (``PROMETHEUS_MULTIPROC_DIR`` chooses
prometheus_client's own mmap files), and no usable extension (not built, stale, or
``GREENSERVE_NO_EXTENSIONS=1``, see extensions.py), where ``MutexValue`` stays: the same
numbers, slower.
"""

from __future__ import annotations

from typing import Any

from greenserve import extensions

# The extension's interface version this module expects (APPVALUE_ABI in _appvalue.c).
APPVALUE_ABI = 1


def lock_free_value() -> Any:
    """greenserve._appvalue.Value, or None: not built, stale, or turned off."""
    module = extensions.load("_appvalue", APPVALUE_ABI)
    return module.Value if module is not None else None


def install() -> bool:
    """Make the metrics created from now on with the lock-free value; True if it is in use.

    Called before the app is imported: metrics made earlier keep their ``MutexValue``, which
    is correct, only slower."""
    from prometheus_client import values

    value = lock_free_value()
    if value is None or values.ValueClass not in (values.MutexValue, value):
        return False
    values.ValueClass = value
    return True
