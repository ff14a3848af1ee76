"""What every framework app in the tests answers, computed the same way for each."""

from __future__ import annotations

import hashlib
from pathlib import Path

STREAM_CHUNKS = 100
STREAM_CHUNK = b"0123456789" * 100  # 1000 bytes
SEND_FILE = Path(__file__).resolve()  # any file the test can read too: this module's source


def digest(data: bytes) -> dict[str, object]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def stream() -> object:
    for _ in range(STREAM_CHUNKS):
        yield STREAM_CHUNK
