"""Handing the GIL to the agent's thread from the sender's.

A thread that wants the GIL waits until its holder blocks for real, or for the switch interval
(5 ms by default) before it forces a switch. A holder that releases it for a moment (``time.sleep(0)``,
a quick syscall, each SQLite step) takes it straight back before the woken thread runs, so the
sender's long Python stretches (reading an answer, parsing it, settling the batch) would keep the
agent's event loop waiting for milliseconds. A short real sleep every so often bounds that wait.
"""

from __future__ import annotations

import time

__all__ = ["EVERY", "hand_over"]

# Work items between hand-overs in the sender's loops: a few hundred microseconds of Python.
EVERY = 200
# 70 to 90 µs of real sleep here (timer slack): long enough for the waiting thread to run.
_PAUSE = 20e-6


def hand_over() -> None:
    """Sleep briefly so that a thread waiting for the GIL gets it now."""
    time.sleep(_PAUSE)
