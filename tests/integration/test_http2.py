"""HTTP/2: over TLS by ALPN and as h2c from trusted peers, a greenlet per stream, flow control,
GOAWAY on stop and reload, limits on hostile clients. Real clients: curl, nghttp, h2load, httpx,
Chromium; the floods are hand-made frames (tests/h2client.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time

import httpx
import pytest
import trustme
from h2.settings import SettingCodes

from tests.h2client import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    HEADERS,
    PING,
    PREFACE,
    RST_STREAM,
    SETTINGS,
    Client,
    connect,
    frame,
    goaway_code,
    read_frames,
    request_block,
    settings_frame,
)
from tests.helpers import (
    STARTED_GROUPS,
    by_label,
    free_port,
    need,
    per_worker,
    running,
    serving_http,
    wait_until,
)

APP = "h2_apps:app"
H2 = ("--http-protocols", "h2,h1")
H2C = (*H2, "--http2-cleartext", "both")
ENHANCE_YOUR_CALM, PROTOCOL_ERROR, NO_ERROR, REFUSED_STREAM, CANCEL = 0xB, 0x1, 0x0, 0x7, 0x8


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("h2pki")
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"cert": folder / "server.pem", "ca": folder / "ca.pem"}
    server.private_key_and_cert_chain_pem.write_to_path(paths["cert"])
    ca.cert_pem.write_to_path(paths["ca"])
    return paths


def tls(pki) -> tuple[str, ...]:
    return ("--certfile", str(pki["cert"]))


def client_tls(pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki["ca"]))


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [need("curl"), "-sS", "--max-time", "20", *args],
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def url(server, path: str, scheme: str = "http") -> str:
    host, port = server.address
    return f"{scheme}://{host}:{port}{path}"


def get(encoder, stream_id: int, path: str) -> bytes:
    """A GET's HEADERS frame, made by hand (ids and limits a real client would not break)."""
    return frame(HEADERS, END_HEADERS | 0x1, stream_id, request_block(encoder, path))


def count(server, name: str, label: str, key: str, at_least: float = 1) -> float:
    """A labelled counter once it reaches ``at_least`` (workers flush every stats interval)."""
    return wait_until(
        lambda: (lambda v: v if v >= at_least else None)(by_label(server, name, label).get(key, 0)),
        10,
        f"{name}{{{label}={key!r}}} >= {at_least}",
    )


def healthy(server, tls_context: ssl.SSLContext | None = None) -> dict:
    """A fresh connection is answered over HTTP/2 by a live worker."""
    client = Client(server.address, tls_context)
    try:
        stream = client.request("/env")
        client.pump(lambda: client.finished(stream))
        assert client.responses[stream]["status"] == 200, client.responses[stream]
        return json.loads(client.responses[stream]["body"])
    finally:
        client.close()


