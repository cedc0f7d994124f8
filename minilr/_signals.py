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
import os
import signal
import sys
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


def _quiet(sig, frame):
    """Ctrl-C before the command line's own handling starts (during ``import minilr``): one line."""
    sys.stderr.write(f"{_quiet.prog}: interrupted\n")
    sys.stderr.flush()
    raise SystemExit(130)  # no traceback; the exit status a shell gives an interrupted command


_quiet.prog = "python -m minilr"


def quiet_interrupt_while_starting(argv=None) -> bool:
    """When minilr runs as a command (``python -m minilr`` or the ``minilr`` script), make Ctrl-C
    end it with one line until :func:`end_quiet_interrupt`: the package's imports take a moment,
    and an interrupt there would otherwise print a long traceback. Returns whether it did."""
    argv = sys.argv if argv is None else argv
    first = argv[0] if argv else ""
    if first == "-m":  # `python -m X` is locating X: only X = minilr itself is our command
        orig = list(getattr(sys, "orig_argv", []))
        if "-m" in orig and orig[orig.index("-m") + 1:orig.index("-m") + 2] not in ([], ["minilr"]):
            return False
    elif os.path.basename(first) not in ("minilr", "minilr.exe"):
        return False  # imported by a program: its Ctrl-C is its own business
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return False  # ignored (nohup, background job) or handled by someone else: leave it
        _quiet.prog = "python -m minilr" if first == "-m" else "minilr"
        signal.signal(signal.SIGINT, _quiet)
    except (ValueError, OSError, AttributeError):
        return False
    return True


def end_quiet_interrupt() -> None:
    """Ctrl-C raises KeyboardInterrupt again (the command line handles it from here on)."""
    try:
        if signal.getsignal(signal.SIGINT) is _quiet:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    except (ValueError, OSError):
        pass
