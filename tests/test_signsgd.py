"""optimizer="signsgd": the second reading of "w A" (the sign of the update), for every estimator."""
import numpy as np
import pytest

import minilr
from minilr import optim, reference


def test_signsgd_step_is_lr_times_sign_elementwise():
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((4, 5)).astype(np.float32), "b": rng.standard_normal(3)}
    grads = {"w": rng.standard_normal((4, 5)) * 10.0 ** rng.integers(-6, 6, (4, 5)),
             "b": np.array([0.0, -2.5e-9, 7.0])}
    before = {k: v.copy() for k, v in params.items()}
    opt = optim.make_optimizer("signsgd", 0.03)
    opt.step(params, grads)
    for k in params:
        assert params[k].dtype == before[k].dtype
        np.testing.assert_allclose(params[k], before[k] - 0.03 * np.sign(grads[k]).astype(before[k].dtype),
                                   rtol=0, atol=1e-7)
    assert params["b"][0] == before["b"][0]  # sign(0) = 0: no move
    # the magnitude of g never matters: scaling every gradient leaves the step unchanged
    p1 = {k: v.copy() for k, v in before.items()}
    optim.make_optimizer("signsgd", 0.03).step(p1, {k: 1e6 * g for k, g in grads.items()})
    for k in params:
        np.testing.assert_array_equal(p1[k], params[k])


def test_signsgd_follows_the_schedule():
    opt = optim.make_optimizer("signsgd", 0.1, schedule="robbins-monro", decay_steps=1.0)
    p = {"w": np.zeros(2)}
    opt.step(p, {"w": np.array([1.0, -1.0])})
    opt.step(p, {"w": np.array([1.0, -1.0])})
    np.testing.assert_allclose(p["w"], [-(0.1 + 0.05), 0.1 + 0.05])


@pytest.mark.parametrize("estimator", ["bp", "lr", "alr", "es", "hybrid"])
def test_train_with_signsgd_moves_each_parameter_by_lr(estimator):
    """One step of train(optimizer="signsgd") with any estimator: every entry moves by lr or 0."""
    (x, y), _ = minilr.datasets.load("digits")
    model = minilr.MLP([64, 16, 10], sigma=0.1, seed=0)
    before = model.parameters()
    minilr.train(model, (x[:20], y[:20]), estimator=estimator, copies=8, epochs=1, batch_size=20,
                 optimizer="signsgd", lr=0.01, progress=False, seed=0)
    for k, p in model.parameters().items():
        step = np.abs(p.astype(np.float64) - before[k])
        assert np.all((np.abs(step - 0.01) < 1e-6) | (step == 0)), k
        assert np.mean(step > 0) > 0.5, k  # most entries have a nonzero gradient estimate


def test_signsgd_on_feedback_alignment():
    """FA has no estimator: the harness feeds its gradient to the same optimizer object."""
    (x, y), _ = minilr.datasets.load("digits")
    model = minilr.MLP([64, 16, 10], sigma=0.1, seed=0)
    fb = reference.feedback_matrices(model, seed=1)
    g = reference.feedback_alignment(model, x[:30], y[:30], fb)
    params = model.parameters()
    before = {k: v.copy() for k, v in params.items()}
    optim.make_optimizer("signsgd", 0.02).step(params, g)
    for k in before:
        np.testing.assert_allclose(params[k], before[k] - 0.02 * np.sign(g[k]), atol=1e-7)


def test_unknown_optimizer_lists_signsgd():
    with pytest.raises(ValueError, match="signsgd"):
        optim.make_optimizer("sign", 0.1)
