"""benchmarks/cifar_fig3.py in CI: its --smoke mode (a tiny written CIFAR folder, 1 step each)."""
import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location("cifar_fig3", os.path.join(ROOT, "benchmarks", "cifar_fig3.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fig3_smoke_runs_every_estimator_and_prints_runtime_first(tmp_path, capsys):
    fig3 = _script()
    out = tmp_path / "r.json"
    results = fig3.main(["--smoke", "--out", str(out)])
    assert set(results) == set(fig3.ESTIMATORS)
    lines = capsys.readouterr().out.splitlines()
    timing = [i for i, l in enumerate(lines) if l.startswith("runtime per epoch")]
    training = [i for i, l in enumerate(lines) if " val " in l]
    assert len(timing) == len(training) == len(fig3.ESTIMATORS)
    assert max(timing) < min(training)  # the runtime per epoch comes first
    assert out.exists()


def test_fig3_split_is_721_of_all_images(tmp_path):
    fig3 = _script()
    root = fig3.write_tiny_cifar(str(tmp_path / "cifar-10-batches-bin"), n=10)
    (x, y), (xv, yv), (xt, yt) = fig3.split_721(str(tmp_path), seed=0)
    assert (len(y), len(yv), len(yt)) == (42, 12, 6) and x.shape[1:] == (3, 32, 32)
    # disjoint and together all 60 images: the pixel sums identify them
    sums = np.concatenate([x, xv, xt]).reshape(60, -1).sum(1)
    assert len(np.unique(sums)) == 60
    assert os.path.isdir(root)


def test_fig3_reads_a_given_root_and_refuses_unknown_estimator(tmp_path):
    fig3 = _script()
    fig3.write_tiny_cifar(str(tmp_path / "c"), n=8)
    r = fig3.main(["--smoke", "--root", str(tmp_path / "c"), "--estimators", "lr"])
    assert list(r) == ["lr"]
    with pytest.raises(SystemExit):
        fig3.main(["--smoke", "--estimators", "nope"])
