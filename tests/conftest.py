"""Shared test configuration.

Hypothesis explores new examples on every local run (that is how it finds bugs). Under CI
(``CI`` set, as ``.ci/run`` is run) it replays a fixed, derandomized sequence instead, so a
submission's result does not depend on the luck of the draw; a failure found locally is kept in
the local example database and replayed there until fixed.
"""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
