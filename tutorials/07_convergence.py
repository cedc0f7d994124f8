r"""
7. Convergence in practice: step sizes, projection, sigma bounds
================================================================

The paper proves (Thm. 2) that the projected recursion

.. math:: \omega_{k+1} = \Pi_\Omega\big(\omega_k - \lambda_k\,\tilde g_k\big)\qquad\text{(Eq. 4)}

converges with probability one to the unique zero :math:`\tilde\omega^*` of :math:`\mathcal{J}`, the
expected ALR update (Eq. 5), under these assumptions (paper, Sec. 3.2):

1. the parameter set :math:`\Omega` is closed, convex and **compact**;
2. each coordinate's cost is **continuously differentiable** and **convex in that coordinate**
   when the others are held fixed;
3. the steps satisfy :math:`\lambda_k > 0`, :math:`\sum_k\lambda_k = \infty`, :math:`\sum_k\lambda_k^2 < \infty`;
4. the loss is **uniformly bounded** on :math:`\Omega`, :math:`|\mathcal{L}_n| \le M`;

and, stated beside them, that :math:`\tilde\omega^*` is the **unique** equilibrium in :math:`\Omega`; the
stochastic-approximation result the proof invokes (Borkar's, its Thm. 1) also needs :math:`\mathcal{J}`
**Lipschitz**. Two things are easy to miss. The limit is the zero of :math:`\mathcal{J}`, which for ALR is
*not* the minimiser of the loss (for LR, with :math:`Z` in place of :math:`\operatorname{sign} Z`, it is the
minimiser of the smoothed loss). And the recursion is plain projected SGD: Adam and momentum are
outside the theorem.

Each assumption is a knob in minilr: ``train(..., optimizer="sgd", schedule="robbins-monro")`` for
the steps, ``weight_bound=`` and ``sigma_bounds=`` for :math:`\Omega` (``minilr.optim.Projection``). We turn
each knob on a problem where the answers are known in closed form, linear regression, and run
ALR beside LR and Adam beside SGD. Last, we check which assumptions a neural network breaks.
"""

# %%
import os
from pathlib import Path

import numpy as np

import minilr
from minilr import plots

QUICK = os.environ.get("MINILR_QUICK", "0") not in ("", "0")
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path(".").resolve()
FIG = plots.figures_dir(HERE)
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
# :math:`\omega^*` as their unique minimiser. The targets carry a term the linear model cannot fit,
# :math:`0.5\,|x_0|\,x_0`; it changes nothing for LR and matters for ALR below. We run plain SGD on LR estimates, once with a constant step
# and once with ``schedule="robbins-monro"`` (minilr sets :math:`k_0` to a tenth of all steps), and record
# the distance :math:`\lVert\omega_k - \omega^*\rVert` after every epoch.

# %%
d, m, n = 8, 3, 512
rng = np.random.default_rng(0)
x = rng.standard_normal((n, d)).astype(np.float32)
W_true = rng.standard_normal((m, d))
y = (x @ W_true.T + 0.5 + 0.3 * rng.standard_normal((n, m)) + 0.5 * np.abs(x[:, :1]) * x[:, :1]).astype(np.float32)
X1 = np.hstack([x, np.ones((n, 1))]).astype(np.float64)
sol = np.linalg.lstsq(X1, y.astype(np.float64), rcond=None)[0].T      # (m, d + 1): weights and bias
W_star, b_star = sol[:, :d], sol[:, d]


def theta_of(model):
    """The layer's parameters as one (m, d + 1) array: weights, then the bias."""
    lay = model.layers[0]
    return np.hstack([lay.weight, lay.bias[:, None]]).astype(np.float64)


def distance(path, theta):
    """Distances of every iterate in ``path`` (epochs + 1, m, d + 1) to ``theta``."""
    return np.sqrt(((path - theta) ** 2).sum(axis=(1, 2)))


EPOCHS = 15 if QUICK else 100
K = 10 if QUICK else 20


def run(schedule, lr=0.1, *, estimator="lr", optimizer="sgd", **kw):
    """Train a fresh layer; return it and its parameters after every epoch (the start included)."""
    layer = minilr.Sequential([minilr.Linear(d, m)], sigma=0.1, seed=0)
    path = [theta_of(layer)]
    minilr.train(layer, (x, y), estimator=estimator, loss="mse", copies=K, epochs=EPOCHS, batch_size=32,
                 optimizer=optimizer, lr=lr, schedule=schedule, seed=0, progress=False,
                 callback=lambda e, h: path.append(theta_of(layer)), **kw)
    return layer, np.asarray(path)


