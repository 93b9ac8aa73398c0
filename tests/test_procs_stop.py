"""Stopping the processes a benchmark or tool started, when a signal comes in the middle."""

from __future__ import annotations

import os
import signal

import pytest

from katyusha.procs import Proc, exit_on_signals, script, stop_all

BACKEND = [script("sim-backend"), "--port", "0", "--admin-port", "0", "--state", "warm"]


class SignalledWhileStopping(Proc):
    """A real process; as it is stopped, a SIGTERM reaches the caller (a benchmark cut by ``timeout``)."""

    def terminate(self, timeout: float = 15.0) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        return super().terminate(timeout)


def test_a_signal_while_one_process_stops_leaves_none_of_the_others_running():
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    procs = []
    try:
        procs = [SignalledWhileStopping(BACKEND), Proc(BACKEND), Proc(BACKEND)]
        exit_on_signals()
        with pytest.raises(SystemExit) as caught:
            stop_all(procs)
        assert caught.value.code == 128 + signal.SIGTERM  # the signal's exit, raised after the last
        assert [proc.popen.poll() is not None for proc in procs] == [True, True, True]
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for proc in procs:
            proc.kill()
