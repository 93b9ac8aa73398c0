"""The upstream side of the proxies: an HTTP/1.1 client on asyncio Protocols and an ASGI forwarder.

``Pool`` keeps keep-alive connections to one origin; ``PoolSet`` holds one
``Pool`` per origin; ``forward`` relays one ASGI request through a ``Pool``,
streaming both bodies with bounded buffering. Failures are ``UpstreamError``
subclasses carrying ``status_hint`` and ``retryable``. ``splice`` relays an
upgraded connection both ways; ``EdgeLimits`` are the limits the server
(``katyusha.http.server``) and the client enforce, ``EdgeFields`` the
settings katyusha's and nonna's configurations share (``katyusha.http.limits``).
"""

from katyusha.http.client import BodySource, Pool, PoolSet, Response
from katyusha.http.errors import (
    ConnectFailed,
    ConnectTimeout,
    ResponseAborted,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from katyusha.http.forward import ForwardResult, ReplayableReceive, forward, request_headers
from katyusha.http.limits import EdgeFields, EdgeLimits
from katyusha.http.tunnel import TunnelPeer, splice

__all__ = [
    "BodySource",
    "ConnectFailed",
    "ConnectTimeout",
    "EdgeFields",
    "EdgeLimits",
    "ForwardResult",
    "Pool",
    "PoolSet",
    "ReplayableReceive",
    "Response",
    "ResponseAborted",
    "UpstreamError",
    "UpstreamProtocolError",
    "TunnelPeer",
    "UpstreamTimeout",
    "forward",
    "request_headers",
    "splice",
]
