"""Raw HTTP requests and what greenserve must make of them.

VALID: (name, request bytes, expected environ subset as the ``environ_echo`` app reports it).
MALFORMED: (name, request bytes, expected status). Every malformed request must get exactly that
status and then a closed connection.
"""

from __future__ import annotations

CRLF = b"\r\n"


def req(line: str, *headers: str, body: bytes = b"") -> bytes:
    head = [line.encode("latin-1"), *(h.encode("latin-1") for h in headers)]
    return CRLF.join(head) + CRLF + CRLF + body


def chunked(*parts: bytes, trailer: bytes = b"") -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return out + b"0\r\n" + trailer + CRLF


VALID: list[tuple[str, bytes, dict]] = [
    ("simple get", req("GET / HTTP/1.1", "Host: a"), {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}),
    (
        "query string kept raw",
        req("GET /p?a=1&b=%20x HTTP/1.1", "Host: a"),
        {"PATH_INFO": "/p", "QUERY_STRING": "a=1&b=%20x"},
    ),
    ("percent space", req("GET /a%20b HTTP/1.1", "Host: a"), {"PATH_INFO": "/a b"}),
    (
        "percent utf-8 decoded as latin-1",
        req("GET /caf%C3%A9 HTTP/1.1", "Host: a"),
        {"PATH_INFO": "/caf\u00c3\u00a9"},
    ),
    ("encoded slash", req("GET /a%2Fb HTTP/1.1", "Host: a"), {"PATH_INFO": "/a/b"}),
    ("double slashes kept", req("GET //a//b HTTP/1.1", "Host: a"), {"PATH_INFO": "//a//b"}),
    ("path params", req("GET /a;v=1/b HTTP/1.1", "Host: a"), {"PATH_INFO": "/a;v=1/b"}),
    (
        "absolute form",
        req("GET http://example.com/p?q=1 HTTP/1.1", "Host: example.com"),
        {"PATH_INFO": "/p", "QUERY_STRING": "q=1"},
    ),
    ("options asterisk", req("OPTIONS * HTTP/1.1", "Host: a"), {"REQUEST_METHOD": "OPTIONS"}),
    ("http/1.0", req("GET / HTTP/1.0"), {"SERVER_PROTOCOL": "HTTP/1.0"}),
    (
        "http/1.0 keep-alive",
        req("GET / HTTP/1.0", "Connection: keep-alive"),
        {"HTTP_CONNECTION": "keep-alive", "SERVER_PROTOCOL": "HTTP/1.0"},
    ),
    (
        "http/1.0 keep-alive through proxy-connection",
        req("GET / HTTP/1.0", "Proxy-Connection: keep-alive"),
        {"SERVER_PROTOCOL": "HTTP/1.0"},
    ),
    (
        "http/1.1 keep-alive asked",
        req("GET / HTTP/1.1", "Host: a", "Connection: keep-alive"),
        {"SERVER_PROTOCOL": "HTTP/1.1"},
    ),
    (
        "host header",
        req("GET / HTTP/1.1", "Host: example.org:8080"),
        {"HTTP_HOST": "example.org:8080"},
    ),
    (
        "repeated header joined",
        req("GET / HTTP/1.1", "Host: a", "Accept: text/html", "Accept: text/plain"),
        {"HTTP_ACCEPT": "text/html,text/plain"},
    ),
    (
        "content type and length unprefixed",
        req(
            "POST /f HTTP/1.1",
            "Host: a",
            "Content-Type: text/plain",
            "Content-Length: 5",
            body=b"hello",
        ),
        {"CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": "5", "body": "hello"},
    ),
    (
        "underscore header dropped",
        req("GET / HTTP/1.1", "Host: a", "X_Forwarded_For: evil", "X-Real: ok"),
        {"HTTP_X_REAL": "ok", "HTTP_X_FORWARDED_FOR": None},
    ),
    (
        "obs-text value",
        req("GET / HTTP/1.1", "Host: a", "X-Name: caf\u00e9"),
        {"HTTP_X_NAME": "caf\u00e9"},
    ),
    ("empty value", req("GET / HTTP/1.1", "Host: a", "X-Empty:"), {"HTTP_X_EMPTY": ""}),
    ("value trimmed", req("GET / HTTP/1.1", "Host: a", "X-Pad:   v  "), {"HTTP_X_PAD": "v"}),
    ("tab in value", req("GET / HTTP/1.1", "Host: a", "X-Tab: a\tb"), {"HTTP_X_TAB": "a\tb"}),
    ("lowercase names", req("GET / HTTP/1.1", "host: a", "x-low: 1"), {"HTTP_X_LOW": "1"}),
    (
        "long url under the limit",
        req("GET /" + "u" * 8000 + " HTTP/1.1", "Host: a"),
        {"PATH_INFO": "/" + "u" * 8000},
    ),
    (
        "100 headers",
        req("GET / HTTP/1.1", "Host: a", *(f"X-H{n}: {n}" for n in range(99))),
        {"HTTP_X_H98": "98"},
    ),
    (
        "large header value",
        req("GET / HTTP/1.1", "Host: a", "X-Big: " + "b" * 8000),
        {"HTTP_X_BIG": "b" * 8000},
    ),
    ("head", req("HEAD / HTTP/1.1", "Host: a"), {"REQUEST_METHOD": "HEAD"}),
    (
        "post with body",
        req("POST /s HTTP/1.1", "Host: a", "Content-Length: 11", body=b"hello world"),
        {"REQUEST_METHOD": "POST", "body": "hello world"},
    ),
    (
        "body with crlf",
        req("POST / HTTP/1.1", "Host: a", "Content-Length: 8", body=b"a\r\nb\r\n\r\n"),
        {"body": "a\r\nb\r\n\r\n"},
    ),
    (
        "zero length body",
        req("POST / HTTP/1.1", "Host: a", "Content-Length: 0"),
        {"CONTENT_LENGTH": "0", "body": ""},
    ),
    (
        "chunked body",
        req(
            "POST / HTTP/1.1",
            "Host: a",
            "Transfer-Encoding: chunked",
            body=chunked(b"hello", b" world"),
        ),
        {"body": "hello world"},
    ),
    (
        "chunked many chunks",
        req("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", body=chunked(*[b"x"] * 50)),
        {"body": "x" * 50},
    ),
    (
        "chunk extensions",
        req(
            "POST / HTTP/1.1",
            "Host: a",
            "Transfer-Encoding: chunked",
            body=b"5;ext=1\r\nhello\r\n0\r\n\r\n",
        ),
        {"body": "hello"},
    ),
    (
        "chunked trailer",
        req(
            "POST / HTTP/1.1",
            "Host: a",
            "Transfer-Encoding: chunked",
            body=chunked(b"abc", trailer=b"X-Sum: 1\r\n"),
        ),
        {"body": "abc"},
    ),
    (
        "chunked case-insensitive",
        req("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: Chunked", body=chunked(b"ok")),
        {"body": "ok"},
    ),
    (
        "expect 100-continue",
        req("POST / HTTP/1.1", "Host: a", "Expect: 100-continue", "Content-Length: 3", body=b"abc"),
        {"body": "abc"},
    ),
    (
        "put",
        req("PUT /r HTTP/1.1", "Host: a", "Content-Length: 1", body=b"1"),
        {"REQUEST_METHOD": "PUT"},
    ),
    ("delete", req("DELETE /r HTTP/1.1", "Host: a"), {"REQUEST_METHOD": "DELETE"}),
    (
        "patch",
        req("PATCH /r HTTP/1.1", "Host: a", "Content-Length: 0"),
        {"REQUEST_METHOD": "PATCH"},
    ),
    ("propfind", req("PROPFIND /dav HTTP/1.1", "Host: a"), {"REQUEST_METHOD": "PROPFIND"}),
    (
        "authorization",
        req("GET / HTTP/1.1", "Host: a", "Authorization: Basic dTpw"),
        {"HTTP_AUTHORIZATION": "Basic dTpw"},
    ),
    (
        "connection close",
        req("GET / HTTP/1.1", "Host: a", "Connection: close"),
        {"HTTP_CONNECTION": "close"},
    ),
    ("script name empty", req("GET /x HTTP/1.1", "Host: a"), {"SCRIPT_NAME": ""}),
]

