"""ES/AES keep their weight noise when it is small and draw it again from the seed when it is not
(minilr/engines/reference.py, ESSite): both ways must give the same estimate, and redrawing must keep memory
flat in the number of copies."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import minilr
from minilr.engines import reference as es


def _problem():
    rng = np.random.default_rng(0)
    model = minilr.MLP([12, 16, 4], seed=1, learn_sigma=True)
    return model, rng.standard_normal((6, 12)).astype(np.float32), rng.integers(0, 4, 6)


@pytest.mark.parametrize("estimator", ["es", "aes", "hybrid", "a-hybrid"])
@pytest.mark.parametrize("antithetic", [False, True])
def test_redrawn_noise_gives_the_kept_noise_estimate(monkeypatch, estimator, antithetic):
    """Same noise values, summed in other blocks: equal up to float32 rounding of the sums."""
    model, x, y = _problem()
    kw = dict(estimator=estimator, copies=40, seed=3, antithetic=antithetic)
    kept = minilr.estimate_gradient(model, x, y, **kw)
    monkeypatch.setattr(es, "KEEP_FLOATS", 0)
    redrawn = minilr.estimate_gradient(model, x, y, **kw)
    for k in kept:
        np.testing.assert_allclose(redrawn[k], kept[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_redrawing_keeps_memory_flat_in_copies(monkeypatch):
    """Kept noise grows like K m (d + 1); redrawn, the peak is one block's. The 784-256 layer's
    noise at K = 400 alone would be 320 MB: the whole estimate must stay far below that and not grow
    (<= 1.2x) from K = 100 to K = 400."""
    monkeypatch.setattr(es, "KEEP_FLOATS", 0)
    model = minilr.MLP([784, 256, 10], seed=0)
    x = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    y = np.arange(4) % 10
    minilr.estimate_gradient(model, x, y, estimator="es", copies=8, seed=0)  # compile first
    peaks = []
    for k in (100, 400):
        tracemalloc.start()
        minilr.estimate_gradient(model, x, y, estimator="es", copies=k, seed=0)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] <= 1.2 * peaks[0], peaks
    assert peaks[1] < 60e6, peaks
