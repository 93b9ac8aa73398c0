"""Is the application ready? Either its health URL answers 2xx, or its port accepts a connection."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from katyusha.http import Pool, UpstreamError

PROBE_TIMEOUT = 2.0


class HealthCheck:
    """Probes the application once per call; never raises, returns ``(healthy, reason)``."""

    def __init__(self, upstream: str, health_url: str | None, timeout: float = PROBE_TIMEOUT):
        self._timeout = timeout
        self._health_url = health_url
        up = urlsplit(upstream)
        self._host, self._port = up.hostname or "127.0.0.1", up.port or 80
        self._pool: Pool | None = None
        if health_url is not None:
            parts = urlsplit(health_url)
            self._pool = Pool(f"{parts.scheme}://{parts.netloc}", max_idle=1,
                              connect_timeout=timeout)
            self._target = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode()

    async def probe(self) -> tuple[bool, str]:
        """``(True, why)`` when the application answers as healthy, else ``(False, why not)``."""
        if self._pool is None:
            return await self._probe_tcp()
        return await self._probe_http()

    async def _probe_tcp(self) -> tuple[bool, str]:
        where = f"{self._host}:{self._port}"
        try:
            async with asyncio.timeout(self._timeout):
                _, writer = await asyncio.open_connection(self._host, self._port)
        except TimeoutError:
            return False, f"upstream {where}: no TCP connection within {self._timeout:g}s"
        except OSError as exc:
            return False, f"upstream {where}: TCP connect failed: {exc.strerror or exc}"
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True, f"upstream {where} accepts connections"

    async def _probe_http(self) -> tuple[bool, str]:
        assert self._pool is not None
        url = self._health_url
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._pool.request(b"GET", self._target, timeout=self._timeout)
                try:
                    await response.read()
                finally:
                    response.release()
        except TimeoutError:
            return False, f"upstream health {url}: no answer within {self._timeout:g}s"
        except UpstreamError as exc:
            return False, f"upstream health {url}: {exc}"
        if 200 <= response.status < 300:
            return True, f"upstream health {url} answered {response.status}"
        return False, f"upstream health {url} answered {response.status}"

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
