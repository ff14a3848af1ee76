"""The optional C extensions (setup.py builds them when a compiler is there), loaded one way.

A module is used only when it was built from the source this package expects: each C file
exports ``ABI``, and a build older than its source (an editable install not rebuilt) is ignored
rather than trusted. ``GREENSERVE_NO_EXTENSIONS=1`` turns every one off at run time (the same
switch idea as aiohttp's), so the pure-Python paths can be run and tested on any install.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def load(name: str, abi: int) -> ModuleType | None:
    """``greenserve.<name>``, or None: not built, stale, or turned off."""
    if os.environ.get("GREENSERVE_NO_EXTENSIONS"):
        return None
    try:
        module = importlib.import_module(f"greenserve.{name}")
    except ImportError:
        return None
    return module if getattr(module, "ABI", None) == abi else None
