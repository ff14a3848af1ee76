"""--static's C front (greenserve._static) against the Static layer it stands in front of.

Two Static layers over the same files, one called through its C front and one alone, get the
same generated requests (GET, HEAD, POST; canonical and other spellings of a path; conditional,
range and Accept-Encoding headers; files changed, grown past the memory limit and removed
between requests) and must give the same statuses, headers, bodies and counters. Which requests
the C front answered itself is counted through its fallback.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from greenserve.config import load
from greenserve.metrics.stats import WorkerStats
from greenserve.worker import static as static_module
from greenserve.worker.static import SMALL_FILE, Static

C = static_module.STATIC_C

pytestmark = pytest.mark.skipif(
    C is None and not os.environ.get("CI"),
    reason="greenserve._static is not built (no compiler at install)",
)

PATHS = [
    "/static/small.bin", "/static//small.bin", "/static/small.bin/", "/static/app.css",
    "/static/docs/", "/static/docs", "/static/docs/index.html", "/static/big.bin",
    "/static/missing.txt", "/static/.env", "/static/../secret", "/static/images/logo.svg",
    "/static/images/", "/other", "/staticx", "/static", "/", "/static/images", "/stat",
    "/static/imagesx/a", "/small.bin", "/docs/", "/images/logo.svg",
]  # fmt: skip
SINCE = "Mon, 01 Jan 2035 00:00:00 GMT"
# {etag}: the ETag the requested file has now (a browser's revalidation)
HEADERS = [
    {}, {"HTTP_IF_NONE_MATCH": "*"}, {"HTTP_IF_MODIFIED_SINCE": SINCE},
    {"HTTP_RANGE": "bytes=0-9"}, {"HTTP_ACCEPT_ENCODING": "gzip, br"},
    {"HTTP_ACCEPT_ENCODING": "identity"}, {"HTTP_IF_RANGE": '"x"'},
    {"HTTP_IF_NONE_MATCH": "{etag}"}, {"HTTP_IF_NONE_MATCH": "W/{etag}"},
    {"HTTP_IF_NONE_MATCH": ' "other" ,{etag}\t'}, {"HTTP_IF_NONE_MATCH": '"other"'},
    {"HTTP_IF_NONE_MATCH": "*, {etag}x"}, {"HTTP_IF_NONE_MATCH": " * "},
    {"HTTP_IF_NONE_MATCH": "w/{etag}"}, {"HTTP_IF_NONE_MATCH": "{etag}\x1c"},
    {"HTTP_IF_NONE_MATCH": "\xe9, {etag}"}, {"HTTP_IF_NONE_MATCH": ""},
    {"HTTP_IF_NONE_MATCH": ",,"}, {"HTTP_IF_NONE_MATCH": "W/"},
    {"HTTP_IF_NONE_MATCH": "Wx{etag}"},
    {"HTTP_IF_NONE_MATCH": "{etag}", "HTTP_RANGE": "bytes=0-9"},
    {"HTTP_IF_NONE_MATCH": '"other"', "HTTP_RANGE": "bytes=0-9"},
    {"HTTP_IF_NONE_MATCH": '"other"', "HTTP_IF_MODIFIED_SINCE": SINCE},
    {"HTTP_IF_NONE_MATCH": "{etag}", "HTTP_ACCEPT_ENCODING": "gzip"},
    {"HTTP_ACCEPT_ENCODING": "gzip"}, {"HTTP_ACCEPT_ENCODING": "br;q=0, gzip;q=0.5"},
    {"HTTP_ACCEPT_ENCODING": "*"}, {"HTTP_ACCEPT_ENCODING": ""},
]  # fmt: skip


ORIGINAL: dict[Path, tuple[bytes, int]] = {}


def _site(root: Path) -> Path:
    public = root / "public"
    (public / "docs").mkdir(parents=True)
    (public / "images").mkdir()
    (public / "small.bin").write_bytes(os.urandom(10_240))
    (public / "big.bin").write_bytes(os.urandom(SMALL_FILE + 1))
    (public / "app.css").write_text("body { color: red }\n" * 20)
    (public / "app.css.gz").write_bytes(b"gz sibling")
    (public / "app.css.br").write_bytes(b"br sibling")
    for name in ("app.css.gz", "app.css.br"):  # what _change puts back
        ORIGINAL[public / name] = ((public / name).read_bytes(), (public / name).stat().st_mtime_ns)
    (public / "docs" / "index.html").write_text("<h1>docs</h1>\n")
    (public / "images" / "logo.svg").write_text("<svg/>\n")
    (public / ".env").write_text("SECRET=1\n")
    return public


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"app {environ['PATH_INFO']}".encode()]


class _Layer:
    """A Static layer and what its answers and counters were."""

    def __init__(self, public: Path, front: bool, mounts: tuple[str, ...] = ()) -> None:
        mounts = mounts or (f"/static={public};index=index.html;max-age=60",)
        settings = load([arg for mount in mounts for arg in ("--static", mount)], {})
        self.stats = WorkerStats()
        self.static = Static(_app, settings.static, self.stats)
        self.fallbacks = 0
        self.app: Any = self.static
        if front:

            def counted(environ: dict[str, Any], start_response: Any) -> Any:
                self.fallbacks += 1
                return self.static(environ, start_response)

            stats = self.stats
            prefixes = tuple(mount.prefix for mount in self.static.mounts)
            self.app = C.Front(
                self.static.ready, counted, stats.static_requests, stats.static_bytes_sent,
                stats.static_not_modified, prefixes, _app,
            )  # fmt: skip

    def get(self, method: str, path: str, headers: dict[str, str]) -> tuple[Any, ...]:
        answered: list[Any] = []
        headers = {
            name: value.replace("{etag}", self.etag(path)) for name, value in headers.items()
        }

        def start_response(status: str, header_list: list[tuple[str, str]]) -> None:
            answered.extend((status, list(header_list)))
            header_list.append(("X-Added", "by a hook"))  # must not change the next answer

        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", **headers}
        body = self.app(environ, start_response)
        try:
            content = b"".join(body)
        finally:
            getattr(body, "close", lambda: None)()
        status, header_list = answered
        # a multipart's boundary is random in each layer
        header_list = [(n, v.split("boundary=")[0]) for n, v in header_list]
        if "multipart" in str(header_list):
            content = b"multipart"
        return status, header_list, content

    def etag(self, path: str) -> str:
        """The ETag of the file at ``path`` now, as Static makes it, or one of none."""
        for mount in self.static.mounts:
            prefix = mount.prefix
            if path.startswith(prefix + "/"):
                relative = path[len(prefix) :].lstrip("/")
                try:
                    st = os.stat(os.path.join(mount.root, relative))
                except OSError:
                    break
                return f'"{st.st_mtime_ns // 1000:x}-{st.st_size:x}"'
        return '"none"'

    def counters(self) -> dict[str, dict[str, int]]:
        names = ("static_requests", "static_bytes_sent", "static_not_modified", "static_refused")
        return {name: dict(getattr(self.stats, name)) for name in names}


def _change(public: Path, draw: random.Random) -> None:
    """One file changed on disk between requests."""
    small = public / "small.bin"
    choice = draw.randrange(7)
    sibling = public / draw.choice(("app.css.gz", "app.css.br"))
    if choice == 5:  # a sibling rewritten: newer than its file, or made stale (older)
        sibling.write_bytes(os.urandom(draw.choice((10, 20))))
        if draw.random() < 0.5:
            past = (public / "app.css").stat().st_mtime_ns - 10**9
            os.utime(sibling, ns=(past, past))
        return
    if choice == 6:  # the sibling exactly as it was made (the layer's cached key matches again)
        content, stamp = ORIGINAL[sibling]
        sibling.write_bytes(content)
        os.utime(sibling, ns=(stamp, stamp))
        return
    if choice == 4 and small.exists():  # as tar or rsync -t replace it: the old mtime kept
        stamp = small.stat().st_mtime_ns
        small.write_bytes(os.urandom(draw.choice((100, 5_000))))
        os.utime(small, ns=(stamp, stamp))
    elif choice == 0:
        small.write_bytes(os.urandom(draw.choice((100, 10_240, SMALL_FILE + 5))))
    elif choice == 1 and small.exists():
        small.unlink()
    elif choice == 2:
        (public / "app.css").write_text("p {}\n" * draw.randrange(1, 50))
    else:
        stamp = draw.randrange(1_600_000_000, 1_700_000_000)
        os.utime(public / "images" / "logo.svg", (stamp, stamp))


MOUNTS = {
    "one": ("/static={public};index=index.html;max-age=60",),
    "nested": ("/static={public}", "/static/images={public}/images;max-age=5;dotfiles"),
    "root": ("/={public};index=index.html;fallthrough",),
}


@pytest.mark.parametrize("mounts", MOUNTS)
@pytest.mark.parametrize("seed", range(4))
def test_the_front_answers_as_the_layer_does(tmp_path, seed, mounts):
    public = _site(tmp_path)
    draw = random.Random(seed)
    spelled = tuple(mount.format(public=public) for mount in MOUNTS[mounts])
    with_front = _Layer(public, front=True, mounts=spelled)
    alone = _Layer(public, front=False, mounts=spelled)
    for _ in range(300):
        if draw.random() < 0.05:
            _change(public, draw)
        method = draw.choice(("GET", "GET", "GET", "HEAD", "POST"))
        path = draw.choice(PATHS)
        headers = draw.choice(HEADERS) if draw.random() < 0.4 else {}
        assert with_front.get(method, path, headers) == alone.get(method, path, headers), (
            method, path, headers,
        )  # fmt: skip
        assert with_front.counters() == alone.counters()
    # the front took a share of them itself: the generated run exercised both sides
    assert 0 < with_front.fallbacks < 300


def test_what_the_front_answers_itself(tmp_path):
    public = _site(tmp_path)
    layer = _Layer(public, front=True)
    ask = layer.get

    def fallbacks_for(method: str, path: str, headers: dict[str, str] | None = None) -> int:
        before = layer.fallbacks
        ask(method, path, headers or {})
        return layer.fallbacks - before

    assert fallbacks_for("GET", "/static/small.bin") == 1  # first seen by the layer
    assert fallbacks_for("GET", "/static/small.bin") == 0
    assert fallbacks_for("HEAD", "/static/small.bin") == 0
    assert ask("HEAD", "/static/small.bin", {})[2] == b""
    for headers in HEADERS[2:4]:  # If-Modified-Since (a date to parse) and a Range
        assert fallbacks_for("GET", "/static/small.bin", headers) == 1
    # a browser's revalidation: 304 from C, and a Range under a matching If-None-Match too
    for match in ("*", "{etag}", 'W/"1-2", W/{etag}', "{etag}\x1c", " \x0b{etag},"):
        headers = {"HTTP_IF_NONE_MATCH": match}
        assert fallbacks_for("GET", "/static/small.bin", headers) == 0
        status, header_list, body = ask("GET", "/static/small.bin", headers)
        assert status == "304 Not Modified" and body == b""
        assert "Content-Length" not in dict(header_list) and "ETag" in dict(header_list)
    fresh = {"HTTP_IF_NONE_MATCH": "{etag}", "HTTP_RANGE": "bytes=0-1"}  # the 304 wins
    assert fallbacks_for("GET", "/static/small.bin", fresh) == 0
    stale = {"HTTP_IF_NONE_MATCH": '"1-2"', "HTTP_RANGE": "bytes=0-1"}
    assert fallbacks_for("GET", "/static/small.bin", stale) == 1
    assert fallbacks_for("GET", "/static/small.bin", {"HTTP_IF_NONE_MATCH": '"1-2"'}) == 0
    assert fallbacks_for("GET", "/static/small.bin", {"HTTP_IF_NONE_MATCH": "\xe9"}) == 1
    assert layer.counters()["static_not_modified"] == {"/static": 12}  # with If-Modified-Since
    assert fallbacks_for("GET", "/static/small.bin", {"HTTP_ACCEPT_ENCODING": "gzip"}) == 0
    assert fallbacks_for("POST", "/static/small.bin") == 1
    assert fallbacks_for("GET", "/static//small.bin") == 1  # not canonical: never kept
    assert fallbacks_for("GET", "/static//small.bin") == 1
    assert fallbacks_for("GET", "/static/app.css") == 1
    assert fallbacks_for("GET", "/static/app.css") == 0  # no Accept-Encoding: the plain file
    assert fallbacks_for("GET", "/static/app.css", {"HTTP_ACCEPT_ENCODING": "br"}) == 1
    assert fallbacks_for("GET", "/static/big.bin") == 1  # past the memory limit: from disk
    assert fallbacks_for("GET", "/static/big.bin") == 1
    assert fallbacks_for("GET", "/static/docs/") == 1
    assert fallbacks_for("GET", "/static/docs/") == 0  # the index, under the directory's path
    for outside in ("/other", "/staticx/small.bin", "/stat", "/"):  # not mounted: the app's
        assert fallbacks_for("GET", outside) == 0
        assert ask("GET", outside, {})[2] == f"app {outside}".encode()
    # changed on disk: the next request goes to the layer, which keeps the new content
    (public / "small.bin").write_bytes(b"new")
    assert fallbacks_for("GET", "/static/small.bin") == 1
    assert ask("GET", "/static/small.bin", {})[2] == b"new"
    assert fallbacks_for("GET", "/static/small.bin") == 0
    (public / "small.bin").unlink()
    assert ask("GET", "/static/small.bin", {})[0] == "404 Not Found"
    assert "/static/small.bin" not in layer.static.ready
    assert layer.counters()["static_requests"] == {"/static": 33}  # all found, not the POST


def test_a_file_with_siblings_from_c_per_accept_encoding(tmp_path):
    """Each Accept-Encoding value goes through the layer once, then the front sends what the
    layer sent for it; a sibling gone stale sends that value back to the layer for good."""
    public = _site(tmp_path)
    layer = _Layer(public, front=True)

    def fallbacks_for(headers: dict[str, str]) -> tuple[int, Any]:
        before = layer.fallbacks
        answer = layer.get("GET", "/static/app.css", headers)
        return layer.fallbacks - before, answer

    fallbacks_for({})
    for accept, sent in (("gzip, br", b"br sibling"), ("gzip", b"gz sibling"), ("identity", None)):
        headers = {"HTTP_ACCEPT_ENCODING": accept}
        first, answer = fallbacks_for(headers)
        second, again = fallbacks_for(headers)
        assert (first, second) == (1, 0) and again == answer, accept
        assert answer[2] == (sent or (public / "app.css").read_bytes())
        coding = dict(answer[1]).get("Content-Encoding")
        assert coding == {b"br sibling": "br", b"gz sibling": "gzip", None: None}[sent]
    stale = (public / "app.css").stat().st_mtime_ns - 10**9
    (public / "app.css.br").write_bytes(b"new br")
    os.utime(public / "app.css.br", ns=(stale, stale))
    for _ in range(2):  # the layer skips the stale sibling, sends gzip, and keeps nothing
        taken, answer = fallbacks_for({"HTTP_ACCEPT_ENCODING": "gzip, br"})
        assert taken == 1 and answer[2] == b"gz sibling"
    content, stamp = ORIGINAL[public / "app.css.br"]  # as it was: the layer sends it again
    (public / "app.css.br").write_bytes(content)
    os.utime(public / "app.css.br", ns=(stamp, stamp))
    assert fallbacks_for({"HTTP_ACCEPT_ENCODING": "gzip, br"})[1][2] == b"br sibling"


def test_ready_refuses_what_it_could_not_answer_with():
    key, length = (1, 2, 3, 4), [("Content-Length", "4")]
    with pytest.raises(ValueError, match="NUL"):
        C.Ready(b"/tmp/a\x00b", key, length, b"abcd", "/static", False, '"e"')
    with pytest.raises(ValueError, match="length"):
        C.Ready(b"/tmp/a", key, length, b"abc", "/static", False, '"e"')
    with pytest.raises(ValueError, match="Content-Length"):
        C.Ready(b"/tmp/a", key, [("ETag", '"e"')], b"abcd", "/static", False, '"e"')
    with pytest.raises(ValueError, match="ASCII"):
        C.Ready(b"/tmp/a", key, length, b"abcd", "/static", False, '"\xe9"')
    with pytest.raises(TypeError):
        C.Ready("/tmp/a", key, length, b"abcd", "/static", False, '"e"')


def test_other_environs_and_a_failing_start_response_are_the_layers_way(tmp_path):
    public = _site(tmp_path)
    layer = _Layer(public, front=True)
    layer.get("GET", "/static/small.bin", {})
    seen = []

    class Environ(dict):  # not a plain dict: handed on, never read by the front
        pass

    environ = Environ(REQUEST_METHOD="GET", PATH_INFO="/static/small.bin", QUERY_STRING="")
    before = layer.fallbacks
    layer.app(environ, lambda status, headers: seen.append(status))
    assert layer.fallbacks == before + 1 and seen == ["200 OK"]

    def refusing(status: str, headers: list[tuple[str, str]]) -> None:
        raise RuntimeError("refused")

    plain = {"REQUEST_METHOD": "GET", "PATH_INFO": "/static/small.bin", "QUERY_STRING": ""}
    with pytest.raises(RuntimeError, match="refused"):
        layer.app(plain, refusing)
    with pytest.raises(TypeError):
        layer.app(plain)
