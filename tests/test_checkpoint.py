"""Checkpoints and resume: a run stopped at any moment continues to exactly the parameters of the
uninterrupted run, bit for bit (issue 10: save, load, resume; Ctrl-C; atomic steps).

* in process: stopped after every epoch (train called 1 + 1 epochs) and at steps inside an epoch
  (a KeyboardInterrupt raised in the middle of a step), for every estimator and optimizer;
* in a real process killed with SIGKILL at random moments (also mid-write of the checkpoint),
  restarted with ``resume=True`` until done;
* Ctrl-C at every point of a step (a real SIGINT sent from a trace hook at each line run): the
  model holds the old or the new parameters, never a mix, and stays usable.
"""
from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import minilr
from minilr import io as mio

train_mod = importlib.import_module("minilr.train")
ESTIMATORS = ("lr", "alr", "es", "aes", "hybrid", "a-hybrid", "bp")
OPTIMIZERS = ("sgd", "momentum", "adam")


def problem():
    (x, y), (xv, yv) = minilr.datasets.load("spirals", n=75, seed=0)
    return (x, y), (xv, yv)  # 60 training samples


def model():
    return minilr.MLP([2, 6, 5, 2], sigma=0.1, seed=0, learn_sigma=True)


KW = dict(copies=6, batch_size=25, lr=0.02, progress=False, seed=3)  # 3 steps per epoch, the last short


def params_bytes(m):
    return {k: p.tobytes() for k, p in m.parameters().items()}


def assert_same_run(a, b, ha=None, hb=None):
    assert params_bytes(a) == params_bytes(b)
    if ha is not None:
        for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert getattr(ha, name) == getattr(hb, name), name


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_one_plus_one_epochs_with_resume_is_two_epochs(tmp_path, estimator, optimizer):
    data, val = problem()
    ref = model()
    h_ref = minilr.train(ref, data, val_data=val, estimator=estimator, optimizer=optimizer, epochs=2, **KW)
    m = model()
    path = tmp_path / "run.npz"
    minilr.train(m, data, val_data=val, estimator=estimator, optimizer=optimizer, epochs=1,
                 checkpoint=path, **KW)
    fresh = model()  # a new process would start from a new model object
    h = minilr.train(fresh, data, val_data=val, estimator=estimator, optimizer=optimizer, epochs=2,
                     checkpoint=path, resume=True, **KW)
    assert_same_run(ref, fresh, h_ref, h)
    assert len(h.train_loss) == 2
    assert_same_run(ref, minilr.load(path))  # a checkpoint holds a loadable model


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("stop_at", [1, 2, 3, 4])  # steps done: in epoch 1, at its end, in epoch 2
def test_interrupted_mid_epoch_resumes_bit_for_bit(tmp_path, monkeypatch, estimator, optimizer, stop_at):
    data, val = problem()
    ref = model()
    h_ref = minilr.train(ref, data, val_data=val, estimator=estimator, optimizer=optimizer, epochs=2, **KW)
    path = tmp_path / "run.npz"
    real, calls = train_mod.estimate, []

    def interrupted(*args, **kwargs):  # Ctrl-C in the middle of step number stop_at + 1
        calls.append(1)
        if len(calls) == stop_at + 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "estimate", interrupted)
    m = model()
    with pytest.raises(KeyboardInterrupt):
        minilr.train(m, data, val_data=val, estimator=estimator, optimizer=optimizer, epochs=2,
                     checkpoint=path, **KW)
    monkeypatch.setattr(train_mod, "estimate", real)
    fresh = model()
    h = minilr.train(fresh, data, val_data=val, estimator=estimator, optimizer=optimizer, epochs=2,
                     checkpoint=path, resume=True, **KW)
    assert_same_run(ref, fresh, h_ref, h)


def test_checkpoint_every_n_steps_and_a_finished_run(tmp_path):
    data, val = problem()
    path = tmp_path / "run.npz"
    m = model()
    minilr.train(m, data, estimator="alr", epochs=2, checkpoint=path, checkpoint_every=2, **KW)
    meta, *_ = minilr.checkpoint.read(path)
    where = dict(meta["where"])
    start_loss = where.pop("start_loss")  # what divergence is measured against (issue 14)
    assert where == {"epoch": 2, "batch": 0, "step": 6, "loss_sum": 0.0, "seconds": 0.0}
    assert 0 < start_loss < float("inf")
    again = model()
    h = minilr.train(again, data, estimator="alr", epochs=2, checkpoint=path, resume=True, **KW)
    assert_same_run(m, again)  # nothing left to do: the checkpoint's model comes back
    assert len(h.train_loss) == 2


