"""Every HTTP response accounted once: counted on /metrics and, with --access-log, logged, so
the two always agree, whoever wrote the response (the app, greenserve's own error answer, a
refused WebSocket handshake)."""

from __future__ import annotations

from typing import Any

from greenserve.metrics.stats import Histogram, WorkerStats
from greenserve.worker.protocols.http_parser import Head
from greenserve.worker.protocols.http_response import Response
from greenserve.worker.protocols.tcp import peer as _peer

# the metric label per status (_cycle.c counts with it too)
STATUS_KEYS = {code: str(code) for code in range(100, 600)}


class ResponseAccounting:
    """The accounting half of HttpHandler: a mixin, so the per-request call is one method of
    the handler, not a second object's."""

    stats: WorkerStats
    durations: Histogram
    access_log: bool
    log: Any

    def responded(
        self, address: Any, environ: dict[str, Any], writer: Response, duration: float
    ) -> None:
        """A response the app finished: counted on /metrics and, with --access-log, logged."""
        codes = self.stats.http_requests
        status = writer.status_code
        key = STATUS_KEYS.get(status) or str(status)
        codes[key] = codes.get(key, 0) + 1
        self.durations.observe(duration)
        self.stats.requests_served += 1
        if writer.truncated:
            self.stats.handler_errors += 1
            self.log.warning(
                "response_truncated",
                method=writer.head.method.decode("latin-1"),
                path=environ["PATH_INFO"],
                content_length=writer.length,
                dropped_bytes=writer.truncated,
                request_id=writer.request_id,
            )
        if self.access_log:
            self._access(
                address,
                writer.head,
                environ,
                status,
                writer.body_sent,
                duration,
                writer.request_id,
            )

    def account_stream(self, address: Any, environ: dict[str, Any] | None, writer: Any) -> None:
        """An HTTP/2 stream's response (h2_stream.StreamResponse), finished or cut short."""
        if writer.error or environ is None or not writer.finished:
            extra = {"error": writer.error} if writer.error else {}
            self.answered(
                address,
                writer.head,
                environ,
                writer.status_code,
                writer.body_sent,
                writer.duration,
                writer.request_id,
                **extra,
            )
        else:
            self.responded(address, environ, writer, writer.duration)

    def answered(
        self,
        address: Any,
        head: Head | None,
        environ: dict[str, Any] | None,
        status: int,
        sent: int,
        duration: float,
        request_id: str,
        **extra: Any,
    ) -> None:
        """Any other response (greenserve's own errors, a cut-short one, a refused WebSocket):
        counted and logged like the app's, so /metrics and the access log always agree."""
        codes = self.stats.http_requests
        key = STATUS_KEYS.get(status) or str(status)
        codes[key] = codes.get(key, 0) + 1
        self.durations.observe(duration)
        self.stats.requests_served += 1
        if self.access_log:
            self._access(address, head, environ, status, sent, duration, request_id, **extra)

    def _access(
        self,
        address: Any,
        head: Head | None,
        environ: dict[str, Any] | None,
        status: int,
        sent: int,
        duration: float,
        request_id: str,
        **extra: Any,
    ) -> None:
        """One access-log line (--access-log): every response, whoever wrote it."""
        if environ is None and head is not None:
            environ = head.environ  # a plain head's, built in C before it was refused
        if environ is not None:
            path, query = environ["PATH_INFO"], environ["QUERY_STRING"]
            agent, referer = environ.get("HTTP_USER_AGENT"), environ.get("HTTP_REFERER")
        elif head is not None:  # no environ yet: what the parser had of the request
            path, query = head.path.decode("latin-1"), head.query.decode("latin-1")
            agent = referer = None
            for key, value in head.headers:  # (environ key, value) as the parser read them
                if key == "HTTP_USER_AGENT":
                    agent = value.decode("latin-1")
                elif key == "HTTP_REFERER":
                    referer = value.decode("latin-1")
        else:
            path = query = agent = referer = None
        self.log.info(
            "request",
            protocol="HTTP/" + head.version if head is not None else None,
            method=head.method.decode("latin-1") if head is not None and head.method else None,
            path=path,
            query=query,
            status=status,
            bytes=sent,
            duration_ms=round(duration * 1000, 3),
            peer=_peer(address),
            user_agent=agent,
            referer=referer,
            request_id=request_id,
            **extra,
        )