dists = {}
for schedule in ("constant", "robbins-monro"):
    dists[f"SGD, {schedule} step"] = distance(run(schedule)[1], sol)
for name, dist in dists.items():
    print(f"{name:28s} distance to the minimiser: start {dist[0]:.3f}, after {EPOCHS // 3} epochs "
          f"{dist[EPOCHS // 3]:.4f}, at the end {dist[-1]:.4f}")

# %%
# The constant step gets close fast, then hovers at a distance set by the step and the gradient
# noise. The decaying step keeps shrinking that noise; the printed end distances compare the two.
#
# ALR converges too, but elsewhere
# --------------------------------
#
# For one linear layer with squared loss the expected ALR update is, exactly (tutorial 3, exercise 1),
# :math:`\mathcal{J}_{W} = c_i\,\frac1n\sum_n r(n)\operatorname{sign}(x(n))^\top` and
# :math:`\mathcal{J}_b = c_i\,\frac1n\sum_n r(n)` with :math:`r = xW^\top + b - y` and
# :math:`c_i = \sqrt{2/\pi}\,\sigma_i`, while the gradient has :math:`x(n)` where :math:`\mathcal{J}` has
# :math:`\operatorname{sign}(x(n))`. Its zero solves :math:`\sum_n r(n)\,[\operatorname{sign}(x(n)), 1] = 0`: a
# least-squares fit with the signs as "instruments", which differs from :math:`\omega^*` whenever the
# model does not fit exactly. Thm. 2 promises convergence to *that* point, :math:`\tilde\omega^*`. Two
# practical details: :math:`\mathcal{J}` is :math:`c_i` times smaller than the gradient, so SGD's step is
# divided by :math:`c_i` for ALR; and the first layer's input here is signed, so ALR keeps 2-bit signs.

# %%
S1 = np.hstack([np.sign(x), np.ones((n, 1))]).astype(np.float64)
theta_alr = np.linalg.solve((X1.T @ S1).T, (y.astype(np.float64).T @ S1).T).T   # theta X1^T S1 = Y^T S1
W_alr, b_alr = theta_alr[:, :d], theta_alr[:, d]
c_sigma = np.sqrt(2 / np.pi) * 0.1


def mse(W, b):
    return float(0.5 * np.mean(np.sum((x @ W.T + b - y) ** 2, axis=1)))


ALR_POINT = "ALR's fixed point"
gap = float(np.linalg.norm(theta_alr - sol))
print(f"ALR's fixed point is {gap:.3f} away from the least-squares solution; noiseless loss there "
      f"{mse(W_alr, b_alr):.4f} against the minimum {mse(W_star, b_star):.4f}")
paths = {"lr": run("robbins-monro", 0.1)[1], "alr": run("robbins-monro", 0.1 / c_sigma, estimator="alr")[1]}
ends = {(est, name): distance(path, point) for est, path in paths.items()
        for name, point in (("least squares", sol), ("ALR's fixed point", theta_alr))}
for est in paths:
    print(f"SGD on {est.upper():3s} (robbins-monro): distance to least squares {ends[est, 'least squares'][-1]:.4f}, "
          f"to ALR's fixed point {ends[est, ALR_POINT][-1]:.4f}")

fig, ax = plots.new_figure(width=6.5)
for (est, name), dist in ends.items():
    ax.plot(np.arange(len(dist)), dist, ls="-" if est == "lr" else "--", label=f"{est.upper()}: distance to {name}")
ax.set_yscale("log")
ax.set_xlabel("epoch")
ax.set_ylabel("distance")
ax.set_title("SGD, Robbins-Monro steps: each estimator converges to its own point")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plots.save(fig, FIG / "07_alr_vs_lr.png")
fig

# %%
# LR heads for :math:`\omega^*` and ALR for :math:`\tilde\omega^*`: as the theorem says, ALR converges, to
# the zero of its own :math:`\mathcal{J}`, and the printed losses say what that point costs.
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
boxed, path_box = run("robbins-monro", weight_bound=B)
dists_box = distance(path_box, theta)
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
          f"{int(np.isclose(sig, s_min).sum())} of {sig.size}; distance to the minimiser {float(distance(theta_of(layer)[None], sol)[0]):.4f}")

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
# ``sigma_bounds`` defaults to :math:`(10^{-3}, 10)`.
#
# Adam beside SGD
# ---------------
#
# Adam, which the other tutorials use, divides each coordinate's step by a running root mean square
# of its past estimates: that is not the recursion (4), and Thm. 2 says nothing about it. Being
# scale-free, it needs no :math:`1/c_i` correction for ALR. We run it with the same data and copies, at
# one step size (0.05) with and without the decay, and measure the distances to both points.

