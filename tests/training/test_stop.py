"""SIGTERM / Ctrl-C handling (oq2vl_jax/training/stop.py): the first signal asks for a stop after the current step, a
second Ctrl-C interrupts at once, the previous handlers come back."""

import os
import signal

import pytest

from oq2vl_jax.training.stop import StopSignal


def test_first_signal_asks_for_a_stop_second_ctrl_c_interrupts():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop = StopSignal().install()
    try:
        assert not stop.should_stop(1)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "sigint" and stop.should_stop(1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # after a Ctrl-C, SIGTERM changes nothing
        assert stop.received == "sigint"
    finally:
        stop.restore()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_sigterm_is_recorded():
    stop = StopSignal().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == "sigterm" and stop.should_stop(3)
    finally:
        stop.restore()
