"""HTTP on a plain socket, as a test writes it byte for byte: connect, send, read until the peer closes."""

from __future__ import annotations

import socket


def connect(url: str, timeout: float = 10) -> socket.socket:
    """A TCP connection to ``http://host:port`` (or ``https://``: the socket stays plain)."""
    host, port = url.split("://", 1)[-1].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_all(sock: socket.socket) -> bytes:
    """All the peer sends until it closes (a reset or the socket's timeout ends it too)."""
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return reply


def send_raw(url: str, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` on a fresh connection and return all that comes back until it is closed."""
    with connect(url, timeout) as sock:
        sock.sendall(data)
        return read_all(sock)
