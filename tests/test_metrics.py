"""``minilr.metrics.acc_sta``: the paper's Eq. 7 (Acc.) and Eq. 8 (Sta.), against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from minilr.metrics import acc_sta


def test_acc_sta_is_eq_7_and_8():
    copies = np.array([100, 200, 300, 400, 500])
    line = 0.2 + 1e-3 * copies  # cosines that rise exactly linearly: no deviation from the fit
    acc, sta = acc_sta(copies, line)
    assert acc == pytest.approx(line.mean()) and sta == pytest.approx(0.0, abs=1e-12)
    # Deviations orthogonal to (1, n) leave the fitted line unchanged, so Sta. is their RMS and
    # Acc. stays the mean of the line: (+d, -2d, 0, +2d, -d) sums to 0 and has sum n*dev = 0.
    d = 0.01
    dev = d * np.array([1.0, -2.0, 0.0, 2.0, -1.0])
    acc, sta = acc_sta(copies, line + dev)
    assert acc == pytest.approx(line.mean())
    assert sta == pytest.approx(np.sqrt(np.mean(dev ** 2)))  # = d * sqrt(2)
    assert sta == pytest.approx(d * np.sqrt(2.0))


def test_acc_sta_refuses_mismatched_or_too_short_input():
    with pytest.raises(ValueError):
        acc_sta([1, 2, 3], [0.1, 0.2])
    with pytest.raises(ValueError):
        acc_sta([1], [0.1])
