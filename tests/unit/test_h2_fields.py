"""An HTTP/2 request's fields turned into a Head: the Host rules of RFC 9113 8.3.1."""

from __future__ import annotations

from greenserve.worker.protocols.h2_fields import request_head

PSEUDO = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/a?b=1")]


def test_authority_stands_in_for_a_missing_host() -> None:
    head = request_head([*PSEUDO, (b":authority", b"example.com"), (b"accept", b"*/*")])
    assert ("HTTP_HOST", b"example.com") in head.headers
    assert (head.path, head.query) == (b"/a", b"b=1")


def test_a_host_field_is_kept_and_not_doubled() -> None:
    head = request_head([*PSEUDO, (b":authority", b"a.example"), (b"host", b"b.example")])
    assert [value for key, value in head.headers if key == "HTTP_HOST"] == [b"b.example"]


def test_no_authority_no_host() -> None:
    head = request_head(PSEUDO)
    assert not [key for key, _ in head.headers if key == "HTTP_HOST"]