# %%
adam = {"LR, Adam, constant step": run("constant", 0.05, optimizer="adam")[1],
        "LR, Adam, robbins-monro": run("robbins-monro", 0.05, optimizer="adam")[1],
        "ALR, Adam, robbins-monro": run("robbins-monro", 0.05, estimator="alr", optimizer="adam")[1]}
adam_ends = {(name, target): distance(path, point)[-1] for name, path in adam.items()
             for target, point in (("least squares", sol), (ALR_POINT, theta_alr))}
print(f"{'':28s} {'to least squares':>17s} {'to ALR fixed pt':>16s}")
for name in ("SGD on LR, robbins-monro", "SGD on ALR, robbins-monro"):
    est = "lr" if " LR" in name else "alr"
    print(f"{name:28s} {ends[est, 'least squares'][-1]:17.4f} {ends[est, ALR_POINT][-1]:16.4f}")
for name in adam:
    print(f"{name:28s} {adam_ends[name, 'least squares']:17.4f} {adam_ends[name, ALR_POINT]:16.4f}")

fig, ax = plots.new_figure(width=6.5)
ax.plot(ends["lr", "least squares"], label="LR, SGD, robbins-monro: to least squares")
ax.plot(ends["alr", ALR_POINT], label="ALR, SGD, robbins-monro: to its fixed point")
ax.plot(distance(adam["LR, Adam, constant step"], sol), ls="--", label="LR, Adam, constant: to least squares")
ax.plot(distance(adam["LR, Adam, robbins-monro"], sol), ls="--", label="LR, Adam, robbins-monro: to least squares")
ax.plot(distance(adam["ALR, Adam, robbins-monro"], theta_alr), ls="--", label="ALR, Adam, robbins-monro: to its fixed point")
ax.set_yscale("log")
ax.set_xlabel("epoch")
ax.set_ylabel("distance")
ax.set_title("SGD (the theorem's recursion) and Adam (outside it)")
ax.grid(alpha=0.3)
ax.legend(fontsize=7)
plots.save(fig, FIG / "07_adam_vs_sgd.png")
fig

# %%
# Adam heads for the same points as SGD, LR to least squares and ALR to its fixed point; the printed
# end distances say how far each got in this budget, and the constant step shows that Adam, too,
# keeps jittering unless its step decays. Which optimizer gets closer depends on the step sizes
# chosen, so read the numbers as a measurement at these settings, not a ranking.
#
# Where the assumptions fail: neural networks
# -------------------------------------------
#
# On a network the theorem's hypotheses are not met, so it guarantees nothing there:
#
# - **Assumption 2, coordinate-wise convexity**, fails: a first-layer weight acts through a ReLU and
#   the layers after it. (Differentiability is less of a problem than it looks: the noiseless loss
#   has kinks where a ReLU switches, but the smoothed loss :math:`\mathbb{E}_\varepsilon[\mathcal{L}]` that
#   LR follows is smooth, because Gaussian noise smooths the kinks.)
# - **A unique equilibrium** fails: permuting the hidden units gives another point with exactly the
#   same loss, so minimisers (and zeros of :math:`\mathcal{J}`) come in families.
# - **Assumption 4, a bounded loss**, fails without a box: cross-entropy grows without bound as the
#   weights grow. **Assumption 1** (compact :math:`\Omega`) holds only with ``weight_bound=``; by default
#   minilr trains without one, and the other tutorials use Adam, outside the recursion.
#
# Each claim is checked below on the digits MLP of tutorial 3 at its initial weights.

# %%
(xd, yd), _ = minilr.datasets.load("digits")
xd, yd = xd[:200], yd[:200]
net = minilr.MLP([64, 32, 10], activation="relu", sigma=0.1, seed=0)
p0 = net.parameters()


def loss_at(params):
    probe = net.copy()
    probe.set_parameters(params)
    return minilr.reference.loss(probe, xd, yd)


def moved(key, index, step):
    params = {k: v.copy() for k, v in p0.items()}
    params[key][index] += step
    return params


# 1. convexity along single first-layer weights: the most negative second difference on a grid
g0 = minilr.reference.gradient(net, xd, yd)["0.weight"]
grid = np.linspace(-3, 3, 61)
second = []
for flat in np.argsort(-np.abs(g0).ravel())[:5]:   # the five weights with the largest gradient
    idx = np.unravel_index(flat, g0.shape)
    line = np.array([loss_at(moved("0.weight", idx, s)) for s in grid])
    second.append((float((line[2:] - 2 * line[1:-1] + line[:-2]).min()), tuple(int(i) for i in idx)))
