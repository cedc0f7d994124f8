"""The command line ``python -m minilr train``: help, a tiny run, and bad flags.

Runs go through ``minilr.__main__.main([...])`` in-process (fast); two subprocess calls check the
real ``python -m minilr`` entry point and its exit status.
"""
from __future__ import annotations

import inspect
import re
import subprocess
import sys

import pytest

import minilr
from minilr.__main__ import main

FINAL = re.compile(r"final test accuracy: (\d\.\d{4})")


@pytest.fixture(autouse=True)
def _no_epoch_override(monkeypatch):
    monkeypatch.delenv("MINILR_EPOCHS", raising=False)


def test_help_lists_every_train_option():
    r = subprocess.run([sys.executable, "-m", "minilr", "train", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    # Every keyword of minilr.train that a command line can set has a flag.
    not_flags = {"model", "data", "val_data", "callback", "progress", "loss", "sigma_bounds"}
    for name in inspect.signature(minilr.train).parameters:
        if name not in not_flags:
            flag = "--" + name.replace("_", "-")
            if name == "baseline":
                flag = "--no-baseline"
            if name == "comm":  # the copies over the MPI ranks mpiexec started
                flag = "--distributed"
            assert flag in text, flag
    for flag in ("--data", "--data-root", "--hidden", "--activation", "--sigma", "--learn-sigma",
                 "--no-progress", "--sigma-min", "--sigma-max"):
        assert flag in text, flag
    for name in ("lr", "alr", "es", "aes", "hybrid", "a-hybrid", "bp", "digits", "spirals"):
        assert re.search(rf"[{{,]{re.escape(name)}[,}}]", text), name
    assert "(default: alr)" in text  # defaults are shown


def test_tiny_run_prints_epochs_and_final_accuracy(capsys):
    rc = main(["train", "--data", "spirals", "--epochs", "2", "--copies", "4", "--hidden", "8",
               "--estimator", "lr", "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0
    assert "lr on spirals" in out.out
    assert len(re.findall(r"^epoch +\d+/2 ", out.out, flags=re.M)) == 2
    m = FINAL.search(out.out)
    assert m and 0.0 <= float(m.group(1)) <= 1.0
    assert out.err == ""  # --no-progress: no bar


def test_digits_run_matches_the_library(capsys):
    """The CLI reports what ``minilr.train`` with the same settings gives (same seed, same numbers)."""
    rc = main(["train", "--data", "digits", "--epochs", "1", "--copies", "4", "--hidden", "16",
               "--no-progress", "--seed", "3"])
    out = capsys.readouterr().out
    assert rc == 0
    (x, y), (xt, yt) = minilr.datasets.load("digits")
    model = minilr.MLP([64, 16, 10], sigma=0.1, seed=3)
    h = minilr.train(model, (x, y), val_data=(xt, yt), estimator="alr", copies=4, epochs=1, seed=3,
                     progress=False)
    assert float(FINAL.search(out).group(1)) == pytest.approx(h.val_accuracy[-1], abs=5e-5)


def test_options_reach_train(capsys):
    rc = main(["train", "--data", "spirals", "--epochs", "1", "--copies", "4", "--hidden", "8,8",
               "--estimator", "a-hybrid", "--es-layers", "1", "--antithetic", "--chunk", "2",
               "--learn-sigma", "--optimizer", "momentum", "--momentum", "0.5", "--lr", "0.05",
               "--schedule", "robbins-monro", "--sigma-min", "0.01", "--sigma-max", "1",
               "--weight-bound", "2", "--no-baseline", "--activation", "tanh", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and FINAL.search(out)
    assert "MLP [2, 8, 8, 2]" in out


def test_minilr_epochs_environment_shortens_the_run(capsys, monkeypatch):
    monkeypatch.setenv("MINILR_EPOCHS", "1")
    assert main(["train", "--data", "spirals", "--epochs", "50", "--copies", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert len(re.findall(r"^epoch ", out, flags=re.M)) == 1


@pytest.mark.parametrize("argv", [
    ["train", "--estimator", "nope"],
    ["train", "--data", "imagenet"],
    ["train", "--copies", "2.5"],
    ["train", "--epochs", "ten"],
    ["train", "--hidden", "a,b"],
    ["train", "--hidden", "0"],
    ["train", "--optimizer", "rmsprop"],
    ["train", "--backend", "torch"],
    ["train", "--no-such-flag"],
    ["fit"],
    [],
])
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("argv, word", [
    (["--copies", "0"], "copies"),
    (["--epochs", "0"], "epochs"),
    (["--batch-size", "-1"], "batch_size"),
    (["--lr", "nan"], "lr"),
    (["--sigma", "0"], "sigma"),
    (["--sigma", "-1"], "sigma"),
    (["--antithetic", "--copies", "3"], "copies"),
    (["--chunk", "0"], "chunk"),
    (["--seed", "-1"], "seed"),
    (["--sigma-min", "0"], "sigma_min"),
    (["--momentum", "1.5", "--optimizer", "momentum"], "momentum"),
])
def test_bad_values_exit_2_with_a_message_not_a_traceback(argv, word, capsys):
    rc = main(["train", "--data", "spirals", "--no-progress", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert re.search(rf"\b{word}\b", err) and "Traceback" not in err


def test_missing_local_data_exits_2_naming_the_folder(tmp_path, capsys):
    rc = main(["train", "--data", "mnist", "--data-root", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and str(tmp_path) in err


def test_cupy_without_gpu_names_the_fix(capsys):
    if minilr.cupy_available():
        pytest.skip("CuPy sees a GPU here")
    rc = main(["train", "--data", "spirals", "--backend", "cupy", "--no-progress", "--epochs", "1"])
    assert rc == 2 and "pip install" in capsys.readouterr().err


def test_divergence_exits_1(capsys):
    rc = main(["train", "--data", "spirals", "--optimizer", "sgd", "--lr", "1e20", "--estimator", "bp",
               "--no-progress", "--epochs", "3"])
    assert rc == 1 and "diverged" in capsys.readouterr().err


def test_bad_flag_in_a_real_process_exits_non_zero():
    r = subprocess.run([sys.executable, "-m", "minilr", "train", "--estimator", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "invalid choice" in r.stderr


# -- issue 14: every offered data set trains, flags, name, version, the data-root hint ------------
@pytest.mark.parametrize("data, net", [("temporal_order", "LSTM(6->8)"), ("sbm", "GAT(16->8)-GAT(8->4)")])
def test_sequence_and_graph_data_train_a_model_that_fits(data, net, capsys):
    """``--data sbm`` and ``--data temporal_order`` were offered and failed with "x must have shape
    (batch, 300)": an MLP cannot take a graph or sequences. They get graph attention and an LSTM."""
    rc = main(["train", "--data", data, "--epochs", "1", "--copies", "2", "--hidden", "8",
               "--batch-size", "200", "--estimator", "lr", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert net in out and FINAL.search(out)


def test_a_wrong_flag_prints_the_train_usage_and_the_closest_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--estimater", "lr"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("usage: python -m minilr train ") and "--estimater" in err
    assert "did you mean --estimator?" in err


def test_an_unknown_word_names_no_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "extra"])
    err = capsys.readouterr().err
    assert "usage: python -m minilr train " in err and "unrecognized arguments: extra" in err and "did you mean" not in err


def _console_script(tmp_path):
    """A file named ``minilr`` that runs what pip's console-script wrapper runs."""
    import os

    script = tmp_path / "minilr"
    script.write_text("import sys\nfrom minilr.__main__ import main\nsys.exit(main())\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(minilr.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return script, env


def test_the_console_script_calls_itself_minilr_and_has_a_version(tmp_path):
    script, env = _console_script(tmp_path)
    r = subprocess.run([sys.executable, str(script), "--version"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0 and r.stdout.strip() == f"minilr {minilr.__version__}"
    r = subprocess.run([sys.executable, str(script), "train", "--estimater", "lr"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 2 and r.stderr.startswith("usage: minilr train ")
    r = subprocess.run([sys.executable, "-m", "minilr", "--version"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0 and r.stdout.strip() == f"python -m minilr {minilr.__version__}"


def test_missing_mnist_tells_the_user_the_flag(tmp_path, capsys):
    rc = main(["train", "--data", "mnist", "--data-root", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--data-root" in err and "root=" not in err


def test_on_a_terminal_epoch_lines_never_share_the_bar_line(tmp_path):
    """Issue 14: on a terminal the epoch lines (stdout) were printed after the tqdm bar (stderr)
    on the bar's own line. Read as the terminal shows it: each epoch line starts its line, and
    the bar is still drawn."""
    from terminal import run_on_a_terminal, screen

    _, env = _console_script(tmp_path)
    rc, term, _ = run_on_a_terminal([sys.executable, "-m", "minilr", "train", "--data", "spirals", "--epochs", "3",
                                     "--copies", "4", "--hidden", "8", "--estimator", "lr"], env)
    lines = screen(term)
    assert rc == 0, lines
    epoch_lines = [line for line in lines if "epoch " in line and "train loss" in line]
    assert len(epoch_lines) == 3 and all(line.startswith("epoch ") for line in epoch_lines), lines
    assert any(line.startswith("final test accuracy") for line in lines), lines
    assert "lr K=4" in term.decode()  # the bar was there
