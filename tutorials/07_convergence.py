r"""
7. Convergence in practice: step sizes, projection, sigma bounds
================================================================

The paper proves (Thm. 2) that the projected recursion

.. math:: \omega_{k+1} = \Pi_\Omega\big(\omega_k - \lambda_k\,\tilde g_k\big)\qquad\text{(Eq. 4)}

converges with probability one, given a compact convex set :math:`\Omega` (Assumption 1), a
coordinate-wise convex objective (2), steps with :math:`\sum_k\lambda_k = \infty` and
:math:`\sum_k\lambda_k^2 < \infty` (3), and a bounded loss (4). Each assumption is a knob in minilr:
``train(..., optimizer="sgd", schedule="robbins-monro")`` for the steps,
``weight_bound=`` and ``sigma_bounds=`` for :math:`\Omega` (``minilr.optim.Projection``). We turn each knob
on a problem where the answer is known: linear regression, convex with a unique minimiser.
"""

# %%
import os
from pathlib import Path

import numpy as np

import minilr
from minilr import plots

QUICK = os.environ.get("MINILR_QUICK", "0") not in ("", "0")
FIG = plots.figures_dir(Path(__file__).parent if "__file__" in globals() else ".")
print("quick mode" if QUICK else "full mode", "- figures go to", FIG)

# %%
# Step sizes (Assumption 3)
# -------------------------
#
# A stochastic gradient is the true one plus zero-mean noise :math:`\delta_k`. The steps must add up to
# infinity so the iterate can travel any distance, and their squares must add up to something
# finite so the accumulated noise :math:`\sum_k\lambda_k\delta_k` (a martingale, in the proof) stays
# bounded. A constant step fails the second condition: the iterate keeps jittering at a level set
# by :math:`\lambda`. ``minilr.optim.robbins_monro(lr, decay_steps, power)`` gives
# :math:`\lambda_k = \lambda_0/(1 + k/k_0)^p`, which meets both conditions for :math:`\tfrac12 < p \le 1`.

# %%
k = np.arange(1_000_000)
schedules = {"constant": np.full(k.size, minilr.optim.constant(0.1)(0))}
for p in (1.0, 0.6):
    step = minilr.optim.robbins_monro(0.1, decay_steps=100, power=p)
    schedules[f"Robbins-Monro, power {p}"] = 0.1 / (1 + k / 100) ** p
    assert np.isclose(step(12345), schedules[f"Robbins-Monro, power {p}"][12345])
for name, lam in schedules.items():
    print(f"{name:26s} sum of steps to 1e4, 1e6: {lam[:10_000].sum():10.1f} {lam.sum():10.1f}   "
          f"sum of squares: {(lam[:10_000] ** 2).sum():8.3f} {(lam ** 2).sum():8.3f}")
try:
    minilr.optim.robbins_monro(0.1, power=0.5)
except ValueError as err:
    print("power 0.5 is refused:", err)

fig, axes = plots.new_figure(ncols=2)
for name, lam in schedules.items():
    axes[0].plot(k[1::97] + 1, np.cumsum(lam)[1::97], label=name)
    axes[1].plot(k[1::97] + 1, np.cumsum(lam ** 2)[1::97], label=name)
