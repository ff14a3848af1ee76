"""Trusted networks, forwarded headers and PROXY protocol headers, parsed without sockets."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from greenserve.proxy import (
    V2_SIGNATURE,
    ProxyError,
    apply_forwarded,
    header_length,
    parse_header,
    parse_trusted,
)
from tests.helpers import ipv4_block, v2


class TestTrusted:
    """Addresses, CIDRs, IPv6, IPv4-mapped peers and the * wildcard."""

    def test_membership(self):
        trusted = parse_trusted("127.0.0.1, 10.0.0.0/8, ::1")
        assert "127.0.0.1" in trusted and "10.1.2.3" in trusted and "::1" in trusted
        assert "::ffff:10.9.9.9" in trusted  # a v4 peer on a dual-stack socket
        assert "192.0.2.1" not in trusted and "" not in trusted and "junk" not in trusted
        assert "203.0.113.9" in parse_trusted("*")

    def test_answers_are_remembered_per_peer_and_bounded(self):
        from greenserve import proxy

        trusted = parse_trusted("10.0.0.0/8")
        for round_ in range(2):  # the second round is answered from what was remembered
            for i in range(proxy._ANSWERS_MAX + 10):  # more peers than it keeps
                host = f"10.{i >> 8 & 255}.{i & 255}.1" if i % 2 else f"192.0.{i & 255}.{i >> 8}"
                assert (host in trusted) is bool(i % 2), (round_, host)
                assert len(trusted._answers) <= proxy._ANSWERS_MAX
        assert "junk" not in trusted and "junk" not in trusted  # remembered as no

    def test_invalid(self):
        with pytest.raises(ValueError, match="not an address"):
            parse_trusted("10.0.0.0/33")


class TestForwarded:
    """X-Forwarded-* and RFC 7239 from a trusted proxy."""

    trusted = parse_trusted("127.0.0.1,10.0.0.0/8")

    def environ(self, **headers: str) -> dict:
        base = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "5000", "wsgi.url_scheme": "http"}
        return {**base, **{f"HTTP_{k.upper()}": v for k, v in headers.items()}}

    def test_x_forwarded_for_walks_from_the_right(self):
        environ = self.environ(x_forwarded_for="6.6.6.6, 198.51.100.7, 10.0.0.2")
        apply_forwarded(environ, self.trusted)
        # 10.0.0.2 is one of ours; 198.51.100.7 is the first untrusted hop: the client.
        # 6.6.6.6 was written by that client and is not believed.
        assert environ["REMOTE_ADDR"] == "198.51.100.7"

    def test_proto_and_host(self):
        environ = self.environ(x_forwarded_proto="https", x_forwarded_host="shop.example")
        apply_forwarded(environ, self.trusted)
        assert environ["wsgi.url_scheme"] == "https" and environ["HTTP_HOST"] == "shop.example"

    def test_rfc7239(self):
        environ = self.environ(
            forwarded='for=198.51.100.7;proto=https, for="[2001:db8::1]:4711";host=a.example'
        )
        apply_forwarded(environ, self.trusted)
        assert environ["REMOTE_ADDR"] == "2001:db8::1"
        assert environ["HTTP_HOST"] == "a.example"

    def test_ports_are_dropped(self):
        environ = self.environ(x_forwarded_for="198.51.100.7:5555")
        apply_forwarded(environ, self.trusted)
        assert environ["REMOTE_ADDR"] == "198.51.100.7"

    def test_changes_are_remembered_per_set_of_values_and_bounded(self):
        """The second request with the same headers gets what the first got (from what was
        remembered), a header with another value its own answer, a long one is not kept, and
        the memory of answers starts again past its bound."""
        import itertools

        from greenserve import proxy

        trusted = parse_trusted("127.0.0.1,10.0.0.0/8")
        values = {
            "forwarded": [None, "", "for=198.51.100.7;proto=https;host=a.example", "for=10.0.0.9"],
            "x_forwarded_for": [None, "6.6.6.6, 198.51.100.7", "10.0.0.2", "[2001:db8::1]:80"],
            "x_forwarded_proto": [None, "https", "HTTP, ftp", "https, http"],
            "x_forwarded_host": [None, "", "shop.example", "a, b.example "],
        }
        for combination in itertools.product(*values.values()):
            headers = {k: v for k, v in zip(values, combination, strict=True) if v is not None}
            fresh, first, second = (self.environ(**headers) for _ in range(3))
            apply_forwarded(fresh, parse_trusted("127.0.0.1,10.0.0.0/8"))  # nothing remembered
            apply_forwarded(first, trusted)  # with every combination before it remembered
            apply_forwarded(second, trusted)
            assert fresh == first == second, headers
        long = self.environ(x_forwarded_for="198.51.100.7, " + "10.0.0.1, " * 40)
        apply_forwarded(long, trusted)
        assert long["REMOTE_ADDR"] == "198.51.100.7"
        assert all(len(str(key)) < 300 for key in trusted.applied)  # not kept
        for i in range(proxy._APPLIED_MAX + 10):
            apply_forwarded(self.environ(x_forwarded_for=f"198.51.{i >> 8}.{i & 255}"), trusted)
            assert len(trusted.applied) <= proxy._APPLIED_MAX


class TestProxyProtocol:
    """v1 and v2, every address family, TLVs skipped, LOCAL, malformed headers."""

    def test_v1(self):
        line = b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 8000\r\n"
        assert header_length(line + b"GET / HTTP/1.1\r\n") == len(line)
        assert parse_header(line) == ("198.51.100.7", 5555)
        v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n"
        assert parse_header(v6) == ("2001:db8::1", 1)
        assert parse_header(b"PROXY UNKNOWN\r\n") is None

    def test_v1_incomplete_and_malformed(self):
        assert header_length(b"PROXY TCP4 1.2") is None
        assert header_length(b"PRO") is None
        for bad in (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
            b"PROXY TCP4 ::1 ::2 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 a b c d\r\n",
        ):
            with pytest.raises(ProxyError):
                parse_header(bad)
        with pytest.raises(ProxyError):
            header_length(b"PROXY " + b"x" * 200)
        with pytest.raises(ProxyError):
            header_length(b"GET / HTTP/1.1\r\n")

    def test_v2_families_and_tlvs(self):
        body = ipv4_block("198.51.100.7", "10.0.0.1", 5555, 8000)
        tlvs = b"\x01\x00\x02h2" + b"\x04\x00\x00"  # ALPN and NOOP TLVs: skipped
        header = v2(1, 0x11, body, tlvs)
        assert header_length(header + b"rest") == len(header)
        assert parse_header(header) == ("198.51.100.7", 5555)
        six = (
            ipaddress.IPv6Address("2001:db8::7").packed
            + ipaddress.IPv6Address("2001:db8::1").packed
            + struct.pack("!HH", 4711, 443)
        )
        assert parse_header(v2(1, 0x21, six)) == ("2001:db8::7", 4711)
        assert parse_header(v2(0, 0x00, b"")) is None  # LOCAL: a health check
        assert parse_header(v2(1, 0x31, b"\x00" * 216)) is None  # unix: no address
        assert header_length(V2_SIGNATURE[:7]) is None
        assert header_length(V2_SIGNATURE + b"\x21\x11\x00") is None

    def test_v2_malformed(self):
        with pytest.raises(ProxyError):
            parse_header(v2(1, 0x11, b"\x00" * 5))  # short address block
        with pytest.raises(ProxyError):
            parse_header(V2_SIGNATURE + b"\x32\x11\x00\x0c" + b"\x00" * 12)  # version 3
        with pytest.raises(ProxyError):
            parse_header(v2(1, 0x55, b"\x00" * 12))  # unknown family
        with pytest.raises(ProxyError):
            header_length(V2_SIGNATURE[:5] + b"X" * 11)
