"""--static: files served by the workers before the app, checked with real clients (requests,
http.client, raw sockets for what clients normalise away) against one server with several
mounts, and over TLS."""

from __future__ import annotations

import email
import gzip
import http.client
import os
import ssl
import time
from email.utils import formatdate
from pathlib import Path

import pytest
import requests
import trustme

from tests.helpers import by_label, exchange, parse_responses, running, serving_http, wait_until

pytestmark = pytest.mark.timeout(60)

SMALL = os.urandom(10_240)  # kept in memory, sent with its headers in one write
LARGE = os.urandom(300_000)  # sent with sendfile (plain) or in blocks (TLS)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("static")
    public = root / "public"
    (public / "docs").mkdir(parents=True)
    (public / "empty").mkdir()
    (public / ".git").mkdir()
    (public / "small.bin").write_bytes(SMALL)
    (public / "large.bin").write_bytes(LARGE)
    (public / "app.css").write_text("body { color: red }\n" * 50)
    css = (public / "app.css").read_bytes()
    (public / "app.css.gz").write_bytes(gzip.compress(css))
    (public / "app.css.br").write_bytes(b"not really brotli, but served as the .br sibling")
    (public / "old.txt").write_text("plain\n")
    (public / "old.txt.gz").write_bytes(gzip.compress(b"plain\n"))
    past = time.time() - 3600
    os.utime(public / "old.txt.gz", (past, past))  # older than its file: stale, not used
    (public / "main.3b2c1a9f.js").write_text("console.log(1)\n")
    (public / "docs" / "index.html").write_text("<h1>docs</h1>\n")
    (public / "evil.com").mkdir()
    (public / "evil.com" / "index.html").write_text("same site\n")
    (public / "my docs").mkdir()
    (public / "my docs" / "index.html").write_text("spaced\n")
    (public / ".env").write_text("SECRET=1\n")
    (public / ".git" / "config").write_text("[core]\n")
    (root / "secret.txt").write_text("outside the mount\n")
    (public / "escape.txt").symlink_to(root / "secret.txt")
    (public / "inside.bin").symlink_to(public / "small.bin")
    images = root / "images"
    images.mkdir()
    (images / "logo.svg").write_text("<svg/>\n")
    (images / "link.txt").symlink_to(root / "secret.txt")
    (images / ".well-known").mkdir()
    (images / ".well-known" / "x").write_text("dot\n")
    return root


@pytest.fixture(scope="module")
def server(site: Path):
    public, images = site / "public", site / "images"
    with serving_http(
        "greenserve_testapps:environ_echo",
        "--static", f"/static={public};index=index.html",
        "--static", f"/static/images={images};max-age=60;symlinks;dotfiles",
        "--static", f"/assets={public};max-age=0;fallthrough",
        "--access-log",
        "--stats-interval", "0.2",
    ) as server:  # fmt: skip
        server.started()
        yield server


def url(server, path: str) -> str:
    host, port = server.address
    return f"http://{host}:{port}{path}"


def raw_get(server, target: str, headers: str = "") -> tuple[int, dict[str, str], bytes]:
    """A request sent byte for byte as written (clients normalise ``..`` and ``%2e%2e``)."""
    request = f"GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{headers}\r\n"
    (response,) = parse_responses(exchange(server.address, request.encode()))
    return response.status, response.headers, response.body


