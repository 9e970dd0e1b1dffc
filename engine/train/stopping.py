"""How a run stops early: preemption signals, the stop file, divergence.

A SIGTERM/SIGUSR1 on any rank, or a file ``RUN/STOP``, makes all ranks checkpoint together
and exit with :data:`EXIT_PREEMPTED`, so a cluster job can be requeued and resumed with
``--resume latest``. Too many consecutive non-finite steps, or weights that are no longer
finite, raise :class:`TrainingDiverged`; ``launch/train.py`` exits with :data:`EXIT_DIVERGED`.
"""

from __future__ import annotations

import signal
from typing import Any

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpoint saved, run again with --resume latest
EXIT_DIVERGED = 3  # non-finite loss or weights; the last finite checkpoint is kept
STOP_FILE = "STOP"  # touch RUN/STOP to make a running job checkpoint and exit (any launcher)


class TrainingDiverged(RuntimeError):
    """The run diverged: too many consecutive non-finite steps, or non-finite weights.

    Its message is one line, ``training diverged at step N (reason)``; nothing non-finite
    was saved, so the run's latest checkpoint is the last finite one.

    Attributes:
        step: The optimiser step at which the divergence was seen.
        reason: What was not finite, and what to change.
    """

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(f"training diverged at step {step} ({reason})")
        self.step = step
        self.reason = reason


class PreemptionFlag:
    """Remembers that SIGTERM or SIGUSR1 arrived; the loop acts on it at its next sync point."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def restore(self) -> None:
        """Put the previous signal handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