class TestNegotiation:
    def test_alpn_over_tls_with_curl_httpx_and_http11_beside(self, pki):
        with serving_http(APP, *H2, *tls(pki), "--access-log") as server:
            server.started()
            out = curl("--http2", "--cacert", str(pki["ca"]), "-w", "\n%{http_version}",
                       url(server, "/env?a=1", "https"))  # fmt: skip
            body, version = out.stdout.rsplit(b"\n", 1)
            assert version == b"2", out
            env = json.loads(body)
            assert env["SERVER_PROTOCOL"] == "HTTP/2"
            assert env["url_scheme"] == "https" and env["QUERY_STRING"] == "a=1"
            assert env["HTTP_HOST"] == "{}:{}".format(*server.address)
            with httpx.Client(http2=True, verify=client_tls(pki)) as client:
                response = client.get(url(server, "/env", "https"), headers={"cookie": "a=1"})
                assert response.http_version == "HTTP/2"
                assert response.headers["x-request-id"] == response.json()["request_id"]
            one = curl("--http1.1", "--cacert", str(pki["ca"]), url(server, "/env", "https"))
            assert json.loads(one.stdout)["SERVER_PROTOCOL"] == "HTTP/1.1"
            lines = server.wait_event("request", count=3)
            assert {line["protocol"] for line in lines} == {"HTTP/2", "HTTP/1.1"}
            wait_until(
                lambda: by_label(server, "greenserve_http2_connections_total", "negotiation")
                .get("alpn") == 2, 10, "two ALPN connections counted"
            )  # fmt: skip

    def test_default_offers_http11_only(self, pki):
        with serving_http(APP, *tls(pki)) as server:
            server.started()
            out = curl("--http2", "--cacert", str(pki["ca"]), "-w", "\n%{http_version}",
                       url(server, "/env", "https"))  # fmt: skip
            assert out.stdout.rsplit(b"\n", 1)[1] == b"1.1"

    def test_h2c_prior_knowledge_and_upgrade_from_a_trusted_peer(self):
        with serving_http(APP, *H2C) as server:
            server.started()
            for flag in ("--http2-prior-knowledge", "--http2"):
                out = curl(flag, "-w", "\n%{http_version}", url(server, "/env"))
                body, version = out.stdout.rsplit(b"\n", 1)
                assert version == b"2", (flag, out)
                assert json.loads(body)["SERVER_PROTOCOL"] == "HTTP/2"
            # nghttp's upgrade, and a POST with a body, which stays HTTP/1.1 (RFC 9110 7.8)
            nghttp = subprocess.run([need("nghttp"), "-u", "-v", url(server, "/env")],
                                    capture_output=True, timeout=30, check=False)  # fmt: skip
            assert b"101 Switching Protocols" in nghttp.stdout and b":status: 200" in nghttp.stdout
            post = curl("--http2", "-d", "x=1", "-w", "\n%{http_version}", url(server, "/env"))
            assert post.stdout.rsplit(b"\n", 1)[1] == b"1.1"
            count(server, "greenserve_http2_connections_total", "negotiation", "prior_knowledge")
            count(server, "greenserve_http2_connections_total", "negotiation", "upgrade", 2)

    def test_h2c_from_an_untrusted_peer_is_refused_and_counted(self):
        with serving_http(APP, *H2C, "--forwarded-allow-ips", "192.0.2.1") as server:
            server.started()
            out = curl("--http2-prior-knowledge", url(server, "/env"))
            assert out.returncode != 0 or b"HTTP/2" not in out.stdout
            with socket.create_connection(server.address, timeout=10) as sock:
                sock.sendall(PREFACE + settings_frame())
                answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 400"), answer
            upgraded = curl("--http2", "-w", "\n%{http_version}", url(server, "/env"))
            assert upgraded.stdout.rsplit(b"\n", 1)[1] == b"1.1"  # the Upgrade is ignored
            count(server, "greenserve_http2_connection_errors_total", "reason", "untrusted_h2c", 3)

    def test_cleartext_without_h2_and_bad_values_are_usage_errors(self):
        for args, name in (
            (("--http2-cleartext", "both"), "--http2-cleartext"),
            (("--http-protocols", "h3"), "http_protocols"),
            (("--http-protocols", "h2,h2"), "http_protocols"),
            (("--http-protocols", "h2", "--protocol", "tcp"), "--protocol tcp"),
            (("--http2-initial-window-size", "10"), "http2_initial_window_size"),
        ):
            with running(APP, *args) as server:
                assert server.wait_exit() == 2, args
                lines = [line for line in server.output.splitlines() if line.strip()]
                assert len(lines) == 1 and name in lines[0], (args, lines)


