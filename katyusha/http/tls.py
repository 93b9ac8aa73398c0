"""TLS contexts of a data port (``tls-cert``/``tls-key``) and of its ``https://`` pods.

Both are built from the settings at start, so a missing, unreadable or
mismatched file stops the process with a ConfigError naming the setting,
instead of failing on the first connection.
"""

from __future__ import annotations

import functools
import ssl

from katyusha.core.errors import ConfigError


def server_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The data port's TLS context (HTTP/1.1 by ALPN), or None when neither file is set.

    Raises ConfigError naming ``tls-cert`` or ``tls-key`` when only one is set,
    a file cannot be read, or the key does not match the certificate.
    """
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "tls-cert" if cert is None else "tls-key"
        raise ConfigError(missing, "tls-cert and tls-key must be set together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError("tls-cert" if exc.filename == cert else "tls-key",
                          f"cannot read {exc.filename}: {exc.strerror}") from None
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "MISMATCH" in reason.upper():
            raise ConfigError("tls-key", f"{key} is not the private key of {cert} ({reason})") from None
        raise ConfigError("tls-cert", f"cannot load {cert} with {key}: {reason}") from None
    except OSError as exc:
        raise ConfigError("tls-cert", f"cannot load {cert} with {key}: {exc}") from None
    return context


def upstream_context(ca: str | None, verify: bool) -> ssl.SSLContext:
    """The context for ``https://`` pods: the system's CAs (or ``ca``), verified unless ``verify`` is False.

    Raises ConfigError naming ``upstream-ca`` when that file holds no usable CA.
    """
    context = ssl.create_default_context()
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError("upstream-ca", f"cannot load CA certificates from {ca}: {exc}") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def check(fields) -> None:
    """Build both contexts once from ``fields`` (an EdgeFields) to report bad files at start."""
    server_context(fields.tls_cert, fields.tls_key)
    upstream_context(fields.upstream_ca, fields.upstream_tls_verify)


@functools.cache
def tls_protocol():
    """uvloop's TLS protocol (compiled) when uvloop is there, else asyncio's."""
    try:
        from uvloop.loop import SSLProtocol
    except ImportError:  # pragma: no cover - uvloop ships with the project on Linux
        from asyncio.sslproto import SSLProtocol
    return SSLProtocol
