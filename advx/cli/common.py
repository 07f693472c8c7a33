"""What the commands share: the CLI's own error, the options every command takes, and
the small parsers of option values."""

from __future__ import annotations

import argparse

import torch

from advx.data import load_mnist
from advx.precision import PRECISIONS
from advx.validate import AdvxError


class CLIError(AdvxError, ValueError):
    """A bad combination of command-line options."""


def device_named(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was asked for, but torch.cuda.is_available() is False on this machine")
    return name


def common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder holding MNIST/raw/*.gz (default: $ADVX_DATA or ./data)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def precision_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help=f"{what} in bf16/fp16 under autocast; auto: bf16 where the hardware runs it fast "
                        "(AMX / AVX-512-BF16 CPU, bf16 GPU), else fp32 (default: fp32)")


def floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{option} must be comma-separated numbers, got {text!r}") from None


def test_images(args: argparse.Namespace):
    """The first ``--n`` test images; more than the test set holds is an error."""
    if args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}")
    test = load_mnist("test", args.data_dir)
    if args.n > len(test):
        raise CLIError(f"--n must be <= {len(test)} (the test images), got {args.n}")
    return test.head(args.n)
