"""TLS served directly: HTTPS with real clients, TLS echo, mutual TLS, rotation on HUP, hostile
clients, and certificates refused at start. Certificates come from trustme."""

from __future__ import annotations

import datetime
import http.client
import json
import signal
import socket
import ssl
import threading
import time
import urllib.request

import pytest
import requests
import trustme

from tests.helpers import (
    by_label,
    per_worker,
    read_all,
    running,
    serving_http,
    tool,
    wait_until,
)


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture()
def pki(ca, tmp_path):
    """A server certificate for 127.0.0.1, its CA, and a client certificate."""
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server.key",
        "ca": tmp_path / "ca.pem",
        "client": tmp_path / "client.pem",
    }
    server.cert_chain_pems[0].write_to_path(paths["cert"])
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(paths["cert"], append=True)
    server.private_key_pem.write_to_path(paths["key"])
    ca.cert_pem.write_to_path(paths["ca"])
    ca.issue_cert(
        "client@example.com", common_name="client-one"
    ).private_key_and_cert_chain_pem.write_to_path(paths["client"])
    return paths


def tls_args(pki) -> list[str]:
    return ["--certfile", str(pki["cert"]), "--keyfile", str(pki["key"])]


def client_context(pki, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if with_cert:
        context.load_cert_chain(str(pki["client"]))
    return context


class TestHttps:
    """HTTPS with urllib, requests and http.client; ALPN; the environ says https."""

    def test_clients(self, pki):
        with serving_http(
            "greenserve_testapps:environ_echo", "--stats-interval", "0.2", *tls_args(pki), workers=2
        ) as server:
            server.started()
            host, port = server.address
            url = f"https://{host}:{port}/path?q=1"
            context = client_context(pki)
            with urllib.request.urlopen(url, context=context, timeout=10) as response:
                assert response.status == 200
            with requests.Session() as session:  # keep-alive over one TLS session
                for _ in range(3):
                    got = session.get(url, verify=str(pki["ca"]), timeout=10)
                    assert got.status_code == 200 and got.json()["PATH_INFO"] == "/path"
            alpn = client_context(pki)
            alpn.set_alpn_protocols(["h2", "http/1.1"])  # the server must pick http/1.1
            conn = http.client.HTTPSConnection(host, port, context=alpn, timeout=10)
            conn.request("POST", "/upload", body=b"x" * 300_000)
            assert conn.sock.selected_alpn_protocol() == "http/1.1"
            assert conn.getresponse().read().count(b"x") == 300_000
            conn.close()
            wait_until(
                lambda: sum(per_worker(server, "greenserve_tls_handshakes_total").values()) >= 3,
                10,
                "handshakes counted",
            )
            # urllib's request closed its connection (Connection: close): no error on the way
            # out (the held-writes step once read a field TLS does not have)
            assert sum(per_worker(server, "greenserve_handler_errors_total").values()) == 0
            assert server.find("handler_error") == []

    def test_a_new_connection_is_served_between_a_pipelined_flood_of_records(self, pki):
        """Each request in its own TLS record, all in the socket at once: one read takes them
        all into the TLS engine, so after each answer the next request is already there (no
        socket wait, no poll). The fairness turn is taken there too (protocols/turns.py)."""
        with serving_http("greenserve_testapps:busy_sequence", *tls_args(pki)) as server:
            server.started()
            context = client_context(pki)
            flood = context.wrap_socket(
                socket.create_connection(server.address, timeout=10), server_hostname="127.0.0.1"
            )
            for _ in range(100):  # 2 ms of CPU each: 200 ms of work, one record per request
                flood.sendall(b"GET /?ms=2 HTTP/1.1\r\nHost: a\r\n\r\n")
            with context.wrap_socket(
                socket.create_connection(server.address, timeout=10), server_hostname="127.0.0.1"
            ) as other:
                other.sendall(b"GET /?ms=0 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                order = int(read_all(other).split(b"\r\n\r\n", 1)[1])
            flood.close()
            assert order < 50, order  # 101st without the turn

    def test_url_scheme_and_send_file(self, pki):
        with serving_http("greenserve_testapps:send_file", *tls_args(pki)) as server:
            server.started()
            host, port = server.address
            got = requests.get(f"https://{host}:{port}/", verify=str(pki["ca"]), timeout=10)
            from tests.helpers import APPS_DIR

            assert got.content == (APPS_DIR / "greenserve_testapps.py").read_bytes()

    def test_plaintext_gets_a_short_400_and_the_worker_serves_on(self, pki):
        with serving_http("--stats-interval", "0.2", *tls_args(pki)) as server:
            server.started()
            host, port = server.address
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                data = sock.recv(1024)
            assert data.startswith(b"HTTP/1.1 400 ")
            with socket.create_connection((host, port), timeout=10) as sock:
                sock.sendall(bytes(range(256)) * 4)  # garbage
                sock.settimeout(10)
                with _nothing():  # the server closes (or resets) the connection
                    while sock.recv(1024):
                        pass
            requests.get(f"https://{host}:{port}/", verify=str(pki["ca"]), timeout=10)
            wait_until(
                lambda: (
                    _failures(server).get("plaintext_http", 0) >= 1
                    and _failures(server).get("protocol", 0) >= 1
                ),
                10,
                "failures counted by reason",
            )

    def test_silent_client_closed_after_the_header_timeout(self, pki):
        with serving_http(
            "--header-timeout", "1", "--stats-interval", "0.2", *tls_args(pki)
        ) as server:
            server.started()
            started = time.monotonic()
            with socket.create_connection(server.address, timeout=10) as sock:
                assert sock.recv(1024) == b""  # closed by the server
            assert time.monotonic() - started < 8  # the header timeout, not the idle one
            wait_until(lambda: _failures(server).get("timeout", 0) >= 1, 10, "timeout counted")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] in (ConnectionResetError, TimeoutError, BrokenPipeError)


def _failures(server) -> dict[str, float]:
    return by_label(server, "greenserve_tls_handshake_failures_total", "reason")


class TestTlsEcho:
    """A TCP handler gets a TLS socket."""

    def test_echo_over_tls(self, pki):
        with running("-w", "1", *tls_args(pki)) as server:
            server.started()
            context = client_context(pki)
            with (
                socket.create_connection(server.address, timeout=10) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
            ):
                sock.sendall(b"secret echo\n")
                assert sock.recv(1024) == b"secret echo\n"


class TestMutualTls:
    """--verify-client required: a client certificate signed by --ca-certs, or no session."""

    def test_accepted_and_refused(self, pki):
        with serving_http(
            "greenserve_testapps:environ_echo_tls",
            "--stats-interval",
            "0.2",
            "--ca-certs",
            str(pki["ca"]),
            "--verify-client",
            "required",
            *tls_args(pki),
        ) as server:
            server.started()
            host, port = server.address
            url = f"https://{host}:{port}/"
            got = requests.get(url, verify=str(pki["ca"]), cert=str(pki["client"]), timeout=10)
            assert got.status_code == 200
            assert "CN=client-one" in got.json()["SSL_CLIENT_S_DN"]
            with pytest.raises(requests.exceptions.SSLError):
                try:
                    requests.get(url, verify=str(pki["ca"]), timeout=10)
                except requests.exceptions.ConnectionError as exc:  # TLS 1.3: after the handshake
                    raise requests.exceptions.SSLError(str(exc)) from None
            wait_until(
                lambda: (
                    _failures(server).get("client_certificate", 0)
                    + _failures(server).get("eof", 0)
                    + _failures(server).get("protocol", 0)
                    >= 1
                ),
                10,
                "the refused client counted",
            )


class TestRotation:
    """HUP with a new certificate: a new generation serves it, no request fails."""

    def test_rotation_under_load(self, ca, pki, tmp_path):
        with serving_http(*tls_args(pki), workers=2) as server:
            server.started()
            host, port = server.address
            context = client_context(pki)
            serials: set[int] = set()
            failed: list[str] = []
            stop = threading.Event()
            ok = [0]

            def load() -> None:
                deadline = time.monotonic() + 40
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        conn = http.client.HTTPSConnection(host, port, context=context, timeout=10)
                        conn.request("GET", "/")
                        # the serial now: a draining worker's Connection: close drops conn.sock
                        serial = int(conn.sock.getpeercert()["serialNumber"], 16)
                        conn.getresponse().read()
                        conn.close()
                        serials.add(serial)
                        ok[0] += 1
                    except Exception as exc:  # any failure counts; a thread must not die quietly
                        failed.append(repr(exc))

            threads = [threading.Thread(target=load) for _ in range(3)]
            for thread in threads:
                thread.start()
            try:
                wait_until(lambda: ok[0] >= 100, 20, "load before the rotation")
                first = set(serials)
                fresh = ca.issue_cert("127.0.0.1", "localhost")
                fresh.cert_chain_pems[0].write_to_path(pki["cert"])
                fresh.private_key_pem.write_to_path(pki["key"])
                server.signal(signal.SIGHUP)
                server.wait_event("reload_complete", timeout=30)
                wait_until(lambda: serials - first, 20, "the new serial seen by a client")
                target = ok[0] + 100
                wait_until(lambda: ok[0] >= target, 20, "load after the rotation")
            finally:
                stop.set()
                for thread in threads:
                    thread.join(15)
            assert failed == [], failed[:5]
            assert len(first) == 1 and len(serials) == 2

    def test_invalid_new_certificate_keeps_the_old_generation(self, pki):
        with serving_http(*tls_args(pki)) as server:
            server.started()
            pki["key"].write_text("not a key\n")
            server.signal(signal.SIGHUP)
            event = server.wait_event("reload_failed", timeout=20)[0]
            assert str(pki["cert"]) in event["error"] or str(pki["key"]) in event["error"]
            host, port = server.address
            assert (
                requests.get(
                    f"https://{host}:{port}/", verify=str(pki["ca"]), timeout=10
                ).status_code
                == 200
            )


class TestRefusedAtStart:
    """One line naming the file, exit 2, nothing bound."""

    def test_missing_mismatched_expired_and_password(self, ca, pki, tmp_path):
        missing = tool("--certfile", str(tmp_path / "nope.pem"), "--metrics-bind", "off")
        assert missing.returncode == 2 and "nope.pem" in missing.stdout + missing.stderr
        other = ca.issue_cert("127.0.0.1")
        other_key = tmp_path / "other.key"
        other.private_key_pem.write_to_path(other_key)
        mismatch = tool(
            "--certfile", str(pki["cert"]), "--keyfile", str(other_key), "--metrics-bind", "off"
        )
        assert mismatch.returncode == 2 and "does not match" in mismatch.stdout + mismatch.stderr
        past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
        expired = ca.issue_cert(
            "127.0.0.1", not_before=past, not_after=past + datetime.timedelta(days=30)
        )
        expired_pem = tmp_path / "expired.pem"
        expired.private_key_and_cert_chain_pem.write_to_path(expired_pem)
        old = tool("--certfile", str(expired_pem), "--metrics-bind", "off")
        assert old.returncode == 2 and "expired" in old.stdout + old.stderr
        for result in (missing, mismatch, old):
            assert "Traceback" not in result.stdout + result.stderr


class TestCheckConfigAgreesWithAStart:
    """--check-config makes the start's TLS checks: the same one line, the same exit code 2."""

    def test_each_refusal(self, ca, pki, tmp_path):
        other = tmp_path / "other.key"
        ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(other)
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("not a certificate\n")
        past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
        expired = tmp_path / "expired.pem"
        ca.issue_cert(
            "127.0.0.1", not_before=past, not_after=past + datetime.timedelta(days=30)
        ).private_key_and_cert_chain_pem.write_to_path(expired)
        cert, key = str(pki["cert"]), str(pki["key"])
        cases = {
            "missing certfile": (["--certfile", str(tmp_path / "nope.pem")], "no such file"),
            "missing keyfile": (
                ["--certfile", cert, "--keyfile", str(tmp_path / "no.key")],
                "no.key",
            ),
            "certfile without keyfile": (["--certfile", cert], "holds no private key"),
            "mismatched key": (["--certfile", cert, "--keyfile", str(other)], "does not match"),
            "not a certificate": (["--certfile", str(garbage), "--keyfile", key], "no PEM cert"),
            "not a key": (["--certfile", cert, "--keyfile", str(garbage)], "no PEM private key"),
            "expired": (["--certfile", str(expired)], "expired"),
        }
        for name, (args, words) in cases.items():
            checked = tool(*args, "--check-config")
            started = tool(*args, "--metrics-bind", "off", "--log-format", "json", "-w", "1")
            assert checked.returncode == started.returncode == 2, (name, checked, started)
            [line] = checked.stderr.strip().splitlines()
            message = line.removeprefix("greenserve: error: ")
            assert words in message and "PEM lib" not in message, (name, message)
            logged = [json.loads(x) for x in started.stdout.splitlines() if x.startswith("{")]
            assert [e["error"] for e in logged if e["event"] == "startup_failed"] == [message]


class TestTlsWebSockets:
    """wss:// with both WebSocket routes: wsgi.websocket and a library on gunicorn.socket."""

    @pytest.mark.parametrize(
        ("app", "path"),
        [("ws_apps:gevent_websocket_echo", "/ws"), ("ws_apps:app", "/echo")],
        ids=["wsgi.websocket", "flask-sock"],
    )
    def test_echo_over_tls(self, pki, app, path):
        import websocket

        with serving_http(app, *tls_args(pki)) as server:
            server.started()
            host, port = server.address
            ws = websocket.create_connection(
                f"wss://{host}:{port}{path}", timeout=10, sslopt={"ca_certs": str(pki["ca"])}
            )
            try:
                ws.send("hello over tls")
                assert ws.recv() == "hello over tls"
                ws.send_binary(b"\x00\xff" * 35000)  # several TLS records each way
                assert ws.recv() == b"\x00\xff" * 35000
            finally:
                ws.close()