class TestFiles:
    def test_a_small_and_a_large_file_whole_with_their_headers(self, server):
        for name, content in (("small.bin", SMALL), ("large.bin", LARGE)):
            response = requests.get(url(server, f"/static/{name}"), timeout=10)
            assert response.status_code == 200 and response.content == content, name
            headers = response.headers
            assert headers["Content-Type"] == "application/octet-stream"
            assert headers["Content-Length"] == str(len(content))
            assert headers["Cache-Control"] == "public, max-age=3600"
            assert headers["Accept-Ranges"] == "bytes"
            assert headers["ETag"].startswith('"') and headers["Last-Modified"].endswith("GMT")
            assert "Vary" not in headers  # no precompressed sibling

    def test_head_has_the_headers_and_no_body(self, server):
        host, port = server.address
        for name, content in (("small.bin", SMALL), ("large.bin", LARGE)):
            connection = http.client.HTTPConnection(host, port, timeout=10)
            connection.request("HEAD", f"/static/{name}")
            response = connection.getresponse()
            assert response.status == 200 and response.read() == b""
            assert response.getheader("Content-Length") == str(len(content))
            connection.request("GET", f"/static/{name}")  # the connection is still in step
            assert connection.getresponse().read() == content
            connection.close()

    def test_types_from_the_mimetypes_table_and_cache_control_per_mount(self, server):
        css = requests.get(url(server, "/static/app.css"), timeout=10)
        assert css.headers["Content-Type"] == "text/css; charset=utf-8"
        hashed = requests.get(url(server, "/static/main.3b2c1a9f.js"), timeout=10)
        assert hashed.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        svg = requests.get(url(server, "/static/images/logo.svg"), timeout=10)
        assert svg.headers["Content-Type"].startswith("image/svg+xml")
        assert svg.headers["Cache-Control"] == "public, max-age=60"  # the longer prefix's mount
        assert (
            requests.get(url(server, "/assets/old.txt"), timeout=10).headers["Cache-Control"]
            == "no-cache"
        )

    def test_index_redirect_and_no_listing(self, server):
        response = requests.get(url(server, "/static/docs"), allow_redirects=False, timeout=10)
        assert response.status_code == 301 and response.headers["Location"] == "/static/docs/"
        assert requests.get(url(server, "/static/docs/"), timeout=10).text == "<h1>docs</h1>\n"
        assert requests.get(url(server, "/static/empty/"), timeout=10).status_code == 404
        assert requests.get(url(server, "/static/nothing.txt"), timeout=10).status_code == 404

    def test_a_redirect_stays_on_the_site_and_is_a_uri(self, server):
        status, headers, _ = raw_get(server, "/static//evil.com")
        assert (status, headers["location"]) == (301, "/static/evil.com/")
        status, headers, _ = raw_get(server, "/static/my%20docs?x=1")
        assert (status, headers["location"]) == (301, "/static/my%20docs/?x=1")

    def test_fallthrough_and_other_paths_reach_the_app(self, server):
        for path in ("/assets/nothing.txt", "/elsewhere", "/staticky"):
            response = requests.get(url(server, path), timeout=10)
            assert response.status_code == 200 and response.json()["PATH_INFO"] == path
        posted = requests.post(url(server, "/assets/old.txt"), data=b"x", timeout=10)
        assert posted.json()["REQUEST_METHOD"] == "POST"  # fallthrough: other methods too
        refused = requests.post(url(server, "/static/small.bin"), data=b"x", timeout=10)
        assert refused.status_code == 405 and refused.headers["Allow"] == "GET, HEAD"

    def test_a_changed_file_is_served_new(self, server, site):
        path = site / "public" / "changing.txt"
        path.write_text("one\n")
        first = requests.get(url(server, "/static/changing.txt"), timeout=10)
        path.write_text("two, longer\n")
        second = requests.get(url(server, "/static/changing.txt"), timeout=10)
        assert (first.text, second.text) == ("one\n", "two, longer\n")
        assert first.headers["ETag"] != second.headers["ETag"]
        path.unlink()
        assert requests.get(url(server, "/static/changing.txt"), timeout=10).status_code == 404


class TestConditional:
    def test_etag_and_dates(self, server):
        first = requests.get(url(server, "/static/small.bin"), timeout=10)
        etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
        for headers in (
            {"If-None-Match": etag},
            {"If-None-Match": f'"other", W/{etag}'},
            {"If-None-Match": "*"},
            {"If-Modified-Since": modified},
            {"If-Modified-Since": formatdate(time.time() + 60, usegmt=True)},
        ):
            response = requests.get(url(server, "/static/small.bin"), headers=headers, timeout=10)
            assert response.status_code == 304 and response.content == b"", headers
            assert response.headers["ETag"] == etag
        for headers in (
            {"If-None-Match": '"other"'},
            {"If-None-Match": '"other"', "If-Modified-Since": modified},  # the tag decides
            {"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"},
            {"If-Modified-Since": "not a date"},
        ):
            response = requests.get(url(server, "/static/small.bin"), headers=headers, timeout=10)
            assert response.status_code == 200 and response.content == SMALL, headers


