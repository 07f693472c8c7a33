"""What the commands share: the CLI's own error, the options every command takes, the
model a command works on (loaded by ``advx.subject``, printed here), and the small parsers
of option values."""

from __future__ import annotations

import argparse
import sys

import torch

from advx.checkpoint import DEFAULT_CHECKPOINT
from advx.data import Split
from advx.datasets import DATASET_NAMES
from advx.precision import PRECISIONS
from advx.subject import Subject, check_sources
from advx.subject import load_subject as subject_and_images
from advx.validate import AdvxError


class CLIError(AdvxError, ValueError):
    """A bad combination of command-line options."""


def device_named(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was asked for, but torch.cuda.is_available() is False on this machine")
    return name


def common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder holding MNIST/raw/ and FashionMNIST/raw/ (default: $ADVX_DATA or ./data)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def precision_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help=f"{what} in bf16/fp16 under autocast; auto: bf16 where the hardware runs it fast "
                        "(AMX / AVX-512-BF16 CPU, bf16 GPU), else fp32 (default: fp32)")


def images_option(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument("--images", "--n", dest="n", type=int, default=default, metavar="N",
                   help=f"the first N test images (default: {default:,}; under torchrun write --images: torchrun "
                        "takes --n for one of its own options)")


def model_options(p: argparse.ArgumentParser) -> None:
    """The model to work on and the data it classifies (attack, eval, certify)."""
    g = p.add_argument_group("the model: an advx checkpoint, or your own (see the README's 'Bring your own model')")
    g.add_argument("--checkpoint", default=None,
                   help=f"an advx checkpoint, or zoo:NAME for a model shipped with advx (`advx zoo` lists them; "
                        f"default: {DEFAULT_CHECKPOINT}, unless --model is given)")
    g.add_argument("--model", default=None, metavar="MODULE:NAME|FILE.pt2",
                   help="your own model instead: an import string to a function or class that returns the "
                        "nn.Module (my_pkg.nets:build, or nets.py:build), or a torch.export program (.pt2)")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="with --model MODULE:NAME: a state_dict to load into it (torch.save(model.state_dict()); "
                        "read with weights_only=True)")
    g.add_argument("--mean", default=None,
                   help="the model's input normalization, one value per channel (e.g. 0.1307): attacks and eps "
                        "stay in pixel space [0, 1], the model sees (x - mean) / std; with --std")
    g.add_argument("--std", default=None, help="see --mean (e.g. 0.3081)")
    g.add_argument("--dataset", default=None, choices=DATASET_NAMES,
                   help="the test images (default: the checkpoint's dataset; mnist with --model)")


def floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{option} must be comma-separated numbers, got {text!r}") from None


def check_model_options(args: argparse.Namespace) -> None:
    """The model options' combinations, checked before any work."""
    check_sources(args.checkpoint, args.model, args.weights)
    if (args.mean is None) != (args.std is None):
        raise CLIError(f"--mean and --std go together, got only {'--mean' if args.std is None else '--std'}")


def load_subject(args: argparse.Namespace, device: str, verbose: bool = True) -> tuple[Subject, Split]:
    """``advx.subject.load_subject`` with the model options and the first ``--n`` test
    images; prints the clean accuracy and the warnings (``verbose=False``, ranks other than
    0: nothing, and nothing measured)."""
    check_model_options(args)
    normalization = None if args.mean is None else (floats(args.mean, "--mean"), floats(args.std, "--std"))
    subject, test = subject_and_images(args.checkpoint, model=args.model, weights=args.weights,
                                       normalization=normalization, dataset=args.dataset, n=args.n,
                                       data_dir=args.data_dir, device=device, check=verbose)
    if verbose:
        shown = subject.source["normalization"]
        print(f"{subject.title}: clean accuracy {subject.clean_acc:.2%} on the first {len(test.y):,} "
              f"{subject.dataset.title} test images"
              + (f" (normalized: mean {shown['mean']}, std {shown['std']})" if shown else ""))
        for warning in subject.warnings:
            print(f"WARNING: {warning}", file=sys.stderr)
    return subject, test


def name_what_is_kept(err: BaseException, store, what: str) -> None:
    """Add to ``err``'s one line how many results of a killed run ``store`` keeps (``what``:
    e.g. "batches of attack results"), and how to reuse them."""
    kept = len(list(store.folder.glob("*.pt"))) if store.folder.is_dir() else 0
    if kept and (not err.args or (len(err.args) == 1 and isinstance(err.args[0], str))):
        note = f"{kept} {what} are kept in {store.folder}: add --resume to reuse them"
        err.args = (f"{err.args[0]}; {note}" if err.args else note,)
