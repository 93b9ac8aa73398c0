"""One HTTP attempt of the driver (aiohttp), reduced to what the pipeline decides on."""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer (connection error, timeout)
    body: bytes
    error: str | None
    retry_after: float | None
    seconds: float


class Sender:
    """A keep-alive connection pool to the service; ``send`` never raises for network trouble."""

    def __init__(self, method: str, url: str, headers: tuple[tuple[str, str], ...], timeout: float,
                 connections: int):
        self.method = method
        self.url = url
        self.headers = {"content-type": "application/json", **dict(headers)}
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Sender:
        connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, body: bytes) -> Answer:
        assert self._session is not None
        start = time.perf_counter()
        try:
            async with self._session.request(self.method, self.url, data=body,
                                             headers=self.headers) as response:
                data = await response.read()
                return Answer(response.status, data, None, _seconds(response.headers.get("retry-after")),
                              time.perf_counter() - start)
        except TimeoutError:
            error = f"no answer within {self.timeout.total:g}s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return Answer(None, b"", error, None, time.perf_counter() - start)


def _seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the delay-seconds form; an HTTP date is ignored)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