def test_resume_without_a_file_starts_afresh(tmp_path):
    data, _ = problem()
    a, b = model(), model()
    minilr.train(a, data, estimator="lr", epochs=1, **KW)
    minilr.train(b, data, estimator="lr", epochs=1, checkpoint=tmp_path / "new.npz", resume=True, **KW)
    assert_same_run(a, b)


@pytest.mark.parametrize("change,pattern", [
    ({"copies": 8}, "copies=6"), ({"lr": 0.05}, "lr=0.02"), ({"estimator": "es"}, "estimator='lr'"),
    ({"seed": 4}, "seed=3"), ({"chunk": 2}, "chunk=None"),
])
def test_resume_with_other_settings_is_refused_naming_the_setting(tmp_path, change, pattern):
    data, _ = problem()
    path = tmp_path / "run.npz"
    minilr.train(model(), data, estimator="lr", epochs=1, checkpoint=path, **KW)
    kw = {**KW, "estimator": "lr", **change}
    with pytest.raises(ValueError, match=rf"run\.npz.*{pattern}"):
        minilr.train(model(), data, epochs=2, checkpoint=path, resume=True, **kw)


def test_resume_on_other_data_or_model_is_refused(tmp_path):
    (x, y), _ = problem()
    path = tmp_path / "run.npz"
    minilr.train(model(), (x, y), estimator="lr", epochs=1, checkpoint=path, **KW)
    with pytest.raises(ValueError, match="data="):
        minilr.train(model(), (x[::-1].copy(), y[::-1].copy()), estimator="lr", epochs=2,
                     checkpoint=path, resume=True, **KW)
    with pytest.raises(ValueError, match="another model"):
        minilr.train(minilr.MLP([2, 7, 2], seed=0), (x, y), estimator="lr", epochs=2, checkpoint=path,
                     resume=True, **KW)


def test_corrupt_checkpoint_is_named(tmp_path):
    data, _ = problem()
    path = tmp_path / "run.npz"
    minilr.train(model(), data, estimator="lr", epochs=1, checkpoint=path, **KW)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(mio.FileFormatError, match="run.npz"):
        minilr.train(model(), data, estimator="lr", epochs=2, checkpoint=path, resume=True, **KW)


def test_robbins_monro_resume_needs_the_same_total_epochs(tmp_path):
    """Its decay depends on the total number of steps, so 1 + 1 epochs is not 2 unless asked as 2."""
    data, _ = problem()
    path = tmp_path / "run.npz"
    kw = dict(KW, estimator="lr", optimizer="sgd", schedule="robbins-monro", batch_size=5)
    minilr.train(model(), data, epochs=1, checkpoint=path, **kw)
    with pytest.raises(ValueError, match="decay_steps"):
        minilr.train(model(), data, epochs=2, checkpoint=path, resume=True, **kw)


def test_checkpoint_argument_checks(tmp_path):
    data, _ = problem()
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        minilr.train(model(), data, resume=True, **KW)
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint"):
        minilr.train(model(), data, checkpoint_every=2, **KW)
    with pytest.raises(ValueError, match="checkpoint_every"):
        minilr.train(model(), data, checkpoint=tmp_path / "c.npz", checkpoint_every=0, **KW)
    with pytest.raises(ValueError, match="does not exist"):
        minilr.train(model(), data, checkpoint=tmp_path / "no" / "c.npz", **KW)

    class Plain:
        def step(self, params, grads):
            pass

    with pytest.raises(TypeError, match="state"):
        minilr.train(model(), data, optimizer=Plain(), checkpoint=tmp_path / "c.npz", **KW)