class TestRanges:
    @pytest.mark.parametrize("name,content", [("small.bin", SMALL), ("large.bin", LARGE)])
    def test_single_ranges(self, server, name, content):
        size = len(content)
        for spec, (start, end) in (
            ("bytes=0-99", (0, 100)),
            ("bytes=100-", (100, size)),
            ("bytes=-500", (size - 500, size)),
            (f"bytes=10-{size * 2}", (10, size)),
        ):
            response = requests.get(
                url(server, f"/static/{name}"), headers={"Range": spec}, timeout=10
            )
            assert response.status_code == 206, spec
            assert response.content == content[start:end], spec
            assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"

    def test_several_ranges_are_a_multipart(self, server):
        response = requests.get(
            url(server, "/static/large.bin"), headers={"Range": "bytes=0-9,1000-1019"}, timeout=10
        )
        assert response.status_code == 206
        kind = response.headers["Content-Type"]
        assert kind.startswith("multipart/byteranges; boundary=")
        message = email.message_from_bytes(
            b"Content-Type: " + kind.encode() + b"\r\n\r\n" + response.content
        )
        parts = message.get_payload()
        assert isinstance(parts, list)
        assert [p["Content-Range"] for p in parts] == [
            f"bytes 0-9/{len(LARGE)}",
            f"bytes 1000-1019/{len(LARGE)}",
        ]
        assert [p.get_payload(decode=True) for p in parts] == [LARGE[0:10], LARGE[1000:1020]]

    def test_unsatisfiable_malformed_and_if_range(self, server):
        target = url(server, "/static/small.bin")
        response = requests.get(target, headers={"Range": "bytes=20000-"}, timeout=10)
        assert response.status_code == 416
        assert response.headers["Content-Range"] == f"bytes */{len(SMALL)}"
        for spec in ("bytes=5-1", "bytes=abc", "items=0-1"):
            response = requests.get(target, headers={"Range": spec}, timeout=10)
            assert response.status_code == 200 and response.content == SMALL, spec
        etag = requests.head(target, timeout=10).headers["ETag"]
        same = requests.get(target, headers={"Range": "bytes=0-0", "If-Range": etag}, timeout=10)
        other = requests.get(target, headers={"Range": "bytes=0-0", "If-Range": '"x"'}, timeout=10)
        assert (same.status_code, other.status_code) == (206, 200)


class TestPrecompressed:
    def test_the_sibling_the_client_accepts(self, server, site):
        css = (site / "public" / "app.css").read_bytes()
        target = url(server, "/static/app.css")
        session = requests.Session()
        session.headers["Accept-Encoding"] = "gzip, br"
        brotli = session.get(target, stream=True, timeout=10)
        assert brotli.headers["Content-Encoding"] == "br"
        assert brotli.raw.read() == (site / "public" / "app.css.br").read_bytes()
        gzipped = requests.get(target, headers={"Accept-Encoding": "gzip, br;q=0"}, timeout=10)
        assert gzipped.headers["Content-Encoding"] == "gzip" and gzipped.content == css
        plain = requests.get(target, headers={"Accept-Encoding": "identity"}, timeout=10)
        assert "Content-Encoding" not in plain.headers and plain.content == css
        for response in (brotli, gzipped, plain):
            assert response.headers["Vary"] == "Accept-Encoding"
        assert len({brotli.headers["ETag"], gzipped.headers["ETag"], plain.headers["ETag"]}) == 3

    def test_an_older_sibling_is_not_used(self, server):
        response = requests.get(
            url(server, "/static/old.txt"), headers={"Accept-Encoding": "gzip"}, timeout=10
        )
        assert "Content-Encoding" not in response.headers and response.text == "plain\n"


