"""Run a command with its output on a pseudo-terminal, and read back what the screen shows.

Progress bars behave differently on a terminal (``isatty()``), so the tests of progress output
need a real one: a pty from the standard library, 80 columns wide. :func:`screen` replays the
bytes as a terminal would (carriage return to column 0, line feed to the next line, later text
overwriting earlier), so a test can assert what a user would read on each line.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
import termios


def run_on_a_terminal(args, env, *, stdout_too=True, timeout=300):
    """Run ``args``; stderr (and, with ``stdout_too``, stdout) on a pty, else stdout on a pipe.
    Returns ``(return code, terminal bytes, stdout bytes or b"")``."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    p = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stderr=slave,
                         stdout=slave if stdout_too else subprocess.PIPE)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError as exc:  # EIO: every writer closed the terminal
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        out = b"" if stdout_too else p.stdout.read()
        rc = p.wait(timeout=timeout)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    return rc, b"".join(chunks), out


def screen(raw: bytes):
    """The lines a terminal shows for ``raw`` (no scrolling limit; escape sequences dropped)."""
    import re

    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw.decode("utf-8", "replace"))
    lines, line, col = [], [], 0
    for ch in text:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(line).rstrip())
            line, col = [], 0
        else:
            if col < len(line):
                line[col] = ch
            else:
                line.extend(" " * (col - len(line)))
                line.append(ch)
            col += 1
    lines.append("".join(line).rstrip())
    return lines
