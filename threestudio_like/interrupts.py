"""Ctrl-C for a whole run.

Inside the training loop the first Ctrl-C asks the loop to stop after its step (the CLI then
saves, renders the turntable and exports). Anywhere else (start-up, the turntable, the export)
and on a second Ctrl-C the run stops at once by raising ``RunInterrupted``, which the CLI reports
(what was saved, what was not) with exit code 130. Not ``KeyboardInterrupt``: Lightning catches
that inside ``fit`` / ``test`` and exits 1 without a word.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any, Optional

EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C: scripts can tell an interrupted run from a finished one


class RunInterrupted(Exception):
    """Ctrl-C outside the graceful part of training, or a second Ctrl-C."""


class InterruptHandler:
    """SIGINT handler for the length of a ``with`` block (main thread only; elsewhere a no-op)."""

    def __init__(self) -> None:
        self.requested = False  # a Ctrl-C in the training loop asked it to stop after this step
        self.graceful = False  # set while the training loop runs
        self._previous: Any = None

    def __enter__(self) -> "InterruptHandler":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, kind: Optional[type], error: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.graceful and not self.requested:
            self.requested = True
            print("\nCtrl-C: finishing this step, saving a checkpoint, then rendering the test views "
                  "(press Ctrl-C again to stop at once).", flush=True)
            return
        raise RunInterrupted()
