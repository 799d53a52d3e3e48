"""Ctrl-C during training: the first asks for a checkpoint after the current step, a second aborts."""

from __future__ import annotations

import logging
import signal
import threading


class Interrupt:
    """Ctrl-C asks for a checkpoint at the end of the current step; a second Ctrl-C aborts at once."""

    def __init__(self) -> None:
        self.requested, self._old = False, None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True  # the loop records it; a signal handler only sets the flag and says so
        logging.getLogger("gazegen.train").warning("Ctrl-C: saving a checkpoint after this step (Ctrl-C again to abort without one)")

    def __enter__(self) -> Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
