"""Forwarding headers and whom to believe, sans-IO: what a request carries to the pod about its client.

A client may send any ``X-Forwarded-*``, ``Forwarded`` or ``X-Real-IP`` it
likes; an app that reads the first ``X-Forwarded-For`` would then log, rate
limit or authorise by an address the client chose. So the chain a client
sends is kept only when the client is a proxy katyusha trusts
(``trusted-proxies``, a list of CIDR blocks): then katyusha appends the
client's address to it, as one header (RFC 7239 style: ``X-Forwarded-For:
client, proxy1, peer``). From any other client those headers are dropped and
katyusha's own replace them. ``X-Forwarded-Proto`` and ``X-Forwarded-Host``
are kept from a trusted client (the scheme and host it saw), else set to the
scheme katyusha was reached by (``https`` under TLS) and the ``Host`` header.
``Forwarded`` gets one more element (``for=...;proto=...;host=...``).
``X-Real-IP`` from an untrusted client is dropped (katyusha sets none).
``Host`` is passed on unchanged; ``Via: 1.1 katyusha`` is appended.

``Nonna-*`` request headers are always dropped: they are the protocol between
nonna and katyusha, and an app that echoes request headers must not be able
to make a client's header look like nonna's report.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from katyusha.core.errors import ConfigError

Headers = list[tuple[bytes, bytes]]

_XFF = b"x-forwarded-for"
_XFP = b"x-forwarded-proto"
_XFH = b"x-forwarded-host"
_FORWARDED = b"forwarded"
_REAL_IP = b"x-real-ip"
_VIA = b"via"
_HOST = b"host"
_NONNA = b"nonna-"
# The headers this module rewrites; a request with none of them is the common case.
_REWRITTEN = frozenset({_XFF, _XFP, _XFH, _FORWARDED, _REAL_IP, _VIA})
# Public, for a driver's own pass (Forwarding.added_lines): the lower-case names rewrite
# takes apart, and the prefix of the request headers it always drops.
REWRITTEN = _REWRITTEN
DROPPED_PREFIX = _NONNA

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_trusted_proxies(key: str, raw: object) -> tuple[Network, ...]:
    """A list of CIDR blocks (or addresses) from YAML, or one string of them separated by commas or
    spaces. Raises ConfigError naming ``key`` and the bad entry."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        items: Iterable[object] = raw.replace(",", " ").split()
    elif isinstance(raw, list | tuple):
        items = raw
    else:
        raise ConfigError(key, f"must be a list of CIDR blocks (e.g. [10.0.0.0/8, 127.0.0.1]), got {raw!r}")
    out = []
    for index, item in enumerate(items):
        try:
            out.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{key}[{index}]", f"not an IP address or CIDR block: {item!r}") from None
    return tuple(out)


