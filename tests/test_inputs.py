"""Bad input at every public entry point (API.md "Rules", issue 2 item 11).

Each bad call must raise ValueError/TypeError whose message names the argument, *before any work*
(checked by replacing the gradient computation with a spy that fails the test if it is reached),
and must leave the model exactly as it was (every weight, bias and sigma compared bit for bit).
A loss that turns NaN during training must stop it with ``TrainingDiverged`` and leave the last good
parameters in the model.
"""
from __future__ import annotations

import importlib
import re

import numpy as np
import pytest

import minilr
from minilr import losses

train_mod = importlib.import_module("minilr.train")  # ``minilr.train`` is the function


# -- helpers ----------------------------------------------------------------------------------------
def small_model(**kw):
    kw.setdefault("sigma", 0.1)
    kw.setdefault("seed", 0)
    return minilr.MLP([4, 5, 3], **kw)


def batch(n=6):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 4)).astype(np.float32), np.arange(n) % 3


def snapshot(model):
    """Everything a bad call could touch: every Linear's weight, bias, sigma and learn_sigma."""
    return [(None if l.weight is None else l.weight.copy(), None if l.bias is None else l.bias.copy(),
             None if l.sigma is None else np.array(l.sigma, copy=True), l.learn_sigma)
            for l in model.layers if isinstance(l, minilr.Linear)]


