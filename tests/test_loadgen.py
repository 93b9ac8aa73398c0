"""The open-loop generator keeps its schedule when the system under load slows down."""

import asyncio

from benchmarks.loadgen import run_open_loop


async def _serial_slow_server(delay_s: float):
    """An HTTP server that answers one request at a time, each after ``delay_s``."""
    lock = asyncio.Lock()

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                async with lock:
                    await asyncio.sleep(delay_s)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nNonna-Pod: slow\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


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
