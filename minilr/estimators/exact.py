"""``"bp"``: the exact, noiseless gradient by hand-written backprop (:mod:`minilr.reference`), as an
estimator like the others so that training compares them on equal terms. Sigma gets a zero."""
from __future__ import annotations

import copy

from .. import reference
from ..layers import Linear


class Exact:
    name, approx = "bp", False

    def estimate(self, model, x, y, s, ss, bk):
        """(exact grads on the device, noiseless mean loss); the work runs on the host."""
        xh, yh = bk.to_numpy(x), bk.to_numpy(y)
        host = model if bk.name == "numpy" else _host_copy(model, bk)
        with bk.engine.session():  # the engine's BLAS settings: same bits beside other estimates
            g = reference.gradient(host, xh, yh, s.loss)
        grads = {k: bk.asarray(g[k], model.dtype) if k in g else bk.xp.zeros_like(p)
                 for k, p in model.parameters().items()}
        return grads, reference.loss(host, xh, yh, s.loss)


def _host_copy(model, bk):
    """A shallow copy of a device-resident model with its arrays on the host (for the reference)."""
    host = copy.copy(model)
    host.layers = []
    for layer in model.layers:
        if isinstance(layer, Linear):
            l2 = copy.copy(layer)
            l2.weight, l2.bias, l2.sigma = (bk.to_numpy(a) for a in (layer.weight, layer.bias, layer.sigma))
            host.layers.append(l2)
        else:
            host.layers.append(layer)
    return host
