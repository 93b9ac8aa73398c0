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
# On nonna's own 502/504 when its app could not be reached before any response byte:
# katyusha may then retry an idempotent request on another pod.
ERROR = "nonna-error"
UPSTREAM_UNREACHABLE = "upstream-unreachable"

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