MALFORMED: list[tuple[str, bytes, int]] = [
    (
        "content-length with transfer-encoding",
        req(
            "POST / HTTP/1.1",
            "Host: a",
            "Content-Length: 5",
            "Transfer-Encoding: chunked",
            body=chunked(b"x"),
        ),
        400,
    ),
    (
        "conflicting content-lengths",
        req("POST / HTTP/1.1", "Content-Length: 5", "Content-Length: 6"),
        400,
    ),
    (
        "repeated content-length",
        req("POST / HTTP/1.1", "Content-Length: 1", "Content-Length: 1"),
        400,
    ),
    ("negative content-length", req("POST / HTTP/1.1", "Content-Length: -1"), 400),
    ("non-numeric content-length", req("POST / HTTP/1.1", "Content-Length: ten"), 400),
    ("split content-length", req("POST / HTTP/1.1", "Content-Length: 1 0"), 400),
    ("gzip transfer coding", req("POST / HTTP/1.1", "Transfer-Encoding: gzip", body=b"x"), 501),
    (
        "gzip then chunked",
        req("POST / HTTP/1.1", "Transfer-Encoding: gzip, chunked", body=chunked(b"x")),
        501,
    ),
    ("chunked not last", req("POST / HTTP/1.1", "Transfer-Encoding: chunked, gzip"), 400),
    ("identity coding", req("POST / HTTP/1.1", "Transfer-Encoding: identity", body=b"x"), 501),
    (
        "bad chunk size",
        req("POST / HTTP/1.1", "Transfer-Encoding: chunked", body=b"zz\r\nhi\r\n0\r\n\r\n"),
        400,
    ),
    (
        "chunk size overflow",
        req("POST / HTTP/1.1", "Transfer-Encoding: chunked", body=b"fffffffffffffffffff\r\nx\r\n"),
        400,
    ),
    (
        "negative chunk size",
        req("POST / HTTP/1.1", "Transfer-Encoding: chunked", body=b"-5\r\nhello\r\n"),
        400,
    ),
    (
        "chunk without crlf",
        req("POST / HTTP/1.1", "Transfer-Encoding: chunked", body=b"5\r\nhelloXX0\r\n\r\n"),
        400,
    ),
    ("obs-fold", b"GET / HTTP/1.1\r\nX-A: a\r\n  folded\r\n\r\n", 400),
    ("space in header name", req("GET / HTTP/1.1", "Bad Name: a"), 400),
    ("space before colon", req("GET / HTTP/1.1", "Host : a"), 400),
    ("header without colon", req("GET / HTTP/1.1", "NoColonHere"), 400),
    ("invalid char in name", req("GET / HTTP/1.1", "X@Y: a"), 400),
    ("nul in header value", b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    ("nul in url", b"GET /a\x00b HTTP/1.1\r\n\r\n", 400),
    ("raw non-ascii in url", b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", 400),
    ("space in url", b"GET /a b HTTP/1.1\r\n\r\n", 400),
    ("tab separators", b"GET\t/\tHTTP/1.1\r\n\r\n", 400),
    ("version 1.2", req("GET / HTTP/1.2"), 505),
    ("version 2.0", req("GET / HTTP/2.0"), 505),
    ("version 3.0", req("GET / HTTP/3.0"), 505),
    # llhttp keeps these alive when asked: the version must still be checked, and first
    ("version 2.0 keep-alive", req("GET / HTTP/2.0", "Host: a", "Connection: keep-alive"), 505),
    (
        "version 2.0 keep-alive, repeated host",
        req("GET / HTTP/2.0", "Connection: keep-alive", "Host: a", "Host: b"),
        505,
    ),
    ("version 0.9 keep-alive", req("GET / HTTP/0.9", "Proxy-Connection: keep-alive"), 505),
    ("garbage version", req("GET / HTTP/1.1x"), 400),
    ("http/0.9 request line", b"GET /\r\n\r\n", 505),
    ("lowercase method", req("get / HTTP/1.1"), 400),
    ("unknown method", req("FOO / HTTP/1.1", "Host: a"), 501),
    ("brew method", req("BREW /pot HTTP/1.1"), 501),
    ("tls handshake", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),
    ("binary noise", bytes(range(256)), 400),
    ("request line too long", req("GET /" + "a" * 9000 + " HTTP/1.1"), 414),
    ("too many headers", req("GET / HTTP/1.1", *(f"X-H{n}: v" for n in range(101))), 431),
    ("header field too large", req("GET / HTTP/1.1", "X-Big: " + "b" * 9000), 431),
    (
        "header block too large",
        req("GET / HTTP/1.1", *(f"X-H{n}: " + "v" * 4000 for n in range(20))),
        431,
    ),
    ("declared body too large", req("POST / HTTP/1.1", "Content-Length: 999999999"), 413),
    (
        "chunked body too large",
        req("POST / HTTP/1.1", "Transfer-Encoding: chunked", body=chunked(*[b"z" * 65536] * 20)),
        413,
    ),
    ("cr without lf", b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
]


def _with_host(request: bytes) -> bytes:
    """Give an HTTP/1.1 request a Host unless it has one, so a case tests its own defect only
    (RFC 9112 3.2: a request without Host is a 400 of its own)."""
    line, sep, rest = request.partition(CRLF)
    if not sep or not line.endswith(b"HTTP/1.1") or b"\nhost:" in request.lower():
        return request
    return line + CRLF + b"Host: a" + CRLF + rest


MALFORMED = [(name, _with_host(data), status) for name, data, status in MALFORMED]

VALID += [
    (
        "host with port",
        req("GET / HTTP/1.1", "Host: a.example:8080"),
        {"HTTP_HOST": "a.example:8080"},
    ),
    ("host ipv6 literal", req("GET / HTTP/1.1", "Host: [::1]:8080"), {"HTTP_HOST": "[::1]:8080"}),
    ("empty host", req("GET / HTTP/1.1", "Host:"), {"HTTP_HOST": ""}),
    ("http/1.0 without host", req("GET / HTTP/1.0"), {"HTTP_HOST": None}),
    (
        "chunk extension with whitespace before ;",
        req(
            "POST / HTTP/1.1",
            "Host: a",
            "Transfer-Encoding: chunked",
            body=b"5 ;a=b\r\nhello\r\n0\r\n\r\n",
        ),
        {"body": "hello"},
    ),
    (
        "quoted chunk extension",
        req(
            "POST / HTTP/1.1",
            "Host: a",
            "Transfer-Encoding: chunked",
            body=b'5;a="b c"\r\nhello\r\n0\r\n\r\n',
        ),
        {"body": "hello"},
    ),
]

MALFORMED += [
    ("http/1.1 without host", req("GET / HTTP/1.1"), 400),
    ("two host headers", req("GET / HTTP/1.1", "Host: a", "Host: b"), 400),
    ("host with a space", req("GET / HTTP/1.1", "Host: a b"), 400),
    ("host with a slash", req("GET / HTTP/1.1", "Host: a/b"), 400),
    ("host with userinfo", req("GET / HTTP/1.1", "Host: u@a"), 400),
    ("asterisk form with GET", req("GET * HTTP/1.1", "Host: a"), 400),
    ("invalid absolute-form", req("PUT s://]ufd/: HTTP/1.1", "Host: a", "Content-Length: 0"), 400),
    ("authority form with GET", req("GET a.example:80 HTTP/1.1", "Host: a"), 400),
    ("absolute-form without host", req("GET http:/x HTTP/1.1", "Host: a"), 400),
    (
        "chunk extension space after ;",
        req(
            "POST / HTTP/1.1",
            "Host: a",
            "Transfer-Encoding: chunked",
            body=b"5; a=b\r\nhello\r\n0\r\n\r\n",
        ),
        400,
    ),
]


def chunked_with(size_line: bytes) -> bytes:
    """A chunked POST whose one 5-byte chunk has the given size line (without its CRLF)."""
    return req(
        "POST / HTTP/1.1",
        "Host: a",
        "Transfer-Encoding: chunked",
        body=size_line + b"\r\nhello\r\n0\r\n\r\n",
    )


# RFC 9112 7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ),
# the name a token, the value a token or a quoted-string. Each neighbour of the grammar is
# accepted or refused on purpose; llhttp refuses BWS after ";" and around "=" (see docs/http.md).
VALID += [
    ("chunk extension token value", chunked_with(b"5;name=token-1"), {"body": "hello"}),
    ("chunk extension without value", chunked_with(b"5;name"), {"body": "hello"}),
    ("chunk extensions several", chunked_with(b"5;a=1;b;c=x"), {"body": "hello"}),
    ("chunk extension empty quoted", chunked_with(b'5;a=""'), {"body": "hello"}),
    ("chunk extension quoted escape", chunked_with(b'5;a="x\\"y\\\\"'), {"body": "hello"}),
    ("chunk extension quoted ; and =", chunked_with(b'5;a="b;c=d"'), {"body": "hello"}),
    ("chunk size then whitespace", chunked_with(b"5 \t"), {"body": "hello"}),
    (
        "chunk extension on the last chunk",
        req(
            "POST / HTTP/1.1",
            "Host: a",
            "Transfer-Encoding: chunked",
            body=b"5\r\nhello\r\n0;last=1\r\n\r\n",
        ),
        {"body": "hello"},
    ),
]

MALFORMED += [
    ("fragment in the path", req("GET /frag#x HTTP/1.1", "Host: a"), 400),
    ("fragment after a query", req("GET /p?q=1#x HTTP/1.1", "Host: a"), 400),
    ("empty fragment", req("GET /p# HTTP/1.1", "Host: a"), 400),
    ("fragment in absolute-form", req("GET http://a/p#x HTTP/1.1", "Host: a"), 400),
    (
        "chunk extension empty value",  # the case gunicorn's test material sends
        req(
            "POST / HTTP/1.1",
            "Host: a",
            "Transfer-Encoding: chunked",
            body=b"20;invalid=\r\n" + b"x" * 32 + b"\r\n0\r\n\r\n",
        ),
        400,
    ),
    ("chunk extension empty value then another", chunked_with(b"5;a=;b"), 400),
    ("chunk extension empty name", chunked_with(b"5;=v"), 400),
    ("chunk extension name not a token", chunked_with(b"5;@=v"), 400),
    ("chunk extension value not a token", chunked_with(b"5;a=@"), 400),
    ("chunk extension space around =", chunked_with(b"5;a =v"), 400),
    ("chunk extension space after value", chunked_with(b"5;a=v "), 400),
    ("chunk extension double ;", chunked_with(b"5;;a"), 400),
    ("chunk extension unterminated quote", chunked_with(b'5;a="x'), 400),
    ("chunk extension control in quote", chunked_with(b'5;a="\x01"'), 400),
    (
        "chunk extension empty value on the last chunk",
        req(
            "POST / HTTP/1.1",
            "Host: a",
            "Transfer-Encoding: chunked",
            body=b"5\r\nhello\r\n0;last=\r\n\r\n",
        ),
        400,
    ),
    ("chunk size line too long", chunked_with(b"5;a=" + b"v" * 9000), 400),
]
