"""Command line: ``python -m minilr train --data digits --estimator alr --copies 100 --epochs 20``
(or ``minilr train ...`` where pip installed the console script)."""
from __future__ import annotations

import argparse
import difflib
import os
import sys

from . import __version__, _signals, datasets
from .estimators import NAMES as ESTIMATORS
from .layers import ACTIVATIONS
from .optim import OPTIMIZERS


def _widths(text):
    """``"128,64"`` -> [128, 64]; an argparse type, so a bad value names ``--hidden``."""
    try:
        widths = [int(h) for h in text.split(",") if h.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"widths must be >= 1, got {text!r}")
    return widths


def _prog():
    """What the user typed to run us: ``minilr`` for the console script, else ``python -m minilr``."""
    name = os.path.basename(sys.argv[0] if sys.argv and sys.argv[0] else "")
    return "minilr" if name.split(".")[0].split("-")[0] == "minilr" else "python -m minilr"


def _parser(prog):
    """The top-level parser and its subcommands' parsers by name."""
    p = argparse.ArgumentParser(prog=prog, description="Train without backpropagation.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a network and print the test accuracy",
                       description="Train a network without backpropagation: an MLP on vectors, an "
                                   "LSTM on temporal_order's sequences, graph attention on the sbm graph.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data", default="digits", choices=list(datasets.NAMES),
                   help="data set (temporal_order: an LSTM; sbm: graph attention, the whole graph one sample)")
    t.add_argument("--data-root", default=None,
                   help="folder with the local files (mnist, fashion-mnist: IDX; cifar10: python batches)")
    t.add_argument("--hidden", default="64", type=_widths,
                   help="hidden widths, comma-separated (e.g. 128,64); the first is the LSTM's or the "
                        "first graph layer's")
    t.add_argument("--activation", default="relu", choices=sorted(ACTIVATIONS), help="hidden activation")
    t.add_argument("--sigma", type=float, default=0.1, help="noise scale of every neuron")
    t.add_argument("--learn-sigma", action="store_true", help="train sigma too")
    t.add_argument("--estimator", default="alr", choices=ESTIMATORS, help="gradient estimator (bp: exact)")
    t.add_argument("--copies", type=int, default=100, help="noisy copies K per sample")
    t.add_argument("--chunk", type=int, default=None, help="copies processed at a time (memory)")
    t.add_argument("--antithetic", action="store_true", help="mirrored noise pairs")
    t.add_argument("--no-baseline", action="store_true", help="do not subtract the loss baseline")
    t.add_argument("--surrogate", default=None, choices=("sigmoid", "straight_through"),
                   help="with --estimator bp: surrogate gradient for step activations (default: none)")
    t.add_argument("--es-layers", type=int, default=None,
                   help="ES layers in the hybrids (default: 2, at most all but the last)")
    t.add_argument("--epochs", type=int, default=20, help="passes over the training data (env MINILR_EPOCHS overrides)")
    t.add_argument("--batch-size", type=int, default=50, help="samples per step")
    t.add_argument("--optimizer", default="adam", choices=OPTIMIZERS, help="update rule")
    t.add_argument("--lr", type=float, default=1e-2, help="learning rate")
    t.add_argument("--momentum", type=float, default=0.9, help="momentum of --optimizer momentum")
    t.add_argument("--schedule", default="constant", choices=["constant", "robbins-monro"], help="step sizes")
    t.add_argument("--sigma-min", type=float, default=1e-3, help="projection (Eq. 4): smallest sigma")
    t.add_argument("--sigma-max", type=float, default=10.0, help="projection (Eq. 4): largest sigma")
    t.add_argument("--weight-bound", type=float, default=None, help="projection (Eq. 4): |w| <= this")
    t.add_argument("--backend", default="numpy", choices=["numpy", "cupy"], help="cupy runs on a GPU")
    t.add_argument("--seed", type=int, default=0, help="seed of weights, noise and batches")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--save", default=None, metavar="PATH",
                   help="save the trained model here (.npz; minilr.load reads it), also on Ctrl-C")
    t.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="write a checkpoint here after every epoch and on Ctrl-C (atomic)")
    t.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="also write the checkpoint every N steps")
    t.add_argument("--resume", action="store_true",
                   help="continue from --checkpoint if it exists (same settings: the same result)")
    t.add_argument("--distributed", action="store_true",
                   help="share the copies over the MPI ranks (run under mpiexec; pip install 'minilr[mpi]')")
    return p, {"train": t}