class TestStreams:
    def test_a_hundred_slow_streams_on_one_connection_run_at_once(self, pki):
        h2load = need("h2load")
        with serving_http(APP, *H2, *tls(pki)) as server:
            server.started()
            healthy(server, client_tls(pki))  # warm: the worker's first request imports
            started = time.monotonic()
            out = subprocess.run(
                [h2load, "-n", "100", "-c", "1", "-m", "100", url(server, "/slow?ms=200", "https")],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            elapsed = time.monotonic() - started
            assert "100 succeeded" in out.stdout, out.stdout
            assert elapsed < 1.0, f"100 streams of 200 ms took {elapsed:.2f} s"

    def test_large_upload_and_download_with_flow_control(self, pki, tmp_path):
        payload = os.urandom(5 << 20)
        (tmp_path / "up").write_bytes(payload)
        with serving_http(APP, *H2, *tls(pki), "--http2-initial-window-size", "64k") as server:
            server.started()
            out = curl("--http2", "--cacert", str(pki["ca"]), "--data-binary",
                       f"@{tmp_path / 'up'}", url(server, "/upload", "https"))  # fmt: skip
            got = json.loads(out.stdout)
            digest = hashlib.sha256(payload).hexdigest()
            assert got == {"size": len(payload), "sha256": digest, "length": str(len(payload))}
            # no content-length: read whole (bounded by --max-body), given a CONTENT_LENGTH
            chunked = curl("--http2", "--cacert", str(pki["ca"]), "-H",
                           "Transfer-Encoding: chunked", "--data-binary", f"@{tmp_path / 'up'}",
                           url(server, "/upload", "https"))  # fmt: skip
            assert json.loads(chunked.stdout)["length"] == str(len(payload))
            with httpx.Client(http2=True, verify=client_tls(pki), timeout=30) as client:
                response = client.get(url(server, "/big?blocks=160", "https"))
                assert response.http_version == "HTTP/2"
                expected = b"".join(bytes([i % 251]) * 65536 for i in range(160))
                assert response.content == expected

    def test_a_slow_reader_holds_no_other_stream(self):
        """A client that does not open its window for one stream still gets the others."""
        with serving_http(APP, *H2C) as server:
            server.started()
            client = Client(server.address)
            big = client.request("/big?blocks=40")
            # read nothing of /big's data: pump only until its first bytes, without acking more
            small = client.request("/env")
            client.pump(lambda: client.responses[small]["done"], timeout=10)
            assert client.responses[small]["status"] == 200
            client.pump(lambda: client.finished(big), timeout=30)
            assert len(client.responses[big]["body"]) == 40 * 65536
            client.close()

    def test_early_hints_on_http2_and_http11(self, pki):
        with serving_http(APP, *H2C) as server:
            server.started()
            out = subprocess.run([need("nghttp"), "-nv", url(server, "/hints")],
                                 capture_output=True, timeout=30, check=False)  # fmt: skip
            text = out.stdout.decode()
            assert text.index(":status: 103") < text.index(":status: 200"), text
            assert "link: </style.css>; rel=preload; as=style" in text
            with socket.create_connection(server.address, timeout=10) as sock:
                sock.sendall(b"GET /hints HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                raw = b""
                while chunk := sock.recv(65536):
                    raw += chunk
            assert raw.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>"), raw
            assert b"\r\n\r\nHTTP/1.1 200 OK\r\n" in raw

    def test_request_timeout_stops_one_stream_not_its_neighbours(self):
        with serving_http(APP, *H2C, "--request-timeout", "0.5") as server:
            server.started()
            client = Client(server.address)
            stuck = client.request("/slow?ms=5000")
            quick = client.request("/slow?ms=100")
            client.pump(lambda: client.finished(stuck, quick), timeout=10)
            assert client.responses[quick]["status"] == 200
            assert client.responses[stuck]["status"] == 504
            client.close()
            server.wait_event("request_timeout")
            wait_until(
                lambda: (
                    'greenserve_http_request_timeouts_total{worker="0"} 1.0'
                    in server.metrics_text()
                ),
                10,
                "the timeout counted",
            )

    def test_app_failure_is_a_500_on_its_stream(self):
        with serving_http(APP, *H2C) as server:
            server.started()
            client = Client(server.address)
            failed, fine = client.request("/fail"), client.request("/env")
            client.pump(lambda: client.finished(failed, fine))
            assert client.responses[failed]["status"] == 500
            assert client.responses[fine]["status"] == 200
            client.close()
            server.wait_event("app_error")

    def test_metrics_count_streams_and_protocols(self):
        with serving_http(APP, *H2C, "--stats-interval", "0.2") as server:
            server.started()
            for _ in range(3):
                assert curl("--http2-prior-knowledge", url(server, "/env")).returncode == 0
            assert curl("--http1.1", url(server, "/env")).returncode == 0

            def counted():
                text = server.metrics_text()
                return (
                    "greenserve_http2_streams_total" in text
                    and by_label(server, "greenserve_http_requests_total", "code").get("200") == 4
                )

            wait_until(counted, 10, "four requests on /metrics")
            streams = sum(by_label(server, "greenserve_http2_streams_total", "worker").values())
            assert streams == 3


def in_flight(server, streams: int) -> None:
    """Wait until the workers report ``streams`` HTTP/2 streams running their app."""
    wait_until(
        lambda: sum(per_worker(server, "greenserve_http2_streams_active").values()) == streams,
        10,
        f"{streams} stream(s) in the app",
    )


def test_streams_leave_no_reference_cycles(pki):
    """A stream's objects are freed when it ends, not left to the cyclic GC (it ran often
    enough to cost 9-18% of HTTP/2 hello per CPU-second). The app turns the GC off first, so
    what the streams left in a cycle is still there to be found."""
    with serving_http(APP, *H2, *tls(pki)) as server:
        server.started()
        with httpx.Client(http2=True, verify=client_tls(pki)) as client:
            assert client.get(url(server, "/gc-off", "https")).status_code == 200
            for _ in range(30):
                response = client.get(url(server, "/env", "https"))
                assert response.http_version == "HTTP/2" and response.status_code == 200
            found = client.get(url(server, "/cycles", "https")).json()
        # the connection's own HPACK state is held in h2's cycles while it is open: not ours
        per_stream = {kind: n for kind, n in found.items() if "h2_stream" in kind}
        assert per_stream == {}, found


class TestStopAndReload:
    """nghttp as the client: h2's own client side takes a GOAWAY for the end of every stream."""

    def slow_request(self, server) -> subprocess.Popen:
        return subprocess.Popen(
            [need("nghttp"), "-v", url(server, "/slow?ms=1500")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip

    def test_graceful_stop_sends_goaway_and_finishes_the_streams_in_flight(self):
        with serving_http(APP, *H2C, "--stats-interval", "0.1") as server:
            server.started()
            client = self.slow_request(server)
            in_flight(server, 1)
            server.signal(signal.SIGTERM)
            out, _ = client.communicate(timeout=20)
            assert "recv GOAWAY frame" in out and "error_code=NO_ERROR" in out, out
            assert "last_stream_id=13" in out, out  # nghttp's first request stream
            assert ":status: 200" in out, out
            assert server.wait_exit() == 0

    def test_reload_moves_new_streams_to_the_new_worker(self):
        with serving_http(APP, *H2C, "--stats-interval", "0.1") as server:
            server.started()
            old_pid = healthy(server)["pid"]
            client = self.slow_request(server)
            in_flight(server, 1)
            server.signal(signal.SIGHUP)
            out, _ = client.communicate(timeout=20)
            assert "recv GOAWAY frame" in out and ":status: 200" in out, out
            new = wait_until(
                lambda: (lambda env: env if env["pid"] != old_pid else None)(healthy(server)),
                20, "a new connection served by the new worker",
            )  # fmt: skip
            assert new["SERVER_PROTOCOL"] == "HTTP/2"


class TestHostileClients:
    """Each attack gets GOAWAY (or a bounded cost), is counted, and the worker stays healthy."""

    def attack(self, server, data: bytes, *, tls_context=None, first=b"") -> list:
        sock = connect(server.address, tls_context)
        try:
            sock.sendall((first or PREFACE + settings_frame()) + data)
            return read_frames(sock, timeout=10)
        finally:
            sock.close()

    def counted(self, server, reason: str, at_least: float = 1) -> float:
        return count(server, "greenserve_http2_connection_errors_total", "reason", reason, at_least)

    def pid_after(self, server, before: int, tls_context=None) -> None:
        """The same worker answers a new connection, and no handler failed on the way."""
        assert healthy(server, tls_context)["pid"] == before
        count(server, "greenserve_http_requests_total", "code", "200", 2)  # this flush has it
        assert sum(per_worker(server, "greenserve_handler_errors_total").values()) == 0
        assert "Traceback" not in server.output

    def test_rapid_reset(self):
        with serving_http(APP, *H2C) as server:
            server.started()
            pid = healthy(server)["pid"]
            from hpack import Encoder

            encoder = Encoder()
            block = encoder.encode([(":method", "GET"), (":path", "/slow?ms=2000"),
                                    (":scheme", "http"), (":authority", "x")])  # fmt: skip
            flood = b"".join(
                frame(HEADERS, END_HEADERS | 0x1, sid, block)
                + frame(RST_STREAM, 0, sid, (0x8).to_bytes(4, "big"))
                for sid in range(1, 2 * 2000, 2)
            )
            frames = self.attack(server, flood)
            assert goaway_code(frames) == ENHANCE_YOUR_CALM
            self.counted(server, "rapid_reset")
            streams = wait_until(
                lambda: by_label(server, "greenserve_http2_streams_total", "worker") or None,
                10, "streams counted",
            )  # fmt: skip
            assert sum(streams.values()) <= 100 + 1, "apps ran past the stream limit"
            self.pid_after(server, pid)

    def test_continuation_flood(self):
        with serving_http(APP, *H2C) as server:
            server.started()
            pid = healthy(server)["pid"]
            flood = frame(HEADERS, 0, 1, b"\x82") + b"".join(
                frame(CONTINUATION, 0, 1, b"") for _ in range(10000)
            )
            frames = self.attack(server, flood)
            assert goaway_code(frames) == PROTOCOL_ERROR  # h2 stops at 64 CONTINUATION frames
            self.counted(server, "header_limit")
            self.pid_after(server, pid)

    def test_hpack_bomb(self):
        with serving_http(APP, *H2C) as server:
            server.started()
            pid = healthy(server)["pid"]
            from hpack import Encoder

            encoder = Encoder()
            # a 4 KiB value into HPACK's dynamic table with a first request, then a second
            # header block of 3,000 one-byte references to it: 3 KB that decode to 12 MB
            block = encoder.encode([(":method", "GET"), (":path", "/env"), (":scheme", "http"),
                                    (":authority", "x"), ("x-big", "a" * 4000)])  # fmt: skip
            first = frame(HEADERS, END_HEADERS | 0x1, 1, block)
            bomb = request_block(encoder, "/env") + bytes([0xBE]) * 3000  # index 62: x-big
            frames = self.attack(server, first + frame(HEADERS, END_HEADERS | 0x1, 3, bomb))
            assert goaway_code(frames) == ENHANCE_YOUR_CALM
            self.counted(server, "header_limit")
            self.pid_after(server, pid)

    def test_ping_and_settings_floods(self):
        with serving_http(APP, *H2C) as server:
            server.started()
            pid = healthy(server)["pid"]
            pings = b"".join(frame(PING, 0, 0, i.to_bytes(8, "big")) for i in range(5000))
            assert goaway_code(self.attack(server, pings)) == ENHANCE_YOUR_CALM
            settings = b"".join(frame(SETTINGS, 0, 0, b"") for _ in range(5000))
            assert goaway_code(self.attack(server, settings)) == ENHANCE_YOUR_CALM
            assert self.counted(server, "control_flood", 2) == 2
            self.pid_after(server, pid)

    def test_zero_window_stall_is_reset(self):
        with serving_http(APP, *H2C, "--http2-send-timeout", "1") as server:
            server.started()
            pid = healthy(server)["pid"]
            client = Client(server.address, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
            stream = client.request("/big?blocks=4")
            started = time.monotonic()
            client.pump(lambda: client.responses[stream]["reset"] is not None, timeout=15)
            assert client.responses[stream]["reset"] == CANCEL
            assert time.monotonic() - started < 10
            client.close()
            count(server, "greenserve_http2_streams_reset_total", "reason", "stall")
            self.pid_after(server, pid)

    def test_stream_ids_the_last_one_and_going_backwards(self):
        from hpack import Encoder

        with serving_http(APP, *H2C) as server:
            server.started()
            pid = healthy(server)["pid"]
            encoder, last = Encoder(), (1 << 31) - 1
            with connect(server.address) as sock:
                sock.sendall(PREFACE + settings_frame() + get(encoder, last, "/env"))
                answered = read_frames(sock, until=lambda fs: any(
                    kind == HEADERS and sid == last for kind, _, sid, _ in fs))  # fmt: skip
                assert any(kind == HEADERS and sid == last for kind, _, sid, _ in answered)
                # the id space is used up: a lower id is a connection error (RFC 9113 5.1.1)
                sock.sendall(get(encoder, 5, "/env"))
                assert goaway_code(read_frames(sock)) == PROTOCOL_ERROR
            self.counted(server, "protocol")
            self.pid_after(server, pid)

    def test_broken_preface_and_invalid_frames(self, pki):
        with serving_http(APP, *H2C, *tls(pki)) as server:
            server.started()
            context = client_tls(pki)
            pid = healthy(server, context)["pid"]
            garbage = b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + b"\0" * 30
            broken = self.attack(server, b"", tls_context=context, first=garbage)
            assert goaway_code(broken) == PROTOCOL_ERROR
            self.counted(server, "bad_preface")
            data_on_zero = self.attack(server, frame(DATA, 0, 0, b"x"), tls_context=context)
            assert goaway_code(data_on_zero) == PROTOCOL_ERROR
            self.counted(server, "protocol")
            assert "Traceback" not in server.output
            self.pid_after(server, pid, context)

    def test_reset_streams_whose_apps_still_run_hold_their_places(self):
        """The stream limit counts apps running, not h2's open streams: streams the client
        reset while their apps run keep the new ones out (REFUSED_STREAM), as rapid reset
        needs; once those apps finish, new streams run again."""
        from hpack import Encoder

        with serving_http(
            APP, *H2C, "--http2-max-concurrent-streams", "4", "--stats-interval", "0.1"
        ) as server:
            server.started()
            encoder = Encoder()
            with connect(server.address) as sock:
                sock.sendall(PREFACE + settings_frame() + frame(SETTINGS, 0x1, 0))  # ACK theirs
                opened = b"".join(
                    get(encoder, sid, "/slow?ms=800")
                    + frame(RST_STREAM, 0, sid, CANCEL.to_bytes(4, "big"))
                    for sid in (1, 3, 5, 7)
                )
                late = get(encoder, 9, "/env") + get(encoder, 11, "/env")
                sock.sendall(opened + late)
                refused = read_frames(sock, timeout=5, until=lambda fs: sum(
                    kind == RST_STREAM for kind, *_ in fs) >= 2)  # fmt: skip
                assert [(sid, body) for kind, _, sid, body in refused if kind == RST_STREAM] == [
                    (9, REFUSED_STREAM.to_bytes(4, "big")), (11, REFUSED_STREAM.to_bytes(4, "big"))
                ]  # fmt: skip
                count(server, "greenserve_http2_streams_reset_total", "reason", "refused", 2)

                # once the four apps end (800 ms), a new stream is served
                in_flight(server, 0)
                sock.sendall(get(encoder, 13, "/env"))
                frames = read_frames(sock, until=lambda fs: any(
                    kind == HEADERS and sid == 13 for kind, _, sid, _ in fs))  # fmt: skip
                assert any(kind == HEADERS and sid == 13 for kind, _, sid, _ in frames)


def test_chromium_loads_a_page_over_tls_with_h2(pki, tmp_path):
    chromium = need("chromium")
    from tests.integration.test_browser import FLAGS, evaluate, page_target

    with serving_http(APP, *H2, *tls(pki)) as server:
        server.started()
        devtools = free_port()
        browser = subprocess.Popen(
            [chromium, *FLAGS, "--ignore-certificate-errors",
             f"--user-data-dir={tmp_path / 'profile'}", f"--remote-debugging-port={devtools}",
             url(server, "/page", "https")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        STARTED_GROUPS.append(browser.pid)
        try:
            target = page_target(devtools)
            title = wait_until(
                lambda: (lambda t: t if t and t != "loading" else None)(
                    evaluate(target, "document.title")
                ),
                30,
                "the page to report its protocol",
                step=0.2,
            )
            assert title == "h2 HTTP/2"
        finally:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait(timeout=10)
