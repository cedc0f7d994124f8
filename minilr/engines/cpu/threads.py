"""Threads for minilr's CPU kernels: the CPU engine's blocks and the noise fill on NumPy.

Plain Python threads running GIL-free kernels (Numba ``nogil``, BLAS) on fixed ranges. Numba's
own parallel layer (OpenMP here) compiled the noise loop without vectorising it (3x slower per
core) and leaves spinning workers behind that compete with OpenBLAS's; see benchmarks/RESULTS.md.
Ranges are fixed by the sizes (and a given number of parts), so sums kept per range and added in
order do not depend on the thread count.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from ..._signals import deferred_interrupt

_LOCAL = threading.local()  # .serial: this thread already runs one of several blocks


def threads() -> int:
    """Threads of minilr's CPU kernels (noise fill, the CPU engine's blocks):
    ``MINILR_NOISE_THREADS`` or the CPUs this process may use."""
    env = os.environ.get("MINILR_NOISE_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"MINILR_NOISE_THREADS must be a positive integer, got {env!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Workers:
    """A pool of threads for GIL-free kernels, owned by whoever made it (a CPU engine for its
    blocks; this module for noise fills made outside any engine) and closed with it.

    Fork-safe: a child process never waits on the parent's threads (they do not exist there),
    it starts its own on first use (the pool is tied to the process id that made it)."""

    def __init__(self):
        self._pool, self._key, self._lock = None, None, threading.Lock()

    def _executor(self, nt):
        key = (os.getpid(), nt)
        with self._lock:
            if self._key != key:
                if self._pool is not None and self._key[0] == key[0]:
                    self._pool.shutdown(wait=False)
                self._pool, self._key = ThreadPoolExecutor(nt, thread_name_prefix="minilr"), key
            return self._pool

    def close(self):
        """Let the threads go (they finish what they run); a later call starts new ones."""
        with self._lock:
            if self._pool is not None and self._key[0] == os.getpid():
                self._pool.shutdown(wait=False)
            self._pool, self._key = None, None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def run_groups(self, fn, groups):
        """``fn(group)`` for each group, the first on the calling thread, the rest on the pool;
        a thread running a group runs any nested :func:`run_split` serially."""
        def run(group):
            outer = getattr(_LOCAL, "serial", False)
            _LOCAL.serial = True
            try:
                fn(group)
            finally:
                _LOCAL.serial = outer

        groups = [g for g in groups if g]
        if len(groups) <= 1:
            for g in groups:
                run(g)
            return
        # Ctrl-C waits for the workers (one kernel call, milliseconds): an interrupt inside
        # submit() could leave the pool's locks held, or workers writing after we return
        with deferred_interrupt():
            pool = self._executor(len(groups))
            futs = [pool.submit(run, g) for g in groups[1:]]
            try:
                run(groups[0])
            finally:
                for f in futs:
                    f.result()


_WORKERS = Workers()  # for noise drawn outside any engine's blocks
os.register_at_fork(after_in_child=_WORKERS.close)


def split(n, nt, align=1):
    """``nt`` fixed ranges ``(lo, hi)`` covering ``0 .. n - 1``, interior bounds multiples of ``align``.

    Fixed by ``n`` and ``nt`` alone, so per-range partial sums combined in range order give the
    same bits on every run.
    """
    step = max(1, -(-n // nt))
    step += -step % align
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def run_split(kernel, n, args, align=1, min_items=1, parts=None, workers=None):
    """Call ``kernel(*args, lo, hi)`` over :func:`split` ranges of ``0 .. n - 1`` on ``workers``
    (default: this module's, for noise drawn outside any engine).

    ``parts`` ranges (default: one per thread), dealt to the threads in contiguous groups; the
    calling thread runs the first group instead of waiting. Give ``parts`` a fixed number when
    the kernel writes one partial sum per range: the ranges, hence the sums' bits, then do not
    depend on the thread count. One thread when :func:`threads` is 1, ``n < min_items``, or the
    caller is itself one of several blocks running side by side.
    """
    nt = 1 if getattr(_LOCAL, "serial", False) else threads()
    ranges = split(n, parts or nt, align) if n >= min_items else [(0, n)]
    if nt == 1 or len(ranges) == 1:
        for lo, hi in ranges:
            kernel(*args, lo, hi)
        return ranges
    groups = [ranges[len(ranges) * g // nt:len(ranges) * (g + 1) // nt] for g in range(nt)]

    def run(group):
        for lo, hi in group:
            kernel(*args, lo, hi)

    (workers or _WORKERS).run_groups(run, groups)
    return ranges
