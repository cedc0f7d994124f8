"""Holding Ctrl-C back for a moment, so that what must happen together does.

Python raises KeyboardInterrupt between any two bytecodes of the main thread. Two places must not
be cut: the few assignments that commit a training step (:func:`minilr.train`: old step or new
step, never half), and the hand-off of work to a thread pool (an interrupt inside
``ThreadPoolExecutor.submit`` can leave one of its locks held, so a later call waits forever; an
interrupt while waiting for the workers would leave them writing into arrays the next call reuses).
Both take milliseconds; the interrupt is delivered right after.
"""
from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def deferred_interrupt():
    """Hold back SIGINT for the duration of the block; deliver it at its end.

    Only the main thread receives signals, so elsewhere (and where SIGINT is not Python's to
    handle) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    try:
        old = signal.signal(signal.SIGINT, lambda sig, frame: received.append(sig))
    except (ValueError, OSError):  # no signals here (e.g. an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if received:
            if callable(old):
                old(signal.SIGINT, None)
            elif old == signal.SIG_DFL:
                raise KeyboardInterrupt
