"""TLS settings: the server's SSLContext, built and checked the same way in master and workers.

Stdlib only. The master calls ``check`` before it binds and again on HUP (a missing file, a key
that does not match, a wrong password or an expired certificate is one line naming the file, and
exit 2 at start or a reload that leaves the running generation serving); each worker builds its
own context with ``server_context`` after the fork.
"""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass
from typing import Any

PASSWORD_ENV = "GREENSERVE_KEYFILE_PASSWORD"
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class TlsError(ValueError):
    """A TLS setting that cannot be used; the message is the one line shown to the user."""


@dataclass(frozen=True)
class Certificate:
    """What the master exports about the served certificate."""

    not_after: float  # Unix time
    serial: str
    subject: str


def server_context(settings: Any, password: str | None = None) -> ssl.SSLContext:
    """The SSLContext for ``settings`` (certfile set); raises TlsError naming the culprit."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[settings.tls_min_version]
    if password is None:
        password = os.environ.get(PASSWORD_ENV)
    _check_pem_files(settings)
    try:
        context.load_cert_chain(settings.certfile, settings.keyfile or None, password=password)
    except ssl.SSLError as exc:  # an OSError too: first
        raise TlsError(_key_problem(settings, exc)) from None
    except OSError as exc:  # the files changed since they were read: say what is wrong now
        raise TlsError(f"cannot read {exc.filename or settings.certfile}: {_reason(exc)}") from None
    if settings.tls_ciphers:
        try:
            context.set_ciphers(settings.tls_ciphers)
        except ssl.SSLError:
            raise TlsError(f"tls_ciphers {settings.tls_ciphers!r} selects no cipher") from None
    context.verify_mode = VERIFY[settings.verify_client]
    if settings.ca_certs:
        try:
            context.load_verify_locations(cafile=settings.ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"cannot load ca_certs {settings.ca_certs}: {_reason(exc)}") from None
    elif settings.verify_client != "none":
        raise TlsError("verify_client needs ca_certs: the CAs that sign client certificates")
    if settings.protocol != "tcp":
        # --http-protocols in order: OpenSSL's server picks its first that the client offers
        names = {"h2": "h2", "h1": "http/1.1"}
        context.set_alpn_protocols([names[name] for name in settings.http_protocols])
    # Session tickets let a returning client skip the full handshake; no renegotiation.
    context.options |= ssl.OP_NO_RENEGOTIATION
    return context


def check(settings: Any) -> Certificate | None:
    """Validate the TLS settings as the master sees them; None when TLS is off."""
    if not settings.certfile:
        if settings.keyfile or settings.ca_certs or settings.verify_client != "none":
            raise TlsError("keyfile, ca_certs and verify_client need certfile")
        return None
    password = os.environ.get(PASSWORD_ENV)
    server_context(settings, password)
    certificate = read_certificate(settings.certfile)
    if certificate is not None and certificate.not_after < time.time():
        raise TlsError(f"certificate {settings.certfile} expired at {_date(certificate.not_after)}")
    return certificate


def announce_certificate(log: Any, certificate: Certificate | None) -> float | None:
    """Log the served certificate at start and reload; its expiry, for the master's gauge."""
    if certificate is None:
        return None
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(certificate.not_after))
    log.info(
        "tls_certificate", subject=certificate.subject, serial=certificate.serial, expires=expires
    )
    return certificate.not_after


def read_certificate(path: str) -> Certificate | None:
    """The first certificate of a PEM file, decoded by the ssl module's own parser."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)  # private, may go
    if decode is None:  # pragma: no cover - an interpreter without it: no expiry checks
        return None
    try:
        info = decode(path)
    except (OSError, ssl.SSLError):
        return None
    subject = ", ".join("=".join(pair) for rdn in info.get("subject", ()) for pair in rdn)
    return Certificate(
        not_after=ssl.cert_time_to_seconds(info["notAfter"]),
        serial=info.get("serialNumber", ""),
        subject=subject,
    )


_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "domainComponent": "DC",
    "userId": "UID",
}


def subject_of(peercert: dict[str, Any]) -> str:
    """A verified client certificate's subject as RFC 4514 writes it (nginx's $ssl_client_s_dn):
    ``CN=client,OU=unit,O=org``, most specific first, commas in values escaped."""
    parts = []
    for rdn in reversed(peercert.get("subject", ())):
        for key, value in rdn:
            escaped = value.replace("\\", "\\\\").replace(",", "\\,").replace("+", "\\+")
            parts.append(f"{_SHORT_NAMES.get(key, key)}={escaped}")
    return ",".join(parts)


def _read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise TlsError(f"cannot read {what} {path}: no such file") from None
    except PermissionError:
        raise TlsError(f"cannot read {what} {path}: permission denied") from None
    except OSError as exc:
        raise TlsError(f"cannot read {what} {path}: {_reason(exc)}") from None


def _check_pem_files(settings: Any) -> None:
    """Each file exists and holds what it is for, so the error names the file and the problem
    (OpenSSL says "[SSL] PEM lib" for all of these)."""
    cert = _read_pem(settings.certfile, "certfile")
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise TlsError(f"certfile {settings.certfile} holds no PEM certificate")
    if settings.keyfile:
        if b"PRIVATE KEY-----" not in _read_pem(settings.keyfile, "keyfile"):
            raise TlsError(f"keyfile {settings.keyfile} holds no PEM private key")
    elif b"PRIVATE KEY-----" not in cert:
        raise TlsError(
            f"certfile {settings.certfile} holds no private key: set keyfile to the key's file"
        )


def _key_problem(settings: Any, exc: ssl.SSLError) -> str:
    reason = (exc.reason or str(exc)).lower()
    if "bad decrypt" in reason or "password" in reason or "bad_decrypt" in reason:
        return f"cannot decrypt keyfile {settings.keyfile or settings.certfile}: wrong password"
    if "key values mismatch" in reason or "key_values_mismatch" in reason:
        return (
            f"keyfile {settings.keyfile or settings.certfile} does not match "
            f"certfile {settings.certfile}"
        )
    if settings.keyfile:
        return (
            f"keyfile {settings.keyfile} is not a private key OpenSSL can read for certfile "
            f"{settings.certfile} ({_reason(exc)})"
        )
    return f"cannot load certfile {settings.certfile}: {_reason(exc)}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    if isinstance(exc, ssl.SSLError):  # "[SSL] PEM lib (_ssl.c:3926)": no reason, a C line
        return str(exc).split("] ", 1)[-1].split(" (_ssl.c", 1)[0].lower()
    return getattr(exc, "strerror", None) or str(exc)


def _date(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