class TestAttacks:
    """Each refused path is a 400 or 404 that names no file, and is counted by reason."""

    @pytest.mark.parametrize(
        "target,status,reason",
        [
            ("/static/../secret.txt", 400, "traversal"),
            ("/static/%2e%2e/secret.txt", 400, "traversal"),
            ("/static/%2E%2E%2Fsecret.txt", 400, "traversal"),
            ("/static/docs/..%2F..%2Fsecret.txt", 400, "traversal"),
            ("/static/./small.bin", 400, "traversal"),
            ("/static/..%5Csecret.txt", 400, "backslash"),
            ("/static/a\\b", 400, "backslash"),
            ("/static/small.bin%00.txt", 400, "nul"),
            ("/static/.env", 404, "dotfile"),
            ("/static/.git/config", 404, "dotfile"),
            ("/static/%2eenv", 404, "dotfile"),
            ("/static/escape.txt", 404, "symlink"),
        ],
    )
    def test_refused(self, server, target, status, reason):
        before = by_label(server, "greenserve_static_refused_total", "reason").get(reason, 0)
        got, _, body = raw_get(server, target)
        assert got == status, body
        assert b"outside the mount" not in body and b"SECRET" not in body
        wait_until(
            lambda: (
                by_label(server, "greenserve_static_refused_total", "reason").get(reason, 0)
                > before
            ),
            10,
            f"static_refused{{reason={reason}}}",
        )

    def test_allowed_where_the_mount_says_so(self, server):
        assert raw_get(server, "/static/inside.bin")[2] == SMALL  # a link inside the directory
        assert raw_get(server, "/static/images/link.txt")[2] == b"outside the mount\n"
        assert raw_get(server, "/static/images/.well-known/x")[2] == b"dot\n"


class TestCounted:
    def test_metrics_by_mount_and_access_lines(self, server):
        target = url(server, "/static/images/logo.svg")
        mount = "/static/images"

        def count(name: str) -> float:
            return by_label(server, f"greenserve_static_{name}_total", "mount").get(mount, 0)

        before = count("requests")
        etag = requests.get(target, timeout=10).headers["ETag"]
        requests.get(target, headers={"If-None-Match": etag}, timeout=10)
        wait_until(lambda: count("requests") >= before + 2, 10, "static_requests_total")
        assert count("not_modified") >= 1 and count("bytes_sent") >= len("<svg/>\n")
        assert set(by_label(server, "greenserve_static_requests_total", "mount")) >= {
            "/static", "/static/images", "/assets",
        }  # fmt: skip
        lines = server.find("request", path="/static/images/logo.svg")
        assert [line["status"] for line in lines[-2:]] == [200, 304]


class TestOwnSite:
    def test_without_an_app_only_the_mounts_answer(self, site):
        with running("--static", f"/={site / 'public'};index=index.html") as server:
            server.started()
            assert requests.get(url(server, "/small.bin"), timeout=10).content == SMALL
            assert requests.get(url(server, "/docs/"), timeout=10).status_code == 200
            assert requests.get(url(server, "/nothing"), timeout=10).status_code == 404
            # "//evil.com" names a directory of the site, not another host to send clients to
            status, headers, _ = raw_get(server, "//evil.com")
            assert (status, headers["location"]) == (301, "/evil.com/")


class TestTls:
    def test_files_and_ranges_over_tls(self, site, tmp_path):
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "server.pem")
        ca.cert_pem.write_to_path(tmp_path / "ca.pem")
        with serving_http(
            "--static", f"/static={site / 'public'}",
            "--certfile", str(tmp_path / "server.pem"), "--keyfile", str(tmp_path / "server.pem"),
        ) as server:  # fmt: skip
            server.started()
            host, port = server.address
            context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
            connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
            for name, headers, expected in (
                ("large.bin", {}, LARGE),
                ("large.bin", {"Range": "bytes=1000-200999"}, LARGE[1000:201000]),
                ("small.bin", {}, SMALL),
            ):
                connection.request("GET", f"/static/{name}", headers=headers)
                response = connection.getresponse()
                assert response.read() == expected, (name, headers)
            connection.close()
            assert not server.find("response_truncated")


class TestRefusedAtStart:
    @pytest.mark.parametrize(
        "value,words",
        [
            ("static=nowhere", "expected URL_PREFIX=DIRECTORY"),
            ("/s=/no/such/directory", "no such directory"),
            ("/s/../x=.", "segment"),
            ("/s=.;max-age=soon", "unknown option"),
        ],
    )
    def test_one_line_exit_2(self, value, words):
        import subprocess
        import sys

        result = subprocess.run(
            [sys.executable, "-m", "greenserve", "--static", value, "--check-config"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1

    def test_not_with_tcp(self):
        import subprocess
        import sys

        result = subprocess.run(
            [sys.executable, "-m", "greenserve", "--static", "/s=.", "--protocol", "tcp"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2 and "--protocol tcp" in result.stderr
