"""Errors raised by the core, each carrying the HTTP status the edge should send.

The core only raises; the live adapters turn these into responses
(``error.status_hint`` and ``str(error)`` as the body).
"""


class KatyushaError(Exception):
    """Base of every error the core raises on purpose."""

    status_hint = 500


class BadInput(KatyushaError):
    """The caller sent something malformed (a body, a header, a setting)."""

    status_hint = 400


class ConfigError(KatyushaError):
    """A configuration key is unknown or its value is invalid; the message names the key."""

    status_hint = 400

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


class IllegalTransition(KatyushaError):
    """A pod state change that the transition table does not allow, or one asked mid-transition."""

    status_hint = 409


class QueueFull(KatyushaError):
    """A queue is at its maximum length; the request is rejected at once."""

    status_hint = 503


class DeadlineExceeded(KatyushaError):
    """A request waited past its deadline."""

    status_hint = 504


class NoReadyPod(KatyushaError):
    """No pod can take the request (nothing ready before the deadline)."""

    status_hint = 503


class NotFound(KatyushaError):
    """The request names something katyusha does not have (a service, a pod)."""

    status_hint = 404
