"""Failures of an upstream exchange, classified for the caller's retry decision.

Every error says which HTTP status the edge should answer (``status_hint``:
502 or 504), whether the same request can be sent again, to this or another
upstream (``retryable``: its body can still be sent and nothing went
downstream), and whether the upstream provably never got it
(``sent_nothing``: the connection was refused or never made, or closed before
the request was written). A retryable error that did not send nothing may
have been acted on: only an idempotent request may be sent again then.
"""

from __future__ import annotations

from katyusha.core.errors import KatyushaError


class UpstreamError(KatyushaError):
    """The upstream exchange failed; ``origin`` names the upstream."""

    status_hint = 502

    def __init__(self, message: str, *, origin: str = "", retryable: bool = False,
                 sent_nothing: bool = False):
        super().__init__(f"{origin}: {message}" if origin else message)
        self.origin = origin
        self.retryable = retryable
        self.sent_nothing = sent_nothing


class ConnectFailed(UpstreamError):
    """No response byte came back: refused, reset or closed before the response began.

    Retryable when the request body was not consumed (or can be replayed).
    """

    status_hint = 502


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer (head, or next body bytes) within the timeout."""

    status_hint = 504


class ConnectTimeout(ConnectFailed, UpstreamTimeout):
    """The TCP connection was not established within the connect timeout; nothing was sent."""

    status_hint = 504


class UpstreamProtocolError(UpstreamError):
    """The upstream sent bytes that are not a valid HTTP/1.1 response."""

    status_hint = 502


class ResponseAborted(Exception):
    """The upstream failed after the response head went downstream: the response is cut short.

    Raised by ``forward``; let it propagate out of the ASGI app so the server
    closes the client connection (a truncated response must not look complete).
    ``error`` is the upstream failure, ``result`` what was relayed before it.
    """

    def __init__(self, error: BaseException, result):
        super().__init__(f"response aborted after the head was sent: {error}")
        self.error = error
        self.result = result
