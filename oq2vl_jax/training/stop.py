"""Stopping a run cleanly on SIGTERM (preemption, `kill`) or Ctrl-C (SIGINT): the loop finishes the current step,
saves a checkpoint and returns; the CLI exits 0. A second Ctrl-C stops at once (KeyboardInterrupt; the CLI prints one
line, no traceback).

The CLI installs the handlers before anything slow (imports, demo data, weight loading, compilation), so a signal
that comes during start-up is kept and the loop stops before its first step instead of the process dying silently.
This module imports nothing heavy for that reason.

With several processes SIGTERM is left to JAX's preemption service (`multihost_utils.reached_preemption_sync_point`),
so that every process stops at the same step: `jax.distributed.initialize` installs its own SIGTERM handler after
the CLI's (a SIGTERM before that stops the run before training starts), and `loop.run` installs none. Ctrl-C there
interrupts at once.
"""

from __future__ import annotations

import signal
import threading

from absl import logging

SIGNAL_NAMES = {signal.SIGTERM: "sigterm", signal.SIGINT: "sigint"}


class StopSignal:
    def __init__(self):
        self.received: str | None = None  # "sigterm" | "sigint" once a signal came
        self.multiprocess = False
        self._previous: dict[int, object] = {}

    def install(self) -> "StopSignal":
        """Handles SIGTERM and SIGINT from now on (main thread only; elsewhere signals keep their handlers)."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for signum in SIGNAL_NAMES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        name = SIGNAL_NAMES[signum]
        if signum == signal.SIGINT and (self.received or self.multiprocess):
            raise KeyboardInterrupt
        if not self.received:
            self.received = name
            hint = "; Ctrl-C again to stop at once without one" if signum == signal.SIGINT else ""
            logging.warning("%s: stopping after this step with a checkpoint%s", name.upper(), hint)

    def bind(self, multiprocess: bool) -> None:
        """Called by the loop once the process count is known."""
        self.multiprocess = multiprocess

    def should_stop(self, step: int) -> bool:
        if self.multiprocess:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