def _parse(parser, commands, argv):
    """``parser.parse_args``, but a flag the subcommand does not know is reported by the subcommand
    (its usage, not the top-level one) with the closest flag it does know."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = commands[args.command]
        known = [o for a in command._actions for o in a.option_strings]  # argparse lists no other way
        hints = []
        for token in extra:
            close = difflib.get_close_matches(token.split("=")[0], known, n=1) if token.startswith("-") else []
            if close:
                hints.append(f"did you mean {close[0]}?")
        command.error(f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})" if hints else ""))
    return args


def main(argv=None, prog=None) -> int:
    """Run the command line; returns the exit status (2 for a bad argument, 1 if training diverged).
    ``prog``: the name usage and messages give the command (default: from how it was started)."""
    from .train import TrainingDiverged

    prog = prog or _prog()
    parser, commands = _parser(prog)
    args = _parse(parser, commands, argv)
    # MINILR_EPOCHS lets CI run the README's main job short without changing the command.
    epochs = os.environ.get("MINILR_EPOCHS", args.epochs)
    try:
        epochs = int(epochs)
    except ValueError:
        parser.error(f"MINILR_EPOCHS must be an integer, got {epochs!r}")
    try:
        _signals.end_quiet_interrupt()  # from here on Ctrl-C is a KeyboardInterrupt handled below
        return _train(args, epochs, prog)
    except KeyboardInterrupt:  # before training started: nothing to save
        print(f"{prog} train: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        # Bad values reach here from the library's checks, before any training: say what, not where.
        print(f"{prog} train: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"{prog} train: training diverged: {exc}", file=sys.stderr)
        return 1


def _load(args):
    """``((x, y), (x_test, y_test), edges)``: ``edges`` is the sbm graph's (else None); a missing
    local data set names the flag that points at it."""
    if args.data == "sbm":
        graph = datasets.sbm()
        return (*graph.split(), graph.edges)
    kw = {"root": args.data_root} if args.data in ("mnist", "fashion-mnist", "cifar10") else {}
    try:
        return (*datasets.load(args.data, **kw), None)
    except FileNotFoundError as exc:  # the library says root=...; here it is a flag
        msg = str(exc).replace("pass root=...", "pass --data-root DIR")
        if "--data-root" not in msg:
            msg += " (pass --data-root DIR)"
        raise FileNotFoundError(msg) from None


def _model(args, x, classes, edges):
    """A network that fits the data: graph attention layers on the sbm graph, an LSTM then
    Linear layers on sequences (N, T, F), an MLP on vectors; ``--hidden`` gives the widths.
    Returns the model and how to name it."""
    from . import layers as L
    from .graph import GraphAttention
    from .models import MLP, Sequential
    from .recurrent import LSTM

    hidden, act = args.hidden, args.activation
    kw = dict(sigma=args.sigma, seed=args.seed, learn_sigma=args.learn_sigma)
    if edges is not None:
        widths = [x.shape[-1], *hidden, classes]
        stack = []
        for i in range(len(widths) - 1):
            stack.append(GraphAttention(widths[i], widths[i + 1], edges))
            if i < len(widths) - 2:
                stack.append(L.activation(act))
        names = "-".join(f"GAT({a}->{b})" for a, b in zip(widths, widths[1:]))
        return Sequential(stack, **kw), f"{names} ({act} between), {x.shape[1]} nodes as one sample"
    if x.ndim == 3:
        widths = [*hidden, classes]
        stack = [LSTM(x.shape[-1], widths[0])]
        for i in range(len(widths) - 1):
            if i:
                stack.append(L.activation(act))
            stack.append(L.Linear(widths[i], widths[i + 1]))
        return Sequential(stack, **kw), f"LSTM({x.shape[-1]}->{widths[0]}) then MLP {widths}"
    sizes = [x.shape[1], *hidden, classes]
    return MLP(sizes, activation=act, **kw), f"MLP {sizes}"


def _train(args, epochs, prog) -> int:
    from tqdm import tqdm

    from .io import save
    from .train import train

    comm = None
    if args.distributed:  # every rank runs this same code; only rank 0 speaks
        from .parallel import mpi

        comm = mpi.world()
        if args.backend == "cupy":
            mpi.use_rank_device(comm)
    root = comm is None or comm.Get_rank() == 0

    def say(text):
        # through tqdm: on a terminal the progress bar (stderr) is lifted off its line first, so
        # a line on stdout never lands on the bar's line
        if root:
            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()

    (x, y), (xt, yt), edges = _load(args)
    classes = int(max(y.max(), yt.max())) + 1
    model, name = _model(args, x, classes, edges)
    ranks = f", {comm.Get_size()} MPI ranks" if comm is not None else ""
    counts = (f"{int((y >= 0).sum())} train / {int((yt >= 0).sum())} test nodes" if edges is not None
              else f"{len(x)} train / {len(xt)} test")
    say(f"minilr: {args.estimator} on {args.data} ({counts}), {name}, {args.copies} copies, "
        f"{epochs} epochs, backend {args.backend}{ranks}")

    def report(epoch, h):
        say(f"epoch {epoch + 1:3d}/{epochs}  train loss {h.train_loss[-1]:.4f}  "
            f"train acc {h.train_accuracy[-1]:.3f}  test acc {h.val_accuracy[-1]:.3f}  "
            f"({h.seconds[-1]:.1f} s)")

    if args.resume and args.checkpoint and os.path.exists(args.checkpoint):
        _say_resuming(args.checkpoint, epochs, say)
    try:
        h = train(model, (x, y), val_data=(xt, yt), estimator=args.estimator, copies=args.copies,
                  epochs=epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                  backend=args.backend, seed=args.seed, progress=not args.no_progress and sys.stderr.isatty(),
                  baseline=not args.no_baseline, antithetic=args.antithetic, chunk=args.chunk,
                  es_layers=args.es_layers, schedule=args.schedule, momentum=args.momentum,
                  sigma_bounds=(args.sigma_min, args.sigma_max), weight_bound=args.weight_bound,
                  callback=report, checkpoint=args.checkpoint, resume=args.resume,
                  checkpoint_every=args.checkpoint_every, surrogate=args.surrogate, **({"comm": comm} if comm is not None else {}))
    except KeyboardInterrupt:
        # train stops after a whole step and has written the checkpoint (if asked): say so, briefly
        saved = []
        if args.save and root:
            save(model, args.save)
            saved.append(f"model saved to {args.save}")
        if args.checkpoint:
            saved.append(f"checkpoint in {args.checkpoint} (continue with --resume)")
        print(f"{prog} train: interrupted" + (": " + "; ".join(saved) if saved else ""), file=sys.stderr)
        return 130
    if args.save and root:
        save(model, args.save)
        say(f"model saved to {args.save}")
    if not h.val_accuracy:  # resumed a run that had already finished
        say("nothing to do: the checkpoint has finished all epochs")
        return 0
    say(f"final test accuracy: {h.val_accuracy[-1]:.4f}  ({sum(h.seconds):.1f} s training)")
    return 0


def _say_resuming(path, epochs, say):
    """"resuming from run.npz at epoch 3": where the checkpoint stands (train checks the rest)."""
    from . import checkpoint

    try:
        where = checkpoint.read(path)[0]["where"]
        epoch, batch = int(where["epoch"]), int(where["batch"])
    except (ValueError, KeyError, TypeError, OSError):
        return  # train names what is wrong with the file
    if epoch >= epochs:
        return  # nothing left to do: said after train returns
    step = f", step {batch + 1}" if batch else ""
    say(f"resuming from {path} at epoch {epoch + 1}{step}")


if __name__ == "__main__":
    sys.exit(main())
