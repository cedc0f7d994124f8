"""Command line: ``python -m minilr train --data digits --estimator alr --copies 100 --epochs 20``."""
from __future__ import annotations

import argparse
import os
import sys

from . import _signals, datasets
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


def _parser():
    p = argparse.ArgumentParser(prog="python -m minilr", description="Train without backpropagation.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an MLP and print the test accuracy",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data", default="digits", choices=list(datasets.NAMES), help="data set")
    t.add_argument("--data-root", default=None,
                   help="folder with the local files (mnist, fashion-mnist: IDX; cifar10: python batches)")
    t.add_argument("--hidden", default="64", type=_widths, help="hidden widths, comma-separated (e.g. 128,64)")
    t.add_argument("--activation", default="relu", choices=sorted(ACTIVATIONS), help="hidden activation")
    t.add_argument("--sigma", type=float, default=0.1, help="noise scale of every neuron")
    t.add_argument("--learn-sigma", action="store_true", help="train sigma too")
    t.add_argument("--estimator", default="alr", choices=ESTIMATORS, help="gradient estimator (bp: exact)")
    t.add_argument("--copies", type=int, default=100, help="noisy copies K per sample")
    t.add_argument("--chunk", type=int, default=None, help="copies processed at a time (memory)")
    t.add_argument("--antithetic", action="store_true", help="mirrored noise pairs")
    t.add_argument("--no-baseline", action="store_true", help="do not subtract the loss baseline")
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
    return p


def main(argv=None) -> int:
    """Run the command line; returns the exit status (2 for a bad argument, 1 if training diverged)."""
    from .train import TrainingDiverged

    parser = _parser()
    args = parser.parse_args(argv)
    # MINILR_EPOCHS lets CI run the README's main job short without changing the command.
    epochs = os.environ.get("MINILR_EPOCHS", args.epochs)
    try:
        epochs = int(epochs)
    except ValueError:
        parser.error(f"MINILR_EPOCHS must be an integer, got {epochs!r}")
    try:
        _signals.end_quiet_interrupt()  # from here on Ctrl-C is a KeyboardInterrupt handled below
        return _train(args, epochs)
    except KeyboardInterrupt:  # before training started: nothing to save
        print("python -m minilr train: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        # Bad values reach here from the library's checks, before any training: say what, not where.
        print(f"python -m minilr train: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"python -m minilr train: training diverged: {exc}", file=sys.stderr)
        return 1


def _train(args, epochs) -> int:
    from .io import save
    from .models import MLP
    from .train import train

    comm = None
    if args.distributed:  # every rank runs this same code; only rank 0 speaks
        from .parallel import mpi

        comm = mpi.world()
        if args.backend == "cupy":
            mpi.use_rank_device(comm)
    root = comm is None or comm.Get_rank() == 0

    def say(*a, **k):
        if root:
            print(*a, **k)

    kw = {"root": args.data_root} if args.data in ("mnist", "fashion-mnist", "cifar10") else {}
    (x, y), (xt, yt) = datasets.load(args.data, **kw)
    hidden = args.hidden
    model = MLP([x.shape[1], *hidden, int(y.max()) + 1], activation=args.activation, sigma=args.sigma,
                seed=args.seed, learn_sigma=args.learn_sigma)
    ranks = f", {comm.Get_size()} MPI ranks" if comm is not None else ""
    say(f"minilr: {args.estimator} on {args.data} ({len(x)} train / {len(xt)} test), "
        f"MLP {[x.shape[1], *hidden, int(y.max()) + 1]}, {args.copies} copies, {epochs} epochs, "
        f"backend {args.backend}{ranks}", flush=True)

    def report(epoch, h):
        say(f"epoch {epoch + 1:3d}/{epochs}  train loss {h.train_loss[-1]:.4f}  "
              f"train acc {h.train_accuracy[-1]:.3f}  test acc {h.val_accuracy[-1]:.3f}  "
              f"({h.seconds[-1]:.1f} s)", flush=True)

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
                  checkpoint_every=args.checkpoint_every, **({"comm": comm} if comm is not None else {}))
    except KeyboardInterrupt:
        # train stops after a whole step and has written the checkpoint (if asked): say so, briefly
        saved = []
        if args.save and root:
            save(model, args.save)
            saved.append(f"model saved to {args.save}")
        if args.checkpoint:
            saved.append(f"checkpoint in {args.checkpoint} (continue with --resume)")
        print("python -m minilr train: interrupted" + (": " + "; ".join(saved) if saved else ""),
              file=sys.stderr)
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
    say(f"resuming from {path} at epoch {epoch + 1}{step}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
