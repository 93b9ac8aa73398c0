"""The piggyback protocol: header names shared by nonna (writer) and katyusha (reader).

See docs/protocol.md. Header names are lower-case here because ASGI and our
HTTP client carry them lower-case; HTTP header names are case-insensitive.
"""

QUEUE_LENGTH = "nonna-queue-length"
IN_FLIGHT = "nonna-in-flight"
CONCURRENCY = "nonna-concurrency"
POD = "nonna-pod"
NODE = "nonna-node"
STATE = "nonna-state"
SERVER_TIMING = "server-timing"
REQUEST_ID = "x-request-id"
# On nonna's own error answers, why it answered itself (docs/protocol.md):
ERROR = "nonna-error"
# the app was never reached (connection refused or never made): safe to send elsewhere;
UPSTREAM_UNREACHABLE = "upstream-unreachable"
# the app's connection broke before its response head: it may have run the request;
UPSTREAM_FAILED = "upstream-failed"
# no response head from the app within the timeout: it may have run the request;
UPSTREAM_TIMEOUT = "upstream-timeout"
# nonna's L2 queue was full, or a request waited in it past the timeout: the app never saw it.
QUEUE_FULL = "queue-full"
QUEUE_TIMEOUT = "queue-timeout"

# Server-Timing metric names.
TIMING_NONNA_QUEUE = "nonna-queue"
TIMING_APP = "app"
TIMING_KATYUSHA_QUEUE = "katyusha-queue"

NONNA_PREFIX = "nonna-"

# Hop-by-hop headers (RFC 9110 7.6.1) that a proxy must not forward.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
