"""The open-loop generator keeps its schedule when the system under load slows down."""

import asyncio
import random

from benchmarks.loadgen import poisson_schedule, run_open_loop
from katyusha.core.feedback import parse_server_timing


async def _server(answer):
    """An HTTP/1.1 server on loopback: ``await answer(writer)`` for each request head read."""
    async def handle(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await answer(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _serial_slow_server(delay_s: float):
    """An HTTP server that answers one request at a time, each after ``delay_s``."""
    lock = asyncio.Lock()

    async def answer(writer):
        async with lock:
            await asyncio.sleep(delay_s)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nNonna-Pod: slow\r\n\r\nok")
        await writer.drain()

    return await _server(answer)


async def test_generator_holds_its_rate_against_a_slow_system():
    server = await _serial_slow_server(0.05)  # at most 20 req/s served
    port = server.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await run_open_loop(f"http://127.0.0.1:{port}", rate=100, duration_s=2.0,
                                     timeout_s=1.0, seed=3)
        elapsed = loop.time() - started
    finally:
        server.close()
        await server.wait_closed()
    # Poisson with mean 200 arrivals in 2 s: a closed loop would have sent ~40.
    assert 150 <= result.sent <= 250, result.sent
    # Every send left on schedule, not after the previous answer.
    assert result.send_lag_ms < 250
    # The system really was the bottleneck: most requests queued past the timeout.
    assert result.summary()["timeouts"] > result.sent // 2
    served = [s for s in result.samples if s.status == 200]
    assert served and all(s.pod == "slow" for s in served)
    # The run ends about when the schedule plus the timeout ends.
    assert elapsed < 2.0 + 1.0 + 1.5


async def test_generator_records_connection_errors():
    result = await run_open_loop("http://127.0.0.1:9", rate=50, duration_s=0.5, timeout_s=1.0)
    assert result.sent > 5
    assert all(s.status in (0, -1) for s in result.samples)
    assert result.error_share == 1.0


async def _two_timing_lines_server():
    """Answers every request with two Server-Timing lines (nonna's and katyusha's, as katyusha sends them)."""
    async def answer(writer):
        body = b'{"service_ms": 20.5, "target_ms": 20.0}'
        writer.write(b"HTTP/1.1 200 OK\r\nServer-Timing: nonna-queue;dur=1.5, app;dur=21.25\r\n"
                     b"Server-Timing: katyusha-queue;dur=3.000\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()

    return await _server(answer)


async def test_detail_keeps_every_server_timing_line_the_body_and_the_schedule():
    server = await _two_timing_lines_server()
    port = server.sockets[0].getsockname()[1]
    try:
        result = await run_open_loop(f"http://127.0.0.1:{port}", rate=200, duration_s=0.5, seed=5, detail=True)
        plain = await run_open_loop(f"http://127.0.0.1:{port}", rate=200, duration_s=0.2, seed=5)
    finally:
        server.close()
        await server.wait_closed()
    assert result.sent > 50 and all(s.status == 200 for s in result.samples)
    for sample in result.samples:
        # Both lines, joined: a dict keeping the last line only would lose nonna's timings.
        assert parse_server_timing(sample.timing) == {"nonna-queue": 1.5, "app": 21.25, "katyusha-queue": 3.0}
        assert sample.body == b'{"service_ms": 20.5, "target_ms": 20.0}'
        assert 0 <= sample.lag_ms < 250
    # The arrivals are the seeded schedule itself (benchmarks.sim_vs_live replays them).
    assert [s.sent_at for s in result.samples] == poisson_schedule(200, 0.5, random.Random(5))
    assert all(s.timing == "" and s.body == b"" for s in plain.samples)
