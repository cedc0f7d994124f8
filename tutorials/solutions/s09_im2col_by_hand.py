"""Tutorial 9, exercise 1: the im2col unfold by hand, and a convolution's LR gradient from it.

A 1-D convolution is one affine map applied at every output position ``p`` to the patch ``U_p``
(``C_in * k`` numbers under the kernel). With noise ``eps`` per position and output channel, the
LR estimate (Eq. 1 summed over positions) is ``(1/N) sum_{n,p} L_n eps_{n,p} / sigma  U_{n,p}^T``.

``check()`` compares the hand-written unfold with ``minilr.conv.im2col`` (exactly) and with the
layer's own forward pass, and tests the hand-written LR gradient against the exact gradient
(``minilr.reference.gradient``): the noise enters additively and does not depend on the weights,
so under the squared loss the smoothed loss has the exact gradient and LR is unbiased for it.
"""
from __future__ import annotations

import numpy as np

import minilr
from minilr import reference
from minilr.conv import im2col


def unfold(x, kernel, stride, padding):
    """``U`` (N, P, C * kernel) of a 1-D input ``x`` (N, C, L): row ``p`` holds the patch under the
    kernel at output position ``p``, channel-major (the order of ``weight.reshape(C_out, -1)``)."""
    N, C, L = x.shape
    xp = np.zeros((N, C, L + 2 * padding), dtype=x.dtype)
    xp[:, :, padding:padding + L] = x
    P = (L + 2 * padding - kernel) // stride + 1
    U = np.empty((N, P, C * kernel), dtype=x.dtype)
    for n in range(N):
        for p in range(P):
            for c in range(C):
                for j in range(kernel):
                    U[n, p, c * kernel + j] = xp[n, c, p * stride + j]
    return U


def conv_lr_gradient(W, b, sigma, x, y, *, kernel, stride, padding, copies, seed):
    """LR estimate of ``d/dW mean_n 1/2 |conv(x_n) - y_n|^2`` (output flattened channel-major, as
    ``Flatten`` does), leave-one-out baseline; also each copy's contribution ``(K, m, d)``."""
    m = W.shape[0]
    U = unfold(x, kernel, stride, padding)                    # (N, P, d)
    N, P, _ = U.shape
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((copies, N, P, m))
    v = U @ W.reshape(m, -1).T + b + sigma * eps              # (K, N, P, m)
    out = v.transpose(0, 1, 3, 2).reshape(copies, N, m * P)   # channel-major, like Flatten
    L = 0.5 * ((out - y) ** 2).sum(axis=2)                    # (K, N)
    Lc = L - (L.sum(axis=0, keepdims=True) - L) / (copies - 1)
    per_copy = np.einsum("kn,knpm,npd->kmd", Lc, eps / sigma, U) / N
    return per_copy.mean(axis=0), per_copy


def check():
    rng = np.random.default_rng(0)
    # 1. the unfold: against the library's im2col (exactly) and the layer's forward pass
    x = rng.standard_normal((4, 2, 9))
    model = minilr.Sequential([minilr.Conv1d(2, 3, 3, stride=2, padding=1), minilr.Flatten()],
                              sigma=0.3, seed=1, dtype=np.float64, input_shape=(2, 9))
    conv = model.layers[0]
    U = unfold(x, 3, 2, 1)
    lib, (P,) = im2col(x, conv.kernel_size, conv.stride, conv.padding)
    assert U.shape == lib.shape and np.array_equal(U, lib), "unfold differs from minilr.conv.im2col"
    by_hand = (U @ conv.weight.reshape(3, -1).T + conv.bias).transpose(0, 2, 1)  # (N, m, P)
    assert np.allclose(by_hand, conv.forward(x, np), atol=1e-12), "U W^T + b is not the convolution"
    # 2. the LR gradient from it, against the exact gradient
    y = rng.standard_normal((4, 3 * P))
    exact = reference.gradient(model, x, y, loss="mse")["0.weight"].reshape(3, -1)
    K = 20000
    g, per_copy = conv_lr_gradient(conv.weight, conv.bias, conv.sigma, x, y, kernel=3, stride=2, padding=1,
                                   copies=K, seed=5)
    se = per_copy.std(axis=0, ddof=1) / np.sqrt(K)
    z = np.abs(g - exact) / se
    # 18 weights, each |z| ~ |N(0, 1)| if unbiased: P(max |z| > 4.5) < 18 * 6.8e-6 = 1.2e-4 (union bound)
    assert z.max() < 4.5, f"LR gradient of the conv layer looks biased: max |z| = {z.max():.2f}"
    # the test has power: a bias of 10 % of the largest gradient entry would lie beyond 4.5 s.e.
    assert 4.5 * se.max() < 0.1 * np.abs(exact).max(), f"too few copies for a sharp test (s.e. {se.max():.2e})"
    cos = float((g * exact).sum() / np.linalg.norm(g) / np.linalg.norm(exact))
    return z.max(), cos


if __name__ == "__main__":
    zmax, cos = check()
    print(f"unfold = im2col; LR gradient unbiased (max |z| {zmax:.2f}), cosine to exact {cos:.3f}")
