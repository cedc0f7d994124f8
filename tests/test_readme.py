"""The README as a reader sees it: every code fence closes where it should and every Python block
compiles (issue 14: a fence written as ``` `backend="cupy"` ...`` is no closing fence in
CommonMark, so the next heading and its code were shown inside the code block)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def blocks(text):
    """``(info, first line number, lines, stray)`` for each fenced block, by CommonMark's rules: a
    fence closes only with at least as many of the same character and nothing but spaces after
    them; ``stray`` lists the lines inside that start like a fence yet cannot close it."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        m = OPEN.match(lines[i])
        if not m or (m.group(1)[0] == "`" and "`" in m.group(2)):  # backtick info has no backticks
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).strip(), i + 1
        close = re.compile(r"^ {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}[ \t]*$")
        body, stray = [], []
        i += 1
        while i < len(lines) and not close.match(lines[i]):
            if lines[i].lstrip().startswith(fence[0] * 3):
                stray.append((i + 1, lines[i]))
            body.append(lines[i])
            i += 1
        out.append((info, start, body, stray, i < len(lines)))
        i += 1
    return out


def test_the_scanner_sees_the_broken_fence_of_issue_14():
    text = "```python\nx = 1\n``` `backend` runs.\n\n### Saving\n\n```python\ny = 2\n```\n"
    [(info, _, body, stray, closed)] = blocks(text)  # one block: it runs on to the last fence
    assert stray == [(3, "``` `backend` runs."), (7, "```python")] and closed
    assert "### Saving" in body


def test_every_fence_closes_and_nothing_looks_like_a_fence_inside():
    found = blocks(README.read_text())
    assert found, "no code blocks found"
    for info, start, _, stray, closed in found:
        assert closed, f"README.md:{start}: the ```{info} block never closes"
        assert not stray, f"README.md:{start}: lines inside the block look like fences: {stray}"


_PYTHON = [(s, "\n".join(b)) for info, s, b, _, _ in blocks(README.read_text()) if info == "python"]


@pytest.mark.parametrize("start,src", _PYTHON, ids=[f"line{s}" for s, _ in _PYTHON])
def test_every_python_block_compiles(start, src):
    compile(src, f"README.md:{start}", "exec")
