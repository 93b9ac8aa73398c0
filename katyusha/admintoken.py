"""Admin tokens, shared by katyusha, nonna, sim-backend and the control plane.

Every process has the settings ``admin-token`` (the token itself) and
``admin-token-file`` (a file holding it; surrounding whitespace is ignored),
and ``admin-allow-open``. When a token is set, every *mutating* admin request
(PUT, POST, DELETE, PATCH) must carry ``Authorization: Bearer <token>``, else
it is answered 401 with a JSON body naming what is missing; reads (GET,
HEAD, OPTIONS) stay open, so probes and dashboards need nothing. Tokens are
compared in constant time.

An admin port bound to an address other than loopback with no token would let
anyone who can reach it redirect traffic or stop pods, so a process refuses to
start that way unless ``admin-allow-open: true`` says it is meant
(:func:`check_exposure`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json

from katyusha.core.errors import ConfigError

MUTATING = frozenset({"PUT", "POST", "DELETE", "PATCH"})
_AUTHORIZATION = b"authorization"
_BEARER = b"bearer "


def resolve_token(token: object, token_file: object, *, token_key: str = "admin-token",
                  file_key: str = "admin-token-file") -> str | None:
    """The token in force: ``token``, else the contents of ``token_file``, else None.

    Raises ConfigError naming ``file_key`` when the file cannot be read or is
    empty, ``token_key`` for an empty or multi-line token, and both when both
    are given.
    """
    if token is not None and not isinstance(token, str):
        raise ConfigError(token_key, f"must be a string, got {type(token).__name__}")
    if token_file is not None and not isinstance(token_file, str):
        raise ConfigError(file_key, f"must be a file path, got {type(token_file).__name__}")
    token = token.strip() if token else None
    token_file = token_file.strip() if token_file else None
    if token and token_file:
        raise ConfigError(token_key, f"give {token_key} or {file_key}, not both")
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise ConfigError(file_key, f"cannot read {token_file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(file_key, f"{token_file} is not UTF-8 text") from None
        if not token:
            raise ConfigError(file_key, f"{token_file} is empty")
    if token is None:
        return None
    if any(c.isspace() for c in token) or not token.isprintable():
        raise ConfigError(token_key, "must be one word of printable characters (no spaces or line breaks)")
    return token


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything else."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name that may resolve anywhere


def check_exposure(host: str, token: str | None, allow_open: bool, *, host_key: str = "host",
                   token_key: str = "admin-token", file_key: str = "admin-token-file",
                   allow_key: str = "admin-allow-open") -> None:
    """Refuse an admin port reachable beyond loopback with no token. Raises ConfigError naming how to allow it."""
    if token or allow_open or is_loopback(host):
        return
    raise ConfigError(token_key, f"the admin port listens on {host} ({host_key}), which other hosts can "
                      f"reach, and no admin token is set: set {token_key} or {file_key} (mutating admin "
                      f"requests then need 'Authorization: Bearer <token>'), or set {allow_key}: true "
                      f"to serve it open on purpose")


def authorized(headers, token: str) -> str | None:
    """None when ``headers`` carry ``Authorization: Bearer <token>``; else why not (for the 401 body)."""
    for name, value in headers:
        if name == _AUTHORIZATION:
            if value[:7].lower() != _BEARER:
                return "the Authorization header is not 'Bearer <token>'"
            if hmac.compare_digest(value[7:].strip(), token.encode()):
                return None
            return "the admin token does not match"
    return "missing 'Authorization: Bearer <token>' (this process has an admin token)"


class AdminGuard:
    """ASGI middleware: mutating requests to ``app`` need the bearer ``token`` (None: all pass)."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token

    def __getattr__(self, name):
        # The wrapped app's attributes stay reachable (registry, membership...).
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send) -> None:
        token = self.token
        if token is not None and scope["type"] == "http" and scope["method"] in MUTATING:
            why = authorized(scope["headers"], token)
            if why is not None:
                body = json.dumps({"error": f"unauthorized: {why}", "status": 401}).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="admin"')]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def bearer(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header for ``token`` as a mapping (empty without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
