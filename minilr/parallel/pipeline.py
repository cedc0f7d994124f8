"""The training pipeline of the paper's Fig. 2 (Sec. 3.4), as a small schedule simulator.

A model of ``L`` layers is trained on a batch split into buckets. The *computation units* hold the
layers and the loss module: unit ``l`` holds layer ``l`` (its forward pass, its gradient, its
update), the last unit holds the loss. Units are *atomic*: one task at a time, and a task, once
started, runs to its end. The tasks of one bucket ``b`` and their dependencies:

* ``F_l``: forward of layer ``l`` (after ``F_{l-1}``); ``L``: the loss (after ``F_L``);
* backprop (``method="bp"``): ``L'`` the loss's own backward pass (``dL/d output``, after ``L``),
  then ``B_L, ..., B_1``, each after the one above it: the chain rule;
* LR (``method="lr"``): ``G_1 .. G_L``, each after ``L`` only: a layer's LR gradient needs the
  loss, its input and its noise, nothing from the other layers (Sec. 3.3);
* ``U``: one parameter update on every unit at once, after every gradient of every bucket.

A unit that is free runs the ready task that could start earliest (ties: the forward pass first,
as in GPipe, then the earlier bucket), so forward passes of later buckets overlap the gradients of
earlier ones.

**Fig. 2.** Four layers, three buckets, every task one time step ("one computation task per time
step"): backprop takes 15 steps and leaves 40 of the 5 x 15 unit-steps idle, 53.3 %; the LR
pipeline takes 10 steps, a 1.5x speed-up, and leaves 18 unit-steps idle: 24 % of backprop's 75
unit-steps (36 % of its own 5 x 10). :func:`paper_setting` runs exactly this. (The paper gives no
task table; this reading, loss backward and a closing update included, is the one that yields all
three of its numbers with every task one step.)

The same simulator takes measured per-layer times (:func:`measure_times`), in seconds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Task", "Schedule", "simulate", "compare", "paper_setting", "measure_times", "draw"]

_ORDER = {"F": 0, "L": 1, "L'": 2, "B": 3, "G": 3, "U": 4}


@dataclass(frozen=True)
class Task:
    """One task of the schedule: ``kind`` in F, L, L', B, G, U; ``layer`` (1-based, 0 for the loss
    and the update), ``bucket`` (1-based, 0 for the update), the ``unit`` it runs on, when."""

    kind: str
    layer: int
    bucket: int
    unit: int
    start: float
    end: float

    @property
    def label(self) -> str:
        return f"{self.kind}{self.layer}" if self.kind in ("F", "B", "G") else self.kind


@dataclass
class Schedule:
    """What :func:`simulate` returns: the tasks, their units, the time they take and the idle share."""

    method: str
    tasks: list
    units: int
    unit_names: list = field(default_factory=list)

    @property
    def makespan(self) -> float:
        """Time steps (or seconds) from the first task's start to the last task's end."""
        return max(t.end for t in self.tasks)

    @property
    def busy(self) -> float:
        """Unit-time spent on tasks, summed over the units."""
        return sum(t.end - t.start for t in self.tasks)

    @property
    def idle(self) -> float:
        """Idle unit-time inside the makespan, summed over the units."""
        return self.units * self.makespan - self.busy

    def idle_fraction(self, space: float | None = None) -> float:
        """Idle unit-time over ``space`` (default: this schedule's ``units x makespan``).

        Pass another schedule's space (``units x makespan``) to compare both on one scale: Fig. 2's
        24 % is the LR pipeline's idle unit-steps over backprop's space.
        """
        space = self.units * self.makespan if space is None else space
        if not space > 0:
            raise ValueError(f"space must be > 0, got {space}")
        return self.idle / space

    def grid(self):
        """For unit-time schedules: ``grid[u][t]`` = the label running on unit ``u`` in slot ``t``
        ("" when idle). Bucket numbers are in :attr:`tasks`."""
        T = int(round(self.makespan))
        g = [[""] * T for _ in range(self.units)]
        for t in self.tasks:
            for s in range(int(round(t.start)), int(round(t.end))):
                g[t.unit][s] = t.label
        return g


def _times(values, name, n=None):
    arr = np.atleast_1d(np.asarray(values, dtype=float))
    if arr.ndim != 1 or (n is not None and arr.size != n) or arr.size == 0:
        want = f"{n} numbers" if n is not None else "a non-empty list of numbers"
        raise ValueError(f"{name} must be {want} (one per layer), got {values!r}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must hold finite times >= 0, got {values!r}")
    return arr


def simulate(method, forward, loss=1.0, gradient=None, buckets=3, loss_backward=None, update=1.0) -> Schedule:
    """Schedule one training step of ``buckets`` buckets on ``len(forward) + 1`` atomic units.

    Parameters
    ----------
    method : "bp" | "lr"
        Backprop (chain-rule gradients, layer by layer from the top) or the LR pipeline (every
        layer's gradient as soon as the bucket's loss is known).
    forward : list of float
        Forward time of each layer, per bucket.
    loss : float
        Time of the loss of one bucket.
    gradient : list of float, optional
        Gradient time of each layer per bucket: ``B_l`` for "bp", ``G_l`` for "lr". Defaults to
        ``forward``.
    buckets : int
        Buckets the batch is split into.
    loss_backward : float, optional
        Backprop only: time of the loss's backward pass; defaults to ``loss``.
    update : float
        Time of the parameter update that closes the step (all units at once); 0 for none.
    """
    if method not in ("bp", "lr"):
        raise ValueError(f"method must be 'bp' or 'lr', got {method!r}")
    f = _times(forward, "forward")
    n = f.size
    g = f if gradient is None else _times(gradient, "gradient", n)
    loss = float(_times(loss, "loss", 1)[0])
    lb = loss if loss_backward is None else float(_times(loss_backward, "loss_backward", 1)[0])
    update = float(_times(update, "update", 1)[0])
    if isinstance(buckets, bool) or not isinstance(buckets, (int, np.integer)) or buckets < 1:
        raise ValueError(f"buckets must be an integer >= 1, got {buckets!r}")
    units = n + 1
    lu = n  # the loss unit (0-based), after the layer units 0 .. n - 1

    # name -> (duration, unit, dependencies)
    spec = {}
    for b in range(1, buckets + 1):
        for l in range(1, n + 1):
            spec[("F", l, b)] = (f[l - 1], l - 1, [("F", l - 1, b)] if l > 1 else [])
        spec[("L", 0, b)] = (loss, lu, [("F", n, b)])
        if method == "bp":
            spec[("L'", 0, b)] = (lb, lu, [("L", 0, b)])
            for l in range(n, 0, -1):
                above = ("B", l + 1, b) if l < n else ("L'", 0, b)
                spec[("B", l, b)] = (g[l - 1], l - 1, [above])
        else:
            for l in range(1, n + 1):
                spec[("G", l, b)] = (g[l - 1], l - 1, [("L", 0, b)])
    grads = [k for k in spec if k[0] in ("B", "G")]
    if update > 0:
        for u in range(units):
            spec[("U", u, 0)] = (update, u, grads)

    end, free = {}, [0.0] * units
    tasks, todo = [], set(spec)
    while todo:
        # the ready task that can start first; ties: the forward pass first (it feeds the
        # pipeline), then the earlier bucket, then the lower layer
        best, best_key = None, None
        for name in todo:
            dur, unit, deps = spec[name]
            if all(d in end for d in deps):
                start = max([free[unit]] + [end[d] for d in deps])
                key = (start, _ORDER[name[0]], name[2], name[1])
                if best_key is None or key < best_key:
                    best, best_key = name, key
        dur, unit, _ = spec[best]
        start = best_key[0]
        end[best] = free[unit] = start + dur
        todo.discard(best)
        kind, layer, bucket = best
        tasks.append(Task(kind, layer if kind != "U" else 0, bucket, unit, start, start + dur))
    names = [f"unit {u + 1} (layer {u + 1})" for u in range(n)] + [f"unit {units} (loss)"]
    tasks.sort(key=lambda t: (t.unit, t.start))
    return Schedule(method, tasks, units, names)


def compare(forward, loss=1.0, gradient_bp=None, gradient_lr=None, buckets=3, loss_backward=None, update=1.0):
    """Backprop and the LR pipeline side by side: ``(bp, lr, summary)``.

    ``summary`` holds both makespans, the speed-up ``bp / lr``, both idle shares over their own
    space (units x makespan) and the LR pipeline's idle unit-time over backprop's space.
    """
    bp = simulate("bp", forward, loss, gradient_bp, buckets, loss_backward, update)
    lr = simulate("lr", forward, loss, gradient_lr, buckets, None, update)
    summary = {
        "bp_steps": bp.makespan, "lr_steps": lr.makespan, "speedup": bp.makespan / lr.makespan,
        "bp_idle": bp.idle_fraction(), "lr_idle": lr.idle_fraction(),
        "lr_idle_of_bp_space": lr.idle_fraction(bp.units * bp.makespan),
    }
    return bp, lr, summary


def paper_setting():
    """Fig. 2: four layers, three buckets, every task (forward, loss, backward, gradient, update) one
    time step. Returns :func:`compare`'s ``(bp, lr, summary)``: 15 vs 10 steps (1.5x), 53.3 % idle
    for backprop, LR's 18 idle unit-steps = 24 % of backprop's 75."""
    return compare([1, 1, 1, 1], loss=1, buckets=3, loss_backward=1, update=1)


def measure_times(sizes=(64, 256, 256, 10), copies=100, batch=50, repeats=5, seed=0):
    """Per-layer times, in seconds, of the products one bucket's step runs on this machine.

    An MLP of ``sizes`` (ReLU between layers) with ``copies * batch`` rows: forward ``h W^T + b +
    sigma eps`` (``eps`` from :mod:`minilr.noise`) then the activation; the loss (softmax cross-entropy); the LR gradient
    ``(L eps / sigma)^T x`` of each layer (Eq. 1); backprop's ``dW = delta^T x`` and
    ``delta_{below} = (delta W) * phi'`` of each layer; the loss's backward ``softmax - onehot``;
    the update (an Adam-like few passes over the weights). Each time is the best of ``repeats``
    (the least disturbed by other work on the machine).
    Returns a dict of keyword arguments for :func:`compare`.
    """
    rng = np.random.default_rng(seed)
    n = copies * batch
    Ws = [rng.standard_normal((m, d)).astype(np.float32) * np.float32(d ** -0.5) for d, m in zip(sizes[:-1], sizes[1:])]
    xs, eps = [rng.standard_normal((n, sizes[0])).astype(np.float32)], []

    def best(fn):
        out, ts = None, []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            ts.append(time.perf_counter() - t0)
        return float(np.min(ts)), out

    from .. import noise  # the library's counter-based noise, as the estimators draw it

    key = noise.key_from_seed(np.random.SeedSequence(seed))
    fwd, gl, gb = [], [], []
    for j, W in enumerate(Ws):
        def forward(j=j, W=W):
            e = noise.normal(key, (n, W.shape[0]), start=j * n * W.shape[0])
            v = xs[j] @ W.T + np.float32(0.1) * e
            return (np.maximum(v, 0) if j < len(Ws) - 1 else v), e
        t, (h, e) = best(forward)
        fwd.append(t)
        xs.append(h)
        eps.append(e)
    logits = xs[-1]
    labels = rng.integers(0, sizes[-1], n)

    def loss_fn():
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return p, -np.log(p[np.arange(n), labels] + 1e-12)
    t_loss, (p, Lrows) = best(loss_fn)

    def loss_back():
        d = p.copy()
        d[np.arange(n), labels] -= 1
        return d
    t_lb, delta = best(loss_back)
    for j, W in enumerate(Ws):
        gl.append(best(lambda j=j: (eps[j] * (Lrows * np.float32(10.0))[:, None]).T @ xs[j])[0])
    for j in range(len(Ws) - 1, -1, -1):
        def backward(j=j, d=delta):
            dW = d.T @ xs[j]
            below = (d @ Ws[j]) * (xs[j] > 0) if j > 0 else None
            return dW, below
        t, (_, below) = best(backward)
        gb.insert(0, t)
        delta = below if below is not None else delta
    state = [(np.zeros_like(W), np.zeros_like(W)) for W in Ws]

    def upd():
        for W, (m1, m2) in zip(Ws, state):
            g = W * np.float32(1e-3)
            m1 *= 0.9
            m1 += 0.1 * g
            m2 *= 0.999
            m2 += 0.001 * g * g
            W -= 1e-3 * m1 / (np.sqrt(m2) + 1e-8)
    t_upd = best(upd)[0] / len(Ws)  # every unit updates its own layer at once
    return {"forward": fwd, "loss": t_loss, "gradient_bp": gb, "gradient_lr": gl,
            "loss_backward": t_lb, "update": t_upd}


_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def draw(schedules, path=None, titles=None, unit_time=True):
    """Draw schedules one above the other, like Fig. 2: a row per unit, a box per task, coloured by
    bucket (the update grey), on one common time axis. Returns the matplotlib Figure."""
    from .. import plots

    schedules = list(schedules)
    frame = max(s.makespan for s in schedules)
    space = schedules[0].units * schedules[0].makespan
    fig, axes = plots.new_figure(1, len(schedules), width=9.0, height=0.45 * schedules[0].units + 1.0)
    axes = np.atleast_1d(axes)
    for i, (ax, s) in enumerate(zip(axes, schedules)):
        for t in s.tasks:
            colour = "#bbbbbb" if t.kind == "U" else _COLOURS[(t.bucket - 1) % len(_COLOURS)]
            hatch = "//" if t.kind in ("B", "G", "L'") else None
            ax.broken_barh([(t.start, t.end - t.start)], (t.unit - 0.4, 0.8), facecolors=colour,
                           edgecolor="black", linewidth=0.6, hatch=hatch)
            if unit_time or (t.end - t.start) > frame / 40:
                ax.text((t.start + t.end) / 2, t.unit, t.label, ha="center", va="center", fontsize=7)
        ax.set_yticks(range(s.units), [n.split(" (")[1].rstrip(")") if "(" in n else n for n in s.unit_names])
        ax.set_ylim(s.units - 0.5, -0.5)
        ax.set_xlim(0, frame)
        if unit_time:
            ax.set_xticks(range(0, int(round(frame)) + 1))
            ax.grid(axis="x", linewidth=0.3)
        title = titles[i] if titles else (
            f"{'backprop' if s.method == 'bp' else 'LR pipeline'}: {s.makespan:.4g} "
            f"{'steps' if unit_time else 's'}, idle {100 * s.idle_fraction():.1f} % of its space, "
            f"{100 * s.idle_fraction(space):.1f} % of backprop's")
        ax.set_title(title, fontsize=9)
    axes[-1].set_xlabel("time step" if unit_time else "seconds")
    fig.legend(handles=[_patch(_COLOURS[b], f"bucket {b + 1}") for b in range(max(t.bucket for t in schedules[0].tasks))]
               + [_patch("#bbbbbb", "update"), _patch("white", "gradient", "//")],
               loc="outside right upper", fontsize=7)
    return plots._finish(fig, path)


def _patch(colour, label, hatch=None):
    from matplotlib.patches import Patch

    return Patch(facecolor=colour, edgecolor="black", hatch=hatch, label=label)