worst, where = min(second)
print(f"most negative second difference of the loss along a first-layer weight {where}: {worst:.2e} "
      f"(step {grid[1] - grid[0]:.1f}; convex would be >= 0)")
# 2. a second point with the same loss: permute the hidden units
perm = np.random.default_rng(1).permutation(32)
swapped = dict(p0, **{"0.weight": p0["0.weight"][perm], "0.bias": p0["0.bias"][perm], "2.weight": p0["2.weight"][:, perm]})
same_loss = abs(loss_at(swapped) - loss_at(p0)) / loss_at(p0)   # relative: float32 sums in another order
apart = float(np.sqrt(sum(np.sum((swapped[k] - p0[k]) ** 2) for k in p0)))
print(f"permuted hidden units: loss differs by a relative {same_loss:.1e}, the parameters are {apart:.2f} apart")
# 3. the loss grows without bound along a ray
ray = {s: loss_at(dict(p0, **{"2.weight": s * p0["2.weight"], "2.bias": s * p0["2.bias"]})) for s in (1, 10, 100, 1000)}
print("loss with the read-out scaled by s:", {s: round(v, 2) for s, v in ray.items()})
print("minilr's default projection bounds the weights:", minilr.optim.Projection().weight_bound is not None)

# %%
# What this run shows
# -------------------
#
# Each line is computed from the numbers above; the full-mode record, when it exists, follows.

# %%
plots.verdicts({
    "with SGD on LR a decaying step ends nearer the minimiser than a constant step":
        (dists["SGD, robbins-monro step"][-1] < dists["SGD, constant step"][-1],
         f"end distance {dists['SGD, robbins-monro step'][-1]:.4f} vs {dists['SGD, constant step'][-1]:.4f}"),
    "ALR converges to the zero of its expected update, not to the least-squares minimiser":
        (ends["alr", ALR_POINT][-1] < ends["alr", "least squares"][-1] / 3
         and ends["lr", "least squares"][-1] < ends["lr", ALR_POINT][-1] / 3,
         f"ALR ends {ends['alr', ALR_POINT][-1]:.4f} from its fixed point, {ends['alr', 'least squares'][-1]:.4f} "
         f"from least squares; LR {ends['lr', 'least squares'][-1]:.4f} and {ends['lr', ALR_POINT][-1]:.4f}"),
    "Adam heads for the same points, and needs a decaying step too":
        (adam_ends["LR, Adam, robbins-monro", "least squares"] < adam_ends["LR, Adam, constant step", "least squares"]
         and adam_ends["ALR, Adam, robbins-monro", ALR_POINT] < adam_ends["ALR, Adam, robbins-monro", "least squares"],
         f"LR with Adam ends {adam_ends['LR, Adam, robbins-monro', 'least squares']:.4f} (decaying) vs "
         f"{adam_ends['LR, Adam, constant step', 'least squares']:.4f} (constant) from least squares; ALR with Adam "
         f"{adam_ends['ALR, Adam, robbins-monro', ALR_POINT]:.4f} from its fixed point"),
    "a ReLU network breaks Assumption 2, uniqueness and Assumption 4":
        (worst < 0 and same_loss < 1e-6 and apart > 0 and ray[1000] > 10 * ray[10],
         f"second difference {worst:.1e}; permuted point {apart:.2f} away with relative loss difference {same_loss:.0e}; "
         f"loss {ray[10]:.1f} -> {ray[1000]:.1f} along a ray"),
})
plots.show_recorded("07_convergence", here=HERE)

# %%
# Exercises
# ---------
#
# 1. **A schedule that meets Assumption 3.** Write :math:`\lambda_k = \lambda_0 / (1 + k/k_0)^p` and check
#    it against ``minilr.optim.robbins_monro``. For :math:`\tfrac12 < p \le 1` prove, by comparing the
#    sums with integrals, that :math:`\sum_{k\ge0}\lambda_k^2 \le \lambda_0^2\big(1 + \tfrac{k_0}{2p-1}\big)` and
#    :math:`\sum_{k<N}\lambda_k \ge \lambda_0 k_0 \log(1 + N/k_0)` for :math:`p = 1` (and
#    :math:`\lambda_0 k_0 \frac{(1 + N/k_0)^{1-p} - 1}{1-p}` for :math:`p < 1`), which grows without bound;
#    then check both bounds numerically. Why is :math:`p = \tfrac12` refused?
# 2. **ALR's step.** Run SGD on ALR with the *unscaled* step 0.1 and explain the printed distance
#    from :math:`c_i`.
#
# A checked solution to 1 is in ``tutorials/solutions/s07_step_sizes.py``.
