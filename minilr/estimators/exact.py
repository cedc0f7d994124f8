"""``"bp"``: the exact, noiseless gradient by hand-written backprop (:mod:`minilr.reference`), as an
estimator like the others so that training compares them on equal terms. Sigma gets a zero."""
from __future__ import annotations

from .. import reference


class Exact:
    name, approx = "bp", False

    def estimate(self, model, x, y, s, ss, bk):
        """(exact grads on the device, noiseless mean loss); the work runs on the host."""
        xh, yh = bk.to_numpy(x), bk.to_numpy(y)
        host = model if bk.name == "numpy" else _host_copy(model, bk)
        with bk.engine.session():  # the engine's BLAS settings: same bits beside other estimates
            g = reference.gradient(host, xh, yh, s.loss, surrogate=s.surrogate)
        grads = {k: bk.asarray(g[k], model.dtype) if k in g else bk.xp.zeros_like(p)
                 for k, p in model.parameters().items()}
        return grads, reference.loss(host, xh, yh, s.loss)


def _host_copy(model, bk):
    """A copy of a device-resident model with every noise site's arrays on the host (for the reference)."""
    host = model.copy()
    for _, layer, name in host.noise_sites():
        for p in ("weight", "bias", "sigma"):
            if getattr(layer, name + p, None) is not None:
                setattr(layer, name + p, bk.to_numpy(getattr(layer, name + p)))
    return host
