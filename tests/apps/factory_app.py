"""App factories, loaded as factory_app:create_app() and factory_app:create_app("prod")."""

from __future__ import annotations

from typing import Any


def create_app(env: str = "default", greeting: str = "hello") -> Any:
    body = f"{greeting} from {env}".encode()

    def app(environ: dict, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    return app