def assert_same(model, before):
    after = snapshot(model)
    assert len(after) == len(before)
    for (w0, b0, s0, ls0), (w1, b1, s1, ls1) in zip(before, after):
        np.testing.assert_array_equal(w1, w0)
        np.testing.assert_array_equal(b1, b0)
        np.testing.assert_array_equal(s1, s0)
        assert ls1 == ls0


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a gradient computation starts (the checks must all come first)."""
    def spy(*args, **kwargs):
        raise AssertionError("work started before the bad argument was rejected")

    monkeypatch.setattr(train_mod, "estimate", spy)


def expect(exc, arg):
    """pytest.raises for ``exc`` whose message names ``arg`` as a word."""
    return pytest.raises(exc, match=rf"(?<![\w]){re.escape(arg)}(?![\w])")


X, Y = batch()
NAN_X = X.copy()
NAN_X[2, 1] = np.nan
INF_X = X.copy()
INF_X[0, 0] = np.inf
Y_MSE = np.zeros((6, 3), np.float32)
NAN_Y_MSE = Y_MSE.copy()
NAN_Y_MSE[1, 2] = np.nan
INF_Y_MSE = Y_MSE.copy()
INF_Y_MSE[0, 0] = -np.inf


# -- cases shared by estimate_gradient and train -----------------------------------------------------
# (id, keyword overrides, exception, argument the message must name)
COMMON = [
    ("copies=0", dict(copies=0), ValueError, "copies"),
    ("copies=-3", dict(copies=-3), ValueError, "copies"),
    ("copies=2.5", dict(copies=2.5), TypeError, "copies"),
    ("copies=2.0", dict(copies=2.0), TypeError, "copies"),
    ("copies=True", dict(copies=True), TypeError, "copies"),
    ("copies='10'", dict(copies="10"), TypeError, "copies"),
    ("copies=None", dict(copies=None), TypeError, "copies"),
    ("estimator unknown", dict(estimator="backprop"), ValueError, "estimator"),
    ("estimator case", dict(estimator="LR"), ValueError, "estimator"),
    ("estimator None", dict(estimator=None), TypeError, "estimator"),
    ("loss unknown", dict(loss="hinge"), ValueError, "loss"),
    ("loss int", dict(loss=3), TypeError, "loss"),
    ("backend unknown", dict(backend="torch"), ValueError, "backend"),
    ("backend int", dict(backend=1), TypeError, "backend"),
    ("seed negative", dict(seed=-1), ValueError, "seed"),
    ("seed float", dict(seed=1.5), TypeError, "seed"),
    ("seed str", dict(seed="0"), TypeError, "seed"),
    ("seed bool", dict(seed=True), TypeError, "seed"),
    ("antithetic odd copies", dict(antithetic=True, copies=5), ValueError, "copies"),
    ("antithetic odd chunk", dict(antithetic=True, copies=6, chunk=3), ValueError, "chunk"),
    ("antithetic not bool", dict(antithetic="yes", copies=4), TypeError, "antithetic"),
    ("chunk=0", dict(chunk=0), ValueError, "chunk"),
    ("chunk=1.5", dict(chunk=1.5), TypeError, "chunk"),
    ("baseline not bool", dict(baseline="yes"), TypeError, "baseline"),
    ("es_layers=-1", dict(es_layers=-1), ValueError, "es_layers"),
    ("es_layers=1.5", dict(es_layers=1.5), TypeError, "es_layers"),
    ("bp with a callable loss", dict(estimator="bp", loss=lambda out, y, xp: out.sum(-1)), ValueError, "loss"),
    ("mse y wrong shape", dict(loss="mse", y=np.zeros((6, 2))), ValueError, "y"),
    ("mse y 1-D", dict(loss="mse", y=np.zeros(6)), ValueError, "y"),
    ("mse y NaN", dict(loss="mse", y=NAN_Y_MSE), ValueError, "y"),
    ("mse y inf", dict(loss="mse", y=INF_Y_MSE), ValueError, "y"),
    ("mse y strings", dict(loss="mse", y=np.full((6, 3), "a")), TypeError, "y"),
    ("x wrong width", dict(x=np.zeros((6, 5))), ValueError, "x"),
    ("x 1-D", dict(x=np.zeros(4)), ValueError, "x"),
    ("x 3-D", dict(x=np.zeros((1, 6, 4))), ValueError, "x"),
    ("x empty", dict(x=np.zeros((0, 4)), y=np.zeros(0, int)), ValueError, "x"),
    ("x NaN", dict(x=NAN_X), ValueError, "x"),
    ("x inf", dict(x=INF_X), ValueError, "x"),
    ("x strings", dict(x=np.full((6, 4), "a")), TypeError, "x"),
    ("x complex", dict(x=X + 1j), TypeError, "x"),
    ("y too short", dict(y=Y[:5]), ValueError, "y"),
    ("y 2-D labels", dict(y=Y[:, None]), ValueError, "y"),
    ("label too large", dict(y=np.array([0, 1, 2, 3, 0, 1])), ValueError, "y"),
    ("label negative", dict(y=np.array([0, 1, -1, 2, 0, 1])), ValueError, "y"),
    ("label non-integer", dict(y=np.array([0, 1, 2.5, 0, 1, 2])), TypeError, "y"),
    ("label NaN", dict(y=np.array([0, 1, np.nan, 0, 1, 2])), TypeError, "y"),
    ("labels strings", dict(y=np.array(list("abcabc"))), TypeError, "y"),
    ("custom loss, y NaN", dict(loss=lambda out, y, xp: out.sum(-1), y=np.full(6, np.nan)), ValueError, "y"),
    ("custom loss, y too short", dict(loss=lambda out, y, xp: out.sum(-1), y=np.zeros(5)), ValueError, "y"),
    ("model not a model", dict(model="mlp"), TypeError, "model"),
]


def _bad_sigma_model(value):
    m = small_model()
    m.layers[2].sigma[:] = value
    return m


MODEL_CASES = [
    ("sigma set to 0 afterwards", lambda: _bad_sigma_model(0.0), ValueError, "sigma"),
    ("sigma set negative afterwards", lambda: _bad_sigma_model(-0.1), ValueError, "sigma"),
    ("sigma set NaN afterwards", lambda: _bad_sigma_model(np.nan), ValueError, "sigma"),
    ("learned sigma set to 0 afterwards",
     lambda: _zero_learned_sigma(), ValueError, "sigma"),
    ("weight set NaN afterwards", lambda: _nan_weight(), ValueError, "0.weight"),
]


def _zero_learned_sigma():
    m = small_model(learn_sigma=True)
    m.parameters()["0.sigma"][1] = 0.0
    return m


def _nan_weight():
    m = small_model()
    m.parameters()["0.weight"][0, 0] = np.nan
    return m


def _call_estimate(**over):
    kw = dict(model=small_model(), x=X, y=Y, estimator="lr", copies=4, seed=0)
    loss_ = over.get("loss", "cross_entropy")
    if loss_ == "mse" and "y" not in over:
        kw["y"] = Y_MSE
    kw.update(over)
    model = kw.pop("model")
    before = snapshot(model) if isinstance(model, minilr.Sequential) else None
    return model, before, lambda: minilr.estimate_gradient(model, kw.pop("x"), kw.pop("y"), **kw)


def _call_train(**over):
    kw = dict(model=small_model(), x=X, y=Y, estimator="lr", copies=4, seed=0, epochs=1,
              batch_size=3, progress=False)
    if over.get("loss") == "mse" and "y" not in over:
        kw["y"] = Y_MSE
    kw.update(over)
    model = kw.pop("model")
    before = snapshot(model) if isinstance(model, minilr.Sequential) else None
    x, y = kw.pop("x"), kw.pop("y")
    return model, before, lambda: minilr.train(model, (x, y), **kw)


ENTRY = {"estimate_gradient": _call_estimate, "train": _call_train}


@pytest.mark.parametrize("entry", sorted(ENTRY))
@pytest.mark.parametrize("case", COMMON, ids=[c[0] for c in COMMON])
def test_common_bad_input(entry, case, no_work):
    _, over, exc, arg = case
    model, before, call = ENTRY[entry](**over)
    with expect(exc, arg):
        call()
    if before is not None:
        assert_same(model, before)


@pytest.mark.parametrize("entry", sorted(ENTRY))
@pytest.mark.parametrize("case", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_model_state(entry, case, no_work):
    _, make, exc, arg = case
    model, before, call = ENTRY[entry](model=make())
    with expect(exc, arg):
        call()
    assert_same(model, before)


@pytest.mark.parametrize("entry", sorted(ENTRY))
def test_custom_loss_of_wrong_shape(entry):
    """A callable loss must return one loss per row; a scalar is refused (naming ``loss``) at its
    first call, in the first forward pass, so the model is still untouched."""
    model, before, call = ENTRY[entry](loss=lambda out, y, xp: out.sum())
    with expect(ValueError, "loss"):
        call()
    assert_same(model, before)


@pytest.mark.parametrize("entry", sorted(ENTRY))
def test_cupy_without_gpu_fails_at_once(entry, no_work):
    if minilr.cupy_available():
        pytest.skip("CuPy sees a GPU here: backend='cupy' is expected to work")
    model, before, call = ENTRY[entry](backend="cupy")
    with pytest.raises((RuntimeError, ValueError)) as info:
        call()
    msg = str(info.value)
    assert "pip install" in msg and "backend='numpy'" in msg, msg  # names the fix
    assert_same(model, before)


# -- train-only arguments ------------------------------------------------------------------------
TRAIN_ONLY = [
    ("epochs=0", dict(epochs=0), ValueError, "epochs"),
    ("epochs=-1", dict(epochs=-1), ValueError, "epochs"),
    ("epochs=1.5", dict(epochs=1.5), TypeError, "epochs"),
    ("epochs=True", dict(epochs=True), TypeError, "epochs"),
    ("batch_size=0", dict(batch_size=0), ValueError, "batch_size"),
    ("batch_size=-5", dict(batch_size=-5), ValueError, "batch_size"),
    ("batch_size=2.5", dict(batch_size=2.5), TypeError, "batch_size"),
    ("lr=nan", dict(lr=float("nan")), ValueError, "lr"),
    ("lr=inf", dict(lr=float("inf")), ValueError, "lr"),
    ("lr=0", dict(lr=0.0), ValueError, "lr"),
    ("lr<0", dict(lr=-1e-3), ValueError, "lr"),
    ("lr str", dict(lr="0.1"), TypeError, "lr"),
    ("lr bool", dict(lr=True), TypeError, "lr"),
    ("lr nan with sgd", dict(lr=float("nan"), optimizer="sgd"), ValueError, "lr"),
    ("optimizer unknown", dict(optimizer="rmsprop"), ValueError, "optimizer"),
    ("optimizer int", dict(optimizer=3), TypeError, "optimizer"),
    ("schedule unknown", dict(schedule="cosine"), ValueError, "schedule"),
    ("momentum >= 1", dict(optimizer="momentum", momentum=1.0), ValueError, "momentum"),
    ("momentum < 0", dict(optimizer="momentum", momentum=-0.5), ValueError, "momentum"),
    ("progress not bool", dict(progress="no"), TypeError, "progress"),
    ("callback not callable", dict(callback=5), TypeError, "callback"),
    ("sigma_bounds not a pair", dict(sigma_bounds=0.1), TypeError, "sigma_bounds"),
    ("sigma_min=0", dict(sigma_bounds=(0.0, 1.0)), ValueError, "sigma_min"),
    ("sigma_min > sigma_max", dict(sigma_bounds=(2.0, 1.0)), ValueError, "sigma_min"),
    ("weight_bound<0", dict(weight_bound=-1.0), ValueError, "weight_bound"),
    ("weight_bound nan", dict(weight_bound=float("nan")), ValueError, "weight_bound"),
]


@pytest.mark.parametrize("case", TRAIN_ONLY, ids=[c[0] for c in TRAIN_ONLY])
def test_train_bad_argument(case, no_work):
    _, over, exc, arg = case
    model, before, call = _call_train(**over)
    with expect(exc, arg):
        call()
    assert_same(model, before)


VAL_X_NAN = X.copy()
VAL_X_NAN[-1, -1] = np.nan

DATA_CASES = [
    ("data not a tuple", dict(data=X), TypeError, "data"),
    ("data 3-tuple", dict(data=(X, Y, Y)), TypeError, "data"),
    ("data x NaN", dict(data=(NAN_X, Y)), ValueError, "data"),
    ("data x inf", dict(data=(INF_X, Y)), ValueError, "data"),
    ("data label out of range", dict(data=(X, Y + 1)), ValueError, "data"),
    ("data lengths differ", dict(data=(X, Y[:4])), ValueError, "data"),
    ("val_data not a tuple", dict(val_data=X), TypeError, "val_data"),
    ("val_data x NaN", dict(val_data=(VAL_X_NAN, Y)), ValueError, "val_data"),
    ("val_data x inf", dict(val_data=(INF_X, Y)), ValueError, "val_data"),
    ("val_data wrong width", dict(val_data=(np.zeros((3, 7)), Y[:3])), ValueError, "val_data"),
    ("val_data label out of range", dict(val_data=(X, np.full(6, 7))), ValueError, "val_data"),
    ("val_data mse y NaN", dict(loss="mse", data=(X, Y_MSE), val_data=(X, NAN_Y_MSE)), ValueError, "val_data"),
    ("data mse y inf", dict(loss="mse", data=(X, INF_Y_MSE)), ValueError, "data"),
]


@pytest.mark.parametrize("case", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_train_bad_data(case, no_work):
    _, over, exc, arg = case
    model = small_model()
    before = snapshot(model)
    kw = dict(estimator="lr", copies=4, epochs=1, batch_size=3, progress=False)
    kw.update(over)
    data = kw.pop("data", (X, Y))
    with expect(exc, arg):
        minilr.train(model, data, **kw)
    assert_same(model, before)


# -- models and layers ----------------------------------------------------------------------------
MLP_CASES = [
    ("sizes too short", dict(sizes=[4]), ValueError, "sizes"),
    ("sizes not a list", dict(sizes="4,3"), ValueError, "sizes"),
    ("width 0", dict(sizes=[4, 0, 3]), ValueError, "sizes"),
    ("width 2.5", dict(sizes=[4, 2.5, 3]), TypeError, "sizes"),
    ("width True", dict(sizes=[4, True, 3]), TypeError, "sizes"),
    ("activation unknown", dict(activation="gelu"), ValueError, "activation"),
    ("activation int", dict(activation=1), TypeError, "activation"),
    ("sigma 0", dict(sigma=0.0), ValueError, "sigma"),
    ("sigma < 0", dict(sigma=-0.1), ValueError, "sigma"),
    ("sigma NaN", dict(sigma=float("nan")), ValueError, "sigma"),
    ("sigma inf", dict(sigma=float("inf")), ValueError, "sigma"),
    ("sigma str", dict(sigma="0.1"), TypeError, "sigma"),
    ("sigma bool", dict(sigma=True), TypeError, "sigma"),
    ("sigma None", dict(sigma=None), TypeError, "sigma"),
    ("sigma array with a zero", dict(sizes=[4, 3, 3], sigma=np.array([0.1, 0.0, 0.1])), ValueError, "sigma"),
    ("sigma array wrong shape", dict(sigma=np.array([0.1, 0.2])), ValueError, "sigma"),
    ("seed negative", dict(seed=-1), ValueError, "seed"),
    ("seed float", dict(seed=0.5), TypeError, "seed"),
    ("learn_sigma not bool", dict(learn_sigma="yes"), TypeError, "learn_sigma"),
    ("dtype int", dict(dtype=np.int32), ValueError, "dtype"),
    ("dtype nonsense", dict(dtype="nonsense"), TypeError, "dtype"),
]


@pytest.mark.parametrize("case", MLP_CASES, ids=[c[0] for c in MLP_CASES])
def test_mlp_bad_argument(case):
    _, over, exc, arg = case
    kw = dict(sizes=[4, 5, 3])
    kw.update(over)
    with expect(exc, arg):
        minilr.MLP(kw.pop("sizes"), **kw)


LINEAR_CASES = [
    ("in_features 0", (0, 3), {}, ValueError, "in_features"),
    ("in_features 2.5", (2.5, 3), {}, TypeError, "in_features"),
    ("in_features True", (True, 3), {}, TypeError, "in_features"),
    ("out_features -1", (4, -1), {}, ValueError, "out_features"),
    ("out_features str", (4, "3"), {}, TypeError, "out_features"),
    ("sigma 0", (4, 3), dict(sigma=0), ValueError, "sigma"),
    ("sigma negative entry", (4, 3), dict(sigma=[0.1, -0.1, 0.1]), ValueError, "sigma"),
    ("sigma wrong shape", (4, 3), dict(sigma=[0.1, 0.1]), ValueError, "sigma"),
    ("learn_sigma int", (4, 3), dict(learn_sigma=1), TypeError, "learn_sigma"),
]


@pytest.mark.parametrize("case", LINEAR_CASES, ids=[c[0] for c in LINEAR_CASES])
def test_linear_bad_argument(case):
    _, args, kw, exc, arg = case
    with expect(exc, arg):
        minilr.Linear(*args, **kw)


SEQ_CASES = [
    ("empty", lambda: minilr.Sequential([]), TypeError, "layers"),
    ("not a list", lambda: minilr.Sequential(minilr.Linear(4, 3)), TypeError, "layers"),
    ("starts with an activation", lambda: minilr.Sequential(["relu", minilr.Linear(4, 3)]), ValueError, "layer"),
    ("widths do not chain", lambda: minilr.Sequential([minilr.Linear(4, 5), "relu", minilr.Linear(6, 3)]),
     ValueError, "layer"),
    ("unknown activation", lambda: minilr.Sequential([minilr.Linear(4, 5), "gelu"]), ValueError, "activation"),
    ("sigma 0", lambda: minilr.Sequential([minilr.Linear(4, 3)], sigma=0.0), ValueError, "sigma"),
    ("sigma NaN", lambda: minilr.Sequential([minilr.Linear(4, 3)], sigma=float("nan")), ValueError, "sigma"),
    ("seed bad", lambda: minilr.Sequential([minilr.Linear(4, 3)], seed=-2), ValueError, "seed"),
    ("learn_sigma bad", lambda: minilr.Sequential([minilr.Linear(4, 3)], learn_sigma=1), TypeError, "learn_sigma"),
]


@pytest.mark.parametrize("case", SEQ_CASES, ids=[c[0] for c in SEQ_CASES])
def test_sequential_bad_argument(case):
    _, make, exc, arg = case
    with expect(exc, arg):
        make()


@pytest.mark.parametrize("bad, exc", [(np.zeros((2, 5)), ValueError), (np.zeros(4), ValueError),
                                      (NAN_X, ValueError), (np.full((2, 4), "a"), TypeError)])
def test_predict_bad_x(bad, exc):
    model = small_model()
    before = snapshot(model)
    with expect(exc, "x"):
        model.predict(bad)
    assert_same(model, before)


# -- reference ------------------------------------------------------------------------------------
REF_CASES = [
    ("model not a model", dict(model=object()), TypeError, "model"),
    ("x wrong width", dict(x=np.zeros((6, 3))), ValueError, "x"),
    ("x NaN", dict(x=NAN_X), ValueError, "x"),
    ("label out of range", dict(y=np.full(6, 3)), ValueError, "y"),
    ("labels wrong length", dict(y=Y[:2]), ValueError, "y"),
    ("loss unknown", dict(loss="hinge"), ValueError, "loss"),
    ("custom loss", dict(loss=lambda out, y, xp: out.sum(-1)), ValueError, "loss"),
    ("mse y NaN", dict(loss="mse", y=NAN_Y_MSE), ValueError, "y"),
    ("mse y wrong shape", dict(loss="mse", y=np.zeros((6, 4))), ValueError, "y"),
]


@pytest.mark.parametrize("fn", ["gradient", "loss"])
@pytest.mark.parametrize("case", REF_CASES, ids=[c[0] for c in REF_CASES])
def test_reference_bad_input(case, fn):
    _, over, exc, arg = case
    kw = dict(model=small_model(), x=X, y=Y, loss="cross_entropy")
    kw.update(over)
    model = kw["model"]
    before = snapshot(model) if isinstance(model, minilr.Sequential) else None
    with expect(exc, arg):
        getattr(minilr.reference, fn)(kw["model"], kw["x"], kw["y"], loss=kw["loss"])
    if before is not None:
        assert_same(model, before)


def test_reference_refuses_step_activation_saying_why():
    model = minilr.MLP([4, 5, 3], activation="step", seed=0)
    with pytest.raises(ValueError, match=r"(?i)step.*derivative.*(lr|es)"):
        minilr.reference.gradient(model, X, Y)


# -- datasets and metrics -------------------------------------------------------------------------
DATA_LOAD_CASES = [
    ("unknown name", ("imagenet",), {}, ValueError, "dataset"),
    ("name not a str", (5,), {}, TypeError, "dataset"),
    ("digits test_fraction 0", ("digits",), dict(test_fraction=0.0), ValueError, "test_fraction"),
    ("digits test_fraction 1", ("digits",), dict(test_fraction=1.0), ValueError, "test_fraction"),
    ("digits test_fraction nan", ("digits",), dict(test_fraction=float("nan")), ValueError, "test_fraction"),
    ("digits seed negative", ("digits",), dict(seed=-1), ValueError, "seed"),
    ("spirals n=1", ("spirals",), dict(n=1), ValueError, "n"),
    ("spirals n float", ("spirals",), dict(n=100.5), TypeError, "n"),
    ("spirals classes=1", ("spirals",), dict(classes=1), ValueError, "classes"),
    ("spirals noise<0", ("spirals",), dict(noise=-0.1), ValueError, "noise"),
    ("spirals turns=0", ("spirals",), dict(turns=0), ValueError, "turns"),
    ("spirals seed float", ("spirals",), dict(seed=1.5), TypeError, "seed"),
    ("spirals test_fraction 2", ("spirals",), dict(test_fraction=2.0), ValueError, "test_fraction"),
    ("unknown keyword", ("spirals",), dict(size=3), TypeError, "size"),
]


@pytest.mark.parametrize("case", DATA_LOAD_CASES, ids=[c[0] for c in DATA_LOAD_CASES])
def test_datasets_load_bad_argument(case):
    _, args, kw, exc, arg = case
    with expect(exc, arg):
        minilr.datasets.load(*args, **kw)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_local_files_name_the_folder(tmp_path, name):
    folder = tmp_path / "nothing-here"
    with pytest.raises(FileNotFoundError) as info:
        minilr.datasets.load(name, root=folder)
    assert str(folder) in str(info.value) and "root=" in str(info.value)


G = {"0.weight": np.ones((2, 3)), "0.bias": np.ones(2)}
COS_CASES = [
    ("not dicts", ([1.0], G), TypeError, "dicts"),
    ("no shared keys", ({"1.weight": np.ones(3)}, G), ValueError, "keys"),
    ("shapes differ", ({"0.weight": np.ones(6), "0.bias": np.ones(2)}, G), ValueError, "0.weight"),
    ("sizes differ", ({"0.weight": np.ones((2, 2)), "0.bias": np.ones(2)}, G), ValueError, "0.weight"),
    ("NaN in g", ({"0.weight": np.full((2, 3), np.nan), "0.bias": np.ones(2)}, G), ValueError, "0.weight"),
    ("inf in g_true", (G, {"0.weight": np.ones((2, 3)), "0.bias": np.array([1, np.inf])}), ValueError, "0.bias"),
    ("strings", ({"0.weight": np.full((2, 3), "a"), "0.bias": np.ones(2)}, G), TypeError, "0.weight"),
]


@pytest.mark.parametrize("case", COS_CASES, ids=[c[0] for c in COS_CASES])
def test_cosine_similarity_bad_input(case):
    _, (g, g_true), exc, arg = case
    with expect(exc, arg):
        minilr.metrics.cosine_similarity(g, g_true)


# -- divergence -----------------------------------------------------------------------------------
def test_training_diverged_is_a_floating_point_error():
    assert issubclass(minilr.TrainingDiverged, FloatingPointError)


def _spirals(n=200):
    (x, y), _ = minilr.datasets.load("spirals", n=n, seed=0)
    return x, y


@pytest.mark.parametrize("estimator", ["lr", "es", "bp"])
def test_huge_lr_stops_with_training_diverged(estimator):
    """SGD with lr=1e20 blows the logits up within a few steps. Training must stop with
    TrainingDiverged (not a RuntimeWarning, not silently), keep finite parameters, and say what to do."""
    x, y = _spirals()
    model = minilr.MLP([2, 16, 2], sigma=0.1, seed=0)
    with pytest.raises(minilr.TrainingDiverged, match=r"smaller lr") as info:
        minilr.train(model, (x, y), estimator=estimator, copies=8, epochs=5, batch_size=20,
                     optimizer="sgd", lr=1e20, progress=False, seed=0)
    msg = str(info.value).lower()  # non-finite, or (issue 14) a finite loss 1000 times its start
    assert "nan" in msg or "inf" in msg or "1000 times the run's starting loss" in msg
    for k, p in model.parameters().items():
        assert np.all(np.isfinite(p)), k
    assert isinstance(info.value.history, minilr.History)


def test_nan_loss_keeps_last_good_parameters():
    """A custom loss that turns NaN after the first epoch: training stops at the first step of
    epoch 2, and the model holds exactly the parameters it had at the end of epoch 1."""
    x, y = _spirals(60)
    state = {"bad": False, "good": None}

    def loss(out, yy, xp):
        value = losses.cross_entropy(out, yy, xp)
        return value * np.nan if state["bad"] else value

    def callback(epoch, history):
        state["good"] = {k: p.copy() for k, p in model.parameters().items()}
        state["bad"] = True

    model = minilr.MLP([2, 8, 2], sigma=0.1, seed=0)
    with pytest.raises(minilr.TrainingDiverged, match=r"(?i)loss became nan.*epoch 2, step") as info:
        minilr.train(model, (x, y), estimator="lr", copies=4, epochs=3, batch_size=20, loss=loss,
                     progress=False, callback=callback)
    assert len(info.value.history.train_loss) == 1
    params = model.parameters()
    assert state["good"] is not None and set(params) == set(state["good"])
    for k in params:
        np.testing.assert_array_equal(params[k], state["good"][k])


class _PoisonOnSecondStep:
    """An optimizer that does plain SGD once, then writes NaN into the weights (a broken update).

    ``train`` runs each step on a copy of the optimizer and keeps it only if the step is good, so
    what the steps saw is logged in the class's ``seen`` (shared by the copies)."""

    seen = []

    def __init__(self):
        self.calls = 0
        type(self).seen = []

    def step(self, params, grads):
        self.calls += 1
        type(self).seen.append({k: p.copy() for k, p in params.items()})
        for k, g in grads.items():
            params[k] -= 0.01 * g
        if self.calls == 2:
            params["0.weight"][0, 0] = np.nan


def test_non_finite_update_is_rolled_back():
    x, y = _spirals(60)
    opt = _PoisonOnSecondStep()
    model = minilr.MLP([2, 8, 2], sigma=0.1, seed=0)
    with pytest.raises(minilr.TrainingDiverged, match=r"(?i)parameters became nan.*restored"):
        minilr.train(model, (x, y), estimator="lr", copies=4, epochs=2, batch_size=20,
                     optimizer=opt, progress=False)
    assert len(opt.seen) == 2 and opt.calls == 1  # the failed step is not kept by the optimizer either
    for k, p in model.parameters().items():
        np.testing.assert_array_equal(p, opt.seen[-1][k])
