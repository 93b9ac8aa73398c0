"""The sans-IO core: everything that decides, and nothing that does I/O.

Modules under this package import no asyncio, socket or HTTP library and read
no clock or global RNG: time comes in as ``now`` (seconds, float), randomness
as an injected ``random.Random``. tests/test_sansio.py enforces the rule.
"""
