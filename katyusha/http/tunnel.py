"""Relaying an upgraded connection (WebSocket and other ``101 Switching Protocols``) both ways.

After a 101 the two connections, the client's and the pod's, carry bytes of
a protocol we do not speak. :func:`splice` takes both transports over (each
gets a :class:`_Side` as its protocol) and relays what each side sends to the
other, with flow control both ways: when one side's write buffer passes its
high-water mark (asyncio calls ``pause_writing``), reading from the other
side pauses until it drains, so a slow reader never makes us buffer without
end. A half-close (EOF) is passed on where the transport allows it; once
either side closes, the other is closed after its buffered bytes were
written. No byte either way for ``idle_timeout`` seconds closes both.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

# The ASGI scope extension (and send message type) of a request that may become a tunnel.
TUNNEL_EXTENSION = "katyusha.tunnel"
# A closed side's peer gets this long to flush what it was sent, then is aborted.
_FLUSH_SECONDS = 5.0


@dataclass
class TunnelPeer:
    """The pod's end of an upgraded exchange: its transport, the bytes it sent after its 101 head,
    and whether its write buffer was full (``write_paused``) when it was handed over."""

    transport: asyncio.Transport
    pending: bytes = b""
    write_paused: bool = False


class _Side(asyncio.Protocol):
    """The protocol of one side of a tunnel: what it receives is written to ``other``."""

    def __init__(self, tunnel: _Tunnel, transport: asyncio.Transport, write_paused: bool):
        self.tunnel = tunnel
        self.transport = transport
        self.other: _Side | None = None
        self.write_paused = write_paused
        self.eof = False
        self.lost = False
        self.bytes_in = 0

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.tunnel.active = True
        other = self.other
        if other.lost:
            return
        other.transport.write(data)

    def eof_received(self) -> bool | None:
        self.eof = True
        other = self.other
        if other.eof or other.lost or not other.transport.can_write_eof():
            self.tunnel.end()
            return None
        other.transport.write_eof()
        # Keep this side open: the other may still send.
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        if not self.other.lost:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.other.lost:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.end()


class _Tunnel:
    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float):
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.done = loop.create_future()
        self.active = False
        self.sides: tuple[_Side, _Side] | None = None
        self._timer = loop.call_later(idle_timeout, self._on_idle)
        self._abort: asyncio.TimerHandle | None = None

    def _on_idle(self) -> None:
        if self.done.done():
            return
        if self.active:
            # Bytes moved in the last period: look again one period later.
            self.active = False
            self._timer = self.loop.call_later(self.idle_timeout, self._on_idle)
            return
        self.end()

    def end(self) -> None:
        """Close both sides (each after flushing what it was sent); resolve ``done``."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for side in self.sides:
            if not side.lost:
                side.transport.close()
        if self._abort is None and not all(side.lost for side in self.sides):
            self._abort = self.loop.call_later(_FLUSH_SECONDS, self._abort_all)
        if not self.done.done():
            self.done.set_result(None)

    def _abort_all(self) -> None:
        for side in self.sides:
            if not side.lost:
                side.transport.abort()


async def splice(client: asyncio.Transport, client_pending: bytes, peer: TunnelPeer, *,
                 idle_timeout: float, paused: tuple[bool, bool] = (False, False)) -> tuple[int, int]:
    """Relay bytes between ``client`` and ``peer.transport`` until either closes or both go idle.

    ``client_pending`` are bytes the client sent before the tunnel began (they
    go to the peer first); ``paused`` is the client transport's (write
    buffer full, reading paused) state at hand-over. Returns (bytes from the
    client, bytes from the peer). Cancelling it closes both sides.
    """
    loop = asyncio.get_running_loop()
    tunnel = _Tunnel(loop, idle_timeout)
    near = _Side(tunnel, client, paused[0])
    far = _Side(tunnel, peer.transport, peer.write_paused)
    near.other, far.other = far, near
    tunnel.sides = (near, far)
    client.set_protocol(near)
    peer.transport.set_protocol(far)
    if client.is_closing() or peer.transport.is_closing():
        tunnel.end()
    else:
        if client_pending:
            near.data_received(client_pending)
        if peer.pending:
            far.data_received(peer.pending)
        # Read each side unless the other's buffer is full.
        for side in (near, far):
            if side.other.write_paused:
                side.transport.pause_reading()
            else:
                side.transport.resume_reading()
    try:
        await tunnel.done
    except asyncio.CancelledError:
        tunnel.end()
        raise
    return near.bytes_in, far.bytes_in