class Forwarding:
    """Rewrites one request's headers for the pod; ``trusted`` are the proxies whose chains are kept."""

    def __init__(self, trusted: Sequence[Network] = (), via: bytes = b"1.1 katyusha"):
        self.trusted = tuple(trusted)
        self.via = via
        self._verdicts: dict[str, bool] = {}
        # (client, scheme, host) -> the headers rewrite adds for a request that brought none.
        self._tails: dict[tuple, tuple] = {}
        # The same, as header lines (added_lines).
        self._tail_lines: dict[tuple, tuple[bytes, int]] = {}

    def trusts(self, address: str | None) -> bool:
        """True when ``address`` (the peer of the connection) is inside ``trusted``."""
        if not address or not self.trusted:
            return False
        verdict = self._verdicts.get(address)
        if verdict is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                verdict = False
            else:
                verdict = any(ip in network for network in self.trusted)
            if len(self._verdicts) > 4096:
                self._verdicts.clear()
            self._verdicts[address] = verdict
        return verdict

    def rewrite(self, headers: Iterable[tuple[bytes, bytes]], client: str | None, scheme: str) -> Headers:
        """The request's headers as the pod should get them (see the module docstring); a new list.

        ``headers`` are (lower-case name, value) pairs; ``client`` is the peer
        address (None when unknown); ``scheme`` is ``http`` or ``https``.
        """
        out: Headers = []
        xff: list[bytes] = []
        forwarded: list[bytes] = []
        via: list[bytes] = []
        proto = host_seen = None
        host = None
        trusted = None  # asked only of a request that brings a forwarding header
        for item in headers:
            name = item[0]
            if name in _REWRITTEN:
                if trusted is None:
                    trusted = self.trusts(client)
                if name == _VIA:
                    via.append(item[1])
                elif not trusted:
                    continue
                elif name == _XFF:
                    xff.append(item[1])
                elif name == _FORWARDED:
                    forwarded.append(item[1])
                elif name == _XFP:
                    proto = proto or item[1]
                elif name == _XFH:
                    host_seen = host_seen or item[1]
                else:  # x-real-ip from a proxy we trust
                    out.append(item)
                continue
            if name.startswith(_NONNA):
                continue
            if name == _HOST:
                host = item[1]
            out.append(item)
        if not xff and not forwarded and not via and proto is None and host_seen is None:
            # The common case (no forwarding headers of its own): the headers this adds
            # depend on the client, the scheme and the host alone, so they are kept.
            out += self._tail((client, scheme, host))
            return out
        out += self._added(xff, forwarded, via, proto, host_seen, host, client, scheme)
        return out

    def added_lines(self, client: str | None, scheme: str, host: bytes | None) -> tuple[bytes, int]:
        """What :meth:`rewrite` appends to a request that brings none of the forwarding headers
        (``X-Forwarded-*``, ``Forwarded``, ``X-Real-IP``, ``Via``), whose last ``Host`` is ``host``:
        as header lines (``name: value\r\n`` each), with their count.

        For a driver that writes the pod's head in one pass over the client's headers (the
        other headers go through unchanged, but ``Nonna-*`` ones, as :meth:`rewrite` says).
        """
        key = (client, scheme, host)
        found = self._tail_lines.get(key)
        if found is None:
            tail = self._tail(key)
            if len(self._tail_lines) > 4096:
                self._tail_lines.clear()
            found = self._tail_lines[key] = (b"".join(b"%b: %b\r\n" % item for item in tail),
                                             len(tail))
        return found

    def _tail(self, key: tuple) -> tuple:
        tail = self._tails.get(key)
        if tail is None:
            if len(self._tails) > 4096:
                self._tails.clear()
            client, scheme, host = key
            tail = self._tails[key] = tuple(self._added([], [], [], None, None, host, client, scheme))
        return tail

    def _added(self, xff: list[bytes], forwarded: list[bytes], via: list[bytes], proto: bytes | None,
               host_seen: bytes | None, host: bytes | None, client: str | None, scheme: str) -> Headers:
        """The forwarding headers for the pod, from those kept from the client (see rewrite)."""
        out: Headers = []
        address = (client or "unknown").encode()
        xff.append(address)
        out.append((_XFF, b", ".join(xff)))
        own_proto = scheme.encode()
        out.append((_XFP, proto or own_proto))
        # An empty X-Forwarded-Host from a trusted proxy gives way to Host; with no Host either,
        # there is none to send (not a header without a value: None is no bytes).
        forwarded_host = host_seen or host
        if forwarded_host is not None:
            out.append((_XFH, forwarded_host))
        element = b"for=" + _forwarded_node(address) + b";proto=" + own_proto
        if host is not None:
            element += b";host=" + _quoted(host)
        forwarded.append(element)
        out.append((_FORWARDED, b", ".join(forwarded)))
        via.append(self.via)
        out.append((_VIA, b", ".join(via)))
        return out


def strip_nonna(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without ``Nonna-*`` ones (the same list when it has none)."""
    for item in headers:
        if item[0].startswith(_NONNA):
            return [pair for pair in headers if not pair[0].startswith(_NONNA)]
    return headers


def _forwarded_node(address: bytes) -> bytes:
    # RFC 7239 section 6: an IPv6 address is bracketed and the node quoted.
    if b":" in address:
        return b'"[' + address + b']"'
    return address


def _quoted(value: bytes) -> bytes:
    # A token needs no quotes; a host with a port (":") does (RFC 7239 section 4).
    if not value.translate(None, _TOKEN):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


# The token characters, for bytes.translate to delete: what is left is not a token.
_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