for ax, t in zip(axes, (r"$\sum_{j\leq k}\lambda_j$ (must diverge)", r"$\sum_{j\leq k}\lambda_j^2$ (must converge)")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step k")
    ax.set_title(t)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
plots.save(fig, FIG / "07_step_sizes.png")
fig

# %%
# With power 1 the sum of steps grows only like :math:`\log k` (the printed sums double between
# :math:`10^4` and :math:`10^6` steps): slowly, but without bound, while the sum of squares has settled.

# %%
# Constant versus decaying steps with LR gradients
# ------------------------------------------------
#
# Linear regression with a ``minilr.Linear`` layer and ``loss="mse"``: the smoothed loss differs from
# the noiseless one by a constant (tutorial 1), so both have the least-squares solution
# :math:`\omega^*` as their unique minimiser. We run plain SGD on LR estimates, once with a constant step
# and once with ``schedule="robbins-monro"`` (minilr sets :math:`k_0` to a tenth of all steps), and record
# the distance :math:`\lVert\omega_k - \omega^*\rVert` after every epoch.

# %%
d, m, n = 8, 3, 512
rng = np.random.default_rng(0)
x = rng.standard_normal((n, d)).astype(np.float32)
W_true = rng.standard_normal((m, d))
y = (x @ W_true.T + 0.5 + 0.3 * rng.standard_normal((n, m))).astype(np.float32)
X1 = np.hstack([x, np.ones((n, 1))]).astype(np.float64)
sol = np.linalg.lstsq(X1, y.astype(np.float64), rcond=None)[0].T      # (m, d + 1): weights and bias
W_star, b_star = sol[:, :d], sol[:, d]


def distance(model, W_ref, b_ref):
    lay = model.layers[0]
    return float(np.sqrt(np.sum((lay.weight - W_ref) ** 2) + np.sum((lay.bias - b_ref) ** 2)))


EPOCHS = 15 if QUICK else 100
K = 10 if QUICK else 20


def run(schedule, lr=0.1, **kw):
    layer = minilr.Sequential([minilr.Linear(d, m)], sigma=0.1, seed=0, **kw.pop("model_kw", {}))
    W_ref, b_ref = kw.pop("target", (W_star, b_star))
    dist = [distance(layer, W_ref, b_ref)]
    minilr.train(layer, (x, y), estimator="lr", loss="mse", copies=K, epochs=EPOCHS, batch_size=32,
                 optimizer="sgd", lr=lr, schedule=schedule, seed=0, progress=False,
                 callback=lambda e, h: dist.append(distance(layer, W_ref, b_ref)), **kw)
    return layer, np.asarray(dist)


dists = {}
for schedule in ("constant", "robbins-monro"):
    _, dists[f"SGD, {schedule} step"] = run(schedule)
for name, dist in dists.items():
    print(f"{name:28s} distance to the minimiser: start {dist[0]:.3f}, after {EPOCHS // 3} epochs "
          f"{dist[EPOCHS // 3]:.4f}, at the end {dist[-1]:.4f}")

# %%
# The constant step gets close fast, then hovers at a distance set by the step and the gradient
# noise. The decaying step keeps shrinking that noise; the printed end distances compare the two.
#
# The projection :math:`\Pi_\Omega` (Eq. 4, Assumption 1)
# -------------------------------------------------------
#
# A weight box :math:`|\omega_i|\le B` makes :math:`\Omega` compact. After every step minilr clips the
# parameters back into the box (``minilr.optim.Projection``, via ``train(..., weight_bound=B)``). With
# a box that cuts off the unconstrained optimum, the recursion must converge to the best point
# *inside* the box. We compute that point independently, by projected gradient descent with the
# exact gradient, and check where LR plus projection ends up.

# %%
B = float(np.quantile(np.abs(sol), 0.75))       # a box that cuts off a quarter of the coordinates
theta = np.zeros_like(sol)
step = 1.0 / np.linalg.eigvalsh(X1.T @ X1 / n).max()
for _ in range(20_000):
    grad = (theta @ X1.T - y.T) @ X1 / n
    theta = np.clip(theta - step * grad, -B, B)
W_box, b_box = theta[:, :d], theta[:, d]
print(f"box |w| <= {B:.3f}: {int((np.abs(sol) > B).sum())} of {sol.size} unconstrained coordinates lie outside it")
boxed, dists_box = run("robbins-monro", weight_bound=B, target=(W_box, b_box))
dists["SGD, robbins-monro, projected (distance to box optimum)"] = dists_box
print(f"with the projection: distance to the box-constrained optimum {dists_box[-1]:.4f}; "
      f"largest |parameter| {max(float(np.abs(p).max()) for p in boxed.parameters().values()):.3f} (bound {B:.3f})")

fig, ax = plots.new_figure(width=6.5)
for name, dist in dists.items():
    ax.plot(np.arange(len(dist)), dist, label=name)
ax.set_yscale("log")
ax.set_xlabel("epoch")
ax.set_ylabel("distance to the optimum")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plots.save(fig, FIG / "07_step_size_and_projection.png")
fig

# %%
# Bounds on :math:`\sigma`
# ------------------------
#
# When :math:`\sigma` is learned (tutorial 2), :math:`\Omega` must also keep it in :math:`[\sigma_{\min}, \sigma_{\max}]`
# with :math:`\sigma_{\min} > 0`: the LR score has :math:`1/\sigma` in it, and a :math:`\sigma` heading to zero makes
# the estimate blow up. On this problem :math:`\sigma` *does* head to zero: the expected loss is
# :math:`\tfrac12\lVert\mu - y\rVert^2 + \tfrac12\sum_i\sigma_i^2`, whose gradient in :math:`\sigma_i` is
# :math:`\sigma_i > 0`. Noise only hurts a regression, so the optimum is on the lower bound. We start at
# :math:`\sigma = 0.5` and train with ``learn_sigma=True`` under two lower bounds.

# %%
traces = {}
for s_min in (0.2, 0.02):
    layer = minilr.Sequential([minilr.Linear(d, m)], sigma=0.5, seed=0, learn_sigma=True)
    trace = [float(layer.layers[0].sigma.mean())]
    minilr.train(layer, (x, y), estimator="lr", loss="mse", copies=K, epochs=EPOCHS, batch_size=32,
                 optimizer="sgd", lr=0.1, schedule="robbins-monro", sigma_bounds=(s_min, 1.0), seed=0,
                 progress=False, callback=lambda e, h, layer=layer, trace=trace: trace.append(float(layer.layers[0].sigma.mean())))
    traces[f"sigma_bounds=({s_min}, 1.0)"] = np.asarray(trace)
    sig = layer.layers[0].sigma
    print(f"sigma_bounds=({s_min}, 1.0): final sigma {np.round(sig, 4)}; at the lower bound: "
          f"{int(np.isclose(sig, s_min).sum())} of {sig.size}; distance to the minimiser {distance(layer, W_star, b_star):.4f}")

fig, ax = plots.new_figure()
for name, tr in traces.items():
    ax.plot(np.arange(len(tr)), tr, label=name)
ax.set_yscale("log")
ax.set_xlabel("epoch")
ax.set_ylabel(r"mean learned $\sigma$")
ax.set_title(r"learned $\sigma$ falls to $\sigma_{\min}$ (regression)")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plots.save(fig, FIG / "07_sigma_bounds.png")
fig

# %%
# The projection stops :math:`\sigma` at :math:`\sigma_{\min}`; the printed final values show where each run
# ended (a bound not reached yet means :math:`\sigma` was still falling when training stopped). In a
# classifier, noise is not purely harmful (it smooths the loss and explores), so learned :math:`\sigma`
# need not fall to the bound; the bounds are still what the convergence theorem needs, and
# ``sigma_bounds`` defaults to :math:`(10^{-3}, 10)`. Adam and momentum, which people use in practice
# (and the other tutorials use), fall outside Thm. 2's recursion; with a projection and a decaying
# step they behave much the same on this problem.
