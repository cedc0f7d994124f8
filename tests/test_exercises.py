"""Every tutorial exercise's solution (``tutorials/solutions/sNN_*.py``) runs and passes its own check.

A solution module defines the functions a student is asked to write and ``check()``, which compares
them with an independent answer (a closed form, the library's estimator, a finite difference) and
raises ``AssertionError`` when they disagree; ``check`` runs in quick settings (seconds).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SOLUTIONS = Path(__file__).resolve().parents[1] / "tutorials" / "solutions"
MODULES = sorted(p.name for p in SOLUTIONS.glob("s[0-9][0-9]_*.py"))


def test_there_are_solutions():
    assert MODULES, "no solution modules in tutorials/solutions"


@pytest.mark.parametrize("name", MODULES)
def test_solution_checks(name):
    spec = importlib.util.spec_from_file_location(f"solutions_{name[:-3]}", SOLUTIONS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.check()