# -- a real process, SIGKILLed at random moments ------------------------------------------------------
RUNNER = textwrap.dedent("""
    import sys, numpy as np, minilr
    estimator, optimizer, path, out = sys.argv[1:5]
    (x, y), _ = minilr.datasets.load("digits")
    model = minilr.MLP([64, 32, 10], sigma=0.1, seed=0)
    minilr.train(model, (x[:600], y[:600]), estimator=estimator, optimizer=optimizer, copies=50,
                 epochs=5, batch_size=20, lr=0.01, progress=False, seed=5, checkpoint=path,
                 resume=True, checkpoint_every=1)
    minilr.save(model, out)
    print("done", flush=True)
""")


def _reference_digits(estimator, optimizer):
    (x, y), _ = minilr.datasets.load("digits")
    m = minilr.MLP([64, 32, 10], sigma=0.1, seed=0)
    minilr.train(m, (x[:600], y[:600]), estimator=estimator, optimizer=optimizer, copies=50, epochs=5,
                 batch_size=20, lr=0.01, progress=False, seed=5)
    return m


def _kill_until_done(tmp_path, estimator, optimizer, seed):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    root = os.path.dirname(os.path.dirname(os.path.abspath(minilr.__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    path, out = tmp_path / "run.npz", tmp_path / "final.npz"
    rng = np.random.default_rng(seed)
    kills = 0
    for attempt in range(40):
        proc = subprocess.Popen([sys.executable, str(script), estimator, optimizer, str(path), str(out)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if kills < 6:
            # wait for training to write (a step done), then kill at a random moment after it:
            # in a step, between steps, or in the middle of writing the next checkpoint
            seen = path.stat().st_mtime_ns if path.exists() else None
            while proc.poll() is None and (not path.exists() or path.stat().st_mtime_ns == seen):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.2))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                kills += 1
                continue
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        assert "done" in stdout
        return minilr.load(out), kills
    raise AssertionError("the run never finished")


def test_sigkill_at_random_moments_then_resume_is_the_uninterrupted_run(tmp_path):
    final, kills = _kill_until_done(tmp_path, "alr", "adam", seed=1)
    assert kills >= 3, "the runs were not interrupted: make them longer"
    assert_same_run(final, _reference_digits("alr", "adam"))


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_sigkill_every_estimator_and_optimizer(tmp_path, estimator, optimizer):
    final, kills = _kill_until_done(tmp_path, estimator, optimizer, seed=2)
    assert kills >= 1
    assert_same_run(final, _reference_digits(estimator, optimizer))


# -- Ctrl-C at every point of a step ---------------------------------------------------------------
def _one_step(m, data):
    return minilr.train(m, data, estimator="lr", epochs=1, copies=4, batch_size=60, optimizer="adam",
                        lr=0.05, progress=False, seed=0)


def _in_finalizer(frame):
    """Python ignores (prints) an exception raised in a ``__del__``: not a place to test."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def test_sigint_at_every_line_of_a_step_leaves_the_old_or_the_new_model(monkeypatch):
    """A real SIGINT is sent from a trace hook at the n-th line of minilr's code run inside
    ``train`` (for every n until the call ends), so it lands where a user's Ctrl-C could: in the
    estimate, in the optimizer, in the projection, in the swap. Afterwards the model must hold
    exactly the parameters from before the step or from after it, and still work.

    The kernels run on two threads: an interrupt inside the thread pool's hand-off (its locks
    in ``ThreadPoolExecutor.submit``) used to leave a lock held and the next call waiting
    forever; the hand-off now holds SIGINT back (``minilr._signals``)."""
    monkeypatch.setenv("MINILR_NOISE_THREADS", "2")
    package = os.path.dirname(os.path.abspath(minilr.__file__))
    data, _ = problem()
    old, new = model(), model()
    _one_step(new, data)
    before, after = params_bytes(old), params_bytes(new)
    assert before != after
    if not hasattr(signal, "SIGINT") or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process")
    outcomes = {"old": 0, "new": 0}
    n, done = 0, False
    while not done:
        n += 1
        m = model()
        count = [0]

        def tracer(frame, event, arg):
            if not frame.f_code.co_filename.startswith(package) or _in_finalizer(frame):
                return None  # no line events in other code (nor in finalizers, run by the GC)
            if event == "line":
                count[0] += 1
                if count[0] == n:
                    os.kill(os.getpid(), signal.SIGINT)
            return tracer

        try:
            sys.settrace(tracer)
            try:
                _one_step(m, data)
            finally:
                sys.settrace(None)
            done = count[0] < n  # the whole call ran before line n: every point was tried
            time.sleep(0)  # a signal sent at the very end is delivered here
        except KeyboardInterrupt:
            pass
        state = params_bytes(m)
        assert state in (before, after), f"SIGINT at line {n}: the model is neither the old nor the new"
        outcomes["old" if state == before else "new"] += 1
        m.check()
        minilr.estimate_gradient(m, data[0][:5], data[1][:5], copies=4)  # still usable
    print("SIGINT outcomes over", n, "lines:", outcomes)
    assert outcomes["old"] > 10 and outcomes["new"] >= 1, outcomes


# -- the command line -----------------------------------------------------------------------------
def _cli(args, **kw):
    root = os.path.dirname(os.path.dirname(os.path.abspath(minilr.__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MINILR_EPOCHS", None)
    return subprocess.Popen([sys.executable, "-m", "minilr", "train", "--no-progress", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_cli_save_checkpoint_resume(tmp_path):
    common = ["--data", "spirals", "--hidden", "8", "--copies", "8", "--estimator", "lr", "--seed", "1"]
    p = _cli(common + ["--epochs", "2", "--save", str(tmp_path / "a.npz")])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "model saved to" in out
    p = _cli(common + ["--epochs", "1", "--checkpoint", str(tmp_path / "c.npz")])
    assert p.communicate(timeout=300) and p.returncode == 0
    p = _cli(common + ["--epochs", "2", "--checkpoint", str(tmp_path / "c.npz"), "--resume",
                       "--save", str(tmp_path / "b.npz")])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert_same_run(minilr.load(tmp_path / "a.npz"), minilr.load(tmp_path / "b.npz"))


def test_cli_ctrl_c_saves_and_exits_with_one_line(tmp_path):
    p = _cli(["--data", "digits", "--hidden", "64", "--copies", "200", "--epochs", "50", "--checkpoint",
              str(tmp_path / "c.npz"), "--save", str(tmp_path / "m.npz")])
    line = p.stdout.readline()  # the banner: training is about to start
    assert line.startswith("minilr:")
    time.sleep(1.5)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0], err
    minilr.load(tmp_path / "m.npz")
    minilr.load(tmp_path / "c.npz")


# -- every model: a check before the first step, and a CNN killed and resumed (issue 13) ---------------
def test_a_model_that_cannot_be_saved_is_named_before_the_first_step(tmp_path):
    class Shift(minilr.layers.Activation):  # takes an argument, no config(): cannot be saved
        def __init__(self, by=0.5):
            self.by = by

        def forward(self, v, xp):
            return v + self.by

    data, _ = problem()
    m = minilr.Sequential([minilr.Linear(2, 6), Shift(), minilr.Linear(6, 2)], seed=0)
    before = params_bytes(m)
    with pytest.raises(mio.NotSaveableError, match=r"layer 1 \(Shift\) cannot be saved"):
        minilr.train(m, data, estimator="lr", epochs=1, checkpoint=tmp_path / "run.npz", **KW)
    assert params_bytes(m) == before  # not a single step taken
    assert os.listdir(tmp_path) == []
    minilr.train(m, data, estimator="lr", epochs=1, **KW)  # without a checkpoint it trains


def cnn_problem(n=60):
    (x, y), _ = minilr.datasets.load("mnist1d")
    return (x[:n, None, :], y[:n]), (x[n:n + 30, None, :], y[n:n + 30])


def cnn_model():
    return minilr.cnn(width=6, seed=0, learn_sigma=True)


@pytest.mark.parametrize("estimator", ["lr", "alr", "hybrid"])
@pytest.mark.parametrize("stop_at", [None, 2, 4])  # None: after epoch 1; else steps done before Ctrl-C
def test_cnn_interrupted_then_resumed_is_the_uninterrupted_run(tmp_path, monkeypatch, estimator, stop_at):
    data, val = cnn_problem()
    kw = dict(KW, estimator=estimator, optimizer="adam")
    ref = cnn_model()
    h_ref = minilr.train(ref, data, val_data=val, epochs=2, **kw)
    path = tmp_path / "run.npz"
    m = cnn_model()
    if stop_at is None:
        minilr.train(m, data, val_data=val, epochs=1, checkpoint=path, **kw)
    else:
        real, calls = train_mod.estimate, []

        def interrupted(*args, **kwargs):
            calls.append(1)
            if len(calls) == stop_at + 1:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(train_mod, "estimate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            minilr.train(m, data, val_data=val, epochs=2, checkpoint=path, **kw)
        monkeypatch.setattr(train_mod, "estimate", real)
    fresh = cnn_model()
    h = minilr.train(fresh, data, val_data=val, epochs=2, checkpoint=path, resume=True, **kw)
    assert_same_run(ref, fresh, h_ref, h)
    assert_same_run(ref, minilr.load(path))


CNN_RUNNER = textwrap.dedent("""
    import sys, minilr
    path, out = sys.argv[1:3]
    (x, y), _ = minilr.datasets.load("mnist1d")
    model = minilr.cnn(width=8, seed=0)
    minilr.train(model, (x[:300, None, :], y[:300]), estimator="alr", optimizer="adam", copies=20,
                 epochs=3, batch_size=20, lr=0.01, progress=False, seed=5, checkpoint=path,
                 resume=True, checkpoint_every=1)
    minilr.save(model, out)
    print("done", flush=True)
""")


def test_cnn_sigkilled_at_random_moments_then_resumed_is_the_uninterrupted_run(tmp_path):
    (x, y), _ = minilr.datasets.load("mnist1d")
    ref = minilr.cnn(width=8, seed=0)
    minilr.train(ref, (x[:300, None, :], y[:300]), estimator="alr", optimizer="adam", copies=20, epochs=3,
                 batch_size=20, lr=0.01, progress=False, seed=5)
    script = tmp_path / "cnn_runner.py"
    script.write_text(CNN_RUNNER)
    root = os.path.dirname(os.path.dirname(os.path.abspath(minilr.__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    path, out = tmp_path / "run.npz", tmp_path / "final.npz"
    rng = np.random.default_rng(3)
    kills = 0
    for attempt in range(40):
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if kills < 5:
            seen = path.stat().st_mtime_ns if path.exists() else None
            while proc.poll() is None and (not path.exists() or path.stat().st_mtime_ns == seen):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.2))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                kills += 1
                continue
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        break
    assert kills >= 3, "the runs were not interrupted: make them longer"
    assert_same_run(minilr.load(out), ref)
    # a kill mid-write leaves a temporary file; the resume and the next writes removed them all
    assert sorted(os.listdir(tmp_path)) == ["cnn_runner.py", "final.npz", "run.npz"]


SLOW_IMPORT = textwrap.dedent("""
    # imported at start-up (sitecustomize): holds the import of minilr.datasets, inside
    # `import minilr`, for a few seconds, and says when it is there
    import importlib.abc, os, sys, time

    class Slow(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "minilr.datasets":
                open(os.environ["MINILR_TEST_MARK"], "w").close()
                time.sleep(20)
            return None

    sys.meta_path.insert(0, Slow())
""")


def test_cli_ctrl_c_while_importing_is_one_line_too(tmp_path):
    """Ctrl-C during `import minilr` (the first second of `python -m minilr`) used to print a long
    traceback; the same one line as later is said instead."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_IMPORT)
    mark = tmp_path / "importing"
    root = os.path.dirname(os.path.dirname(os.path.abspath(minilr.__file__)))
    env = {**os.environ, "MINILR_TEST_MARK": str(mark),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), root, os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-m", "minilr", "train", "--data", "spirals", "--epochs", "1"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not mark.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert mark.exists(), "the import was never reached"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert err.strip() == "python -m minilr: interrupted" and p.returncode == 130, (p.returncode, err)


def test_cli_says_it_is_resuming(tmp_path):
    common = ["--data", "spirals", "--hidden", "8", "--copies", "8", "--estimator", "lr", "--seed", "1",
              "--checkpoint", str(tmp_path / "c.npz")]
    p = _cli(common + ["--epochs", "2"])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0 and "resuming" not in out, err
    p = _cli(common + ["--epochs", "3", "--resume"])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    lines = out.splitlines()
    assert lines[1] == f"resuming from {tmp_path / 'c.npz'} at epoch 3", out  # after the banner
    assert lines[2].startswith("epoch   3/3"), out
