"""What the commands share: the CLI's own error, the options every command takes, the
model a command works on (an advx checkpoint, or the user's own: ``advx.loading``), and the
small parsers of option values."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
from torch import nn

from advx.checkpoint import DEFAULT_CHECKPOINT, load_model
from advx.data import Split, load_dataset
from advx.datasets import DATASET_NAMES, Dataset, get_dataset
from advx.loading import check_classifier, load_exported, model_from_import
from advx.models import Normalized
from advx.modes import accuracy
from advx.precision import PRECISIONS
from advx.sanity import check_clean_accuracy, check_normalization
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


def model_options(p: argparse.ArgumentParser) -> None:
    """The model to work on and the data it classifies (attack, eval, certify)."""
    g = p.add_argument_group("the model: an advx checkpoint, or your own (see the README's 'Bring your own model')")
    g.add_argument("--checkpoint", default=None,
                   help=f"an advx checkpoint (default: {DEFAULT_CHECKPOINT}, unless --model is given)")
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


def test_images(args: argparse.Namespace, dataset: "str | Dataset" = "mnist") -> Split:
    """The first ``--n`` test images of ``dataset``; more than the test set holds is an error."""
    if args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}")
    test = load_dataset(dataset, "test", args.data_dir)
    if args.n > len(test):
        raise CLIError(f"--n must be <= {len(test)} (the test images), got {args.n}")
    return test.head(args.n)


@dataclass
class Subject:
    """The model a command works on, on ``device`` in eval mode, and where it came from."""

    model: nn.Module
    dataset: Dataset
    source: dict  # report.json's first fields: checkpoint, model, dataset, classes, normalization
    final: dict | None = None  # an advx checkpoint's own end-of-training figure

    @property
    def title(self) -> str:
        return self.source["checkpoint"] or self.source["model"]


def check_model_options(args: argparse.Namespace) -> None:
    """The model options' combinations, checked before any work."""
    if args.model is not None and args.checkpoint is not None:
        raise CLIError(f"--model and --checkpoint exclude each other (an advx checkpoint, or your own model): "
                       f"got --model {args.model} and --checkpoint {args.checkpoint}")
    if args.weights is not None and (args.model is None or args.model.endswith(".pt2")):
        raise CLIError(f"--weights goes with --model MODULE:NAME (an exported .pt2 holds its weights), "
                       f"got --weights {args.weights} with {'--model ' + args.model if args.model else 'no --model'}")
    if (args.mean is None) != (args.std is None):
        raise CLIError(f"--mean and --std go together, got only {'--mean' if args.std is None else '--std'}")


def load_subject(args: argparse.Namespace, device: str, verbose: bool = True) -> tuple[Subject, Split]:
    """Load the model the options name and the first ``--n`` test images of its dataset;
    check that it classifies them (logits ``[N, classes]``), print its clean accuracy up
    front and warn when that is near chance or another usual normalization fits better (a
    wrong normalization, most often). ``verbose=False`` (ranks other than 0) prints nothing."""
    check_model_options(args)
    final = None
    if args.model is not None:
        if args.model.endswith(".pt2"):
            model, checkpoint = load_exported(args.model), args.model
        else:
            model, checkpoint = model_from_import(args.model, args.weights), args.weights
        dataset = get_dataset(args.dataset or "mnist")
    else:
        checkpoint = args.checkpoint or str(DEFAULT_CHECKPOINT)
        model, ckpt = load_model(checkpoint, device)
        if args.dataset is not None and args.dataset != ckpt["dataset"]:
            raise CLIError(f"--dataset {args.dataset} does not match the checkpoint: {checkpoint} was trained on "
                           f"{ckpt['dataset']} (leave --dataset out to use it)")
        dataset, final = get_dataset(ckpt["dataset"]), ckpt["metrics"].get("final")
    normalization = None
    if args.mean is not None:
        normalization = {"mean": floats(args.mean, "--mean"), "std": floats(args.std, "--std")}
        model = Normalized(model, **normalization)
    model = model.to(device).eval()
    test = test_images(args, dataset)
    check_classifier(model, test.x[:2].to(device), dataset.num_classes,
                     what=f"--model {args.model}" if args.model else f"--checkpoint {checkpoint}")
    source = {"checkpoint": checkpoint, "model": args.model or ckpt["model_name"], "dataset": dataset.name,
              "classes": list(dataset.classes), "normalization": normalization}
    subject = Subject(model, dataset, source, final)
    if not verbose:
        return subject, test
    acc = accuracy(model, test.x, test.y, device=device)
    print(f"{subject.title}: clean accuracy {acc:.2%} on the first {len(test.y):,} {dataset.title} test images"
          + (f" (normalized: mean {normalization['mean']}, std {normalization['std']})" if normalization else ""))
    given = None if normalization is None else tuple(v[0] for v in normalization.values())
    x, y = test.x[:500].to(device), test.y[:500].to(device)
    candidates = [None, dataset.normalization, (0.5, 0.5)] if given is None or len(normalization["mean"]) == 1 else []
    for warning in (check_clean_accuracy(acc, dataset.num_classes, normalized=normalization is not None),
                    check_normalization(model.model if given else model, x, y, given=given, candidates=candidates)):
        if warning:
            print(f"WARNING: {warning}", file=sys.stderr)
    return subject, test
