"""Real processes for katyusha's end-to-end tests: sim-backend pods behind nonna, and katyusha itself."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from dataclasses import dataclass

import aiohttp

from tests.procs import Proc, script


@dataclass
class Pod:
    name: str
    backend: Proc
    nonna: Proc

    @property
    def spec(self) -> str:
        return f"{self.nonna.url},name={self.name},node=node-1,admin={self.nonna.admin}"

    def json(self) -> dict:
        return {"name": self.name, "url": self.nonna.url, "node": "node-1", "admin": self.nonna.admin}

    def stop(self) -> None:
        for proc in (self.nonna, self.backend):
            try:
                proc.terminate()
            finally:
                proc.kill()


def start_pods(speeds: list[float], service: str = "exp:20ms", extra: tuple[str, ...] = (),
               concurrency: int = 1) -> list[Pod]:
    """One sim-backend + nonna (of ``concurrency``) per speed, started in parallel; ``extra``: more
    sim-backend flags (``("--app", "sentiment")``)."""
    backends = [
        Proc([script("sim-backend"), "--port", "0", "--admin-port", "0", "--pod", f"pod-{i}",
              "--node", "node-1", "--state", "warm", "--service-time", service,
              "--speed", str(speed), "--seed", str(i + 1), *extra], ready_timeout=0)
        for i, speed in enumerate(speeds)
    ]
    for proc in backends:
        proc.wait_ready(30)
    nonnas = [
        Proc([script("nonna"), "--port", "0", "--admin-port", "0", "--upstream", backend.url,
              "--concurrency", str(concurrency), "--pod", f"pod-{i}", "--node", "node-1"], ready_timeout=0)
        for i, backend in enumerate(backends)
    ]
    for proc in nonnas:
        proc.wait_ready(30)
    return [Pod(f"pod-{i}", b, n) for i, (b, n) in enumerate(zip(backends, nonnas, strict=True))]


def katyusha(*args: str, env: dict | None = None) -> Proc:
    return Proc([script("katyusha"), "serve", "--port", "0", "--admin-port", "0", *args],
                ready_timeout=30, env=env)


def admin(proc: Proc, method: str, path: str, body: object = None, timeout: float = 30):
    """(status, JSON body) of one admin call."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(proc.admin + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def blast(url: str, count: int, concurrency: int, *, method: str = "GET",
                headers: dict | None = None, timeout: float = 60) -> list[tuple[int, dict, bytes]]:
    """Send ``count`` requests, ``concurrency`` at a time; (status, headers, body) of each, in order.

    Header names are lower-case.
    """
    results: list = [None] * count
    next_index = iter(range(count))
    limits = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=limits) as session:

        async def worker() -> None:
            for index in next_index:
                async with session.request(method, url, headers=headers) as response:
                    got = {k.lower(): v for k, v in response.headers.items()}
                    results[index] = (response.status, got, await response.read())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results
