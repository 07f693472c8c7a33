"""``advx attack --universal``: one perturbation for every image, found on training images
(dL/dX summed over them, weights frozen) and measured on the first N test images."""

from __future__ import annotations

import argparse
import time

from advx import distributed
from advx.cli.common import CLIError, check_model_options, device_named, floats, load_subject
from advx.data import load_dataset
from advx.files import check_output_dir
from advx.norms import Frame, Patch, get_norm
from advx.report.attack import universal_sweep_table, universal_table, write_universal_outputs, write_universal_sweep
from advx.universal import NORMS, find_universal, fooling
from advx.universal_search import search_universal

# ``advx attack`` options that a universal perturbation has no use for, with their "not given" value.
UNUSED = {"targeted": False, "target_class": None, "bpda": False, "eot": None, "restarts": None, "early_stop": False}
# ``advx eval``'s, likewise.
UNUSED_IN_EVAL = {"attacks": None, "suite": None, "certify": None, "smoothing": None, "eot": None, "votes": None,
                  "restarts": None, "resume": False, "no_cascade": False, "no_early_stop": False}


def add_options(a: argparse.ArgumentParser) -> None:
    _add(a, "universal perturbation (--universal)",
         "one perturbation for every image (Linf or L2; or, with --norm patch, one patch of side --eps pasted at "
         "one place; with --norm frame, a border --eps pixels wide), found by gradient ascent over --train-images "
         "training images (default 10,000; --steps passes, default 3, in batches of --batch-size, default 50; "
         "--alpha the first step, default eps/5, a patch's or frame's 1/4), or, with --attack sparse-rs (patch "
         "or frame), by Sparse-RS's random search on the model's scores (default 500 training images; --steps "
         "queries, default 1,000, each a forward pass over them); then its fooling rate (predictions it changes) "
         "on the first --n test images; writes perturbation.pt, examples.png and report.json")


def add_eval_options(e: argparse.ArgumentParser) -> None:
    _add(e, "universal perturbations (--universal)",
         "the universal threat model: for each eps (default: the curve of --norm: inf, 2, patch for one patch "
         "pasted at one place, or frame for a border eps pixels wide), one perturbation for every image, found "
         "by gradient ascent over --train-images training images (--steps passes, default 3; --alpha the first "
         "step, default eps/5, a patch's 1/4); reports the accuracy under it and its fooling rate on the first --n test images")


def _add(parser: argparse.ArgumentParser, title: str, what: str) -> None:
    """``--universal`` (described by ``what``) and ``--train-images``, in a group ``title``."""
    g = parser.add_argument_group(title)
    g.add_argument("--universal", action="store_true", help=what)
    g.add_argument("--train-images", type=int, default=None,
                   help="--universal: the first N training images it is found on (default: 10,000; a random "
                        "search's 500)")


def check_not_given(args: argparse.Namespace) -> None:
    """``--train-images`` without ``--universal`` would be silently ignored: an error."""
    if args.train_images is not None:
        raise CLIError(f"--train-images goes with --universal (the training images a universal perturbation is "
                       f"found on), got --train-images {args.train_images} without it")


def run(args: argparse.Namespace) -> int:
    given = [f"--{k.replace('_', '-')}" for k, v in UNUSED.items() if getattr(args, k) != v]
    if given:
        raise CLIError(f"{', '.join(given)} cannot go with --universal (one untargeted perturbation for every image)")
    norm = get_norm(args.norm or "inf")
    if not isinstance(norm, NORMS):
        raise CLIError(f"--norm must be inf, 2, patch or frame with --universal, got --norm {args.norm}")
    searched = args.attack == "sparse-rs"
    if args.attack not in ("pgd", "sparse-rs"):  # pgd: --attack's default, the gradient method
        raise CLIError(f"--attack with --universal must be sparse-rs (a random search) or left out (gradient "
                       f"ascent), got --attack {args.attack}")
    if searched and not isinstance(norm, (Patch, Frame)):
        raise CLIError(f"--attack sparse-rs with --universal searches a patch or a frame: give --norm patch or "
                       f"--norm frame, got --norm {args.norm or 'inf'}")
    if searched and args.alpha is not None:
        raise CLIError("--alpha cannot go with --attack sparse-rs (a random search takes no step size)")
    args.train_images = (500 if searched else 10000) if args.train_images is None else args.train_images
    _check_search_options(args)
    if args.batch_size is not None and args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.eps is not None and args.eps < 0:
        raise CLIError(f"--eps must be >= 0, got {args.eps:g}")
    check_model_options(args)
    if args.out is not None:
        check_output_dir(args.out, "--out")
    device = device_named(args.device)
    subject, test = load_subject(args, device)
    eps = subject.dataset.eps[norm.name] if args.eps is None else args.eps
    out = check_output_dir(args.out or f"runs/universal-{norm.name}-eps{eps:g}", "--out")
    train = _training_images(args, subject)
    began = time.perf_counter()
    if searched:
        found = search_universal(subject.model, train.x, train.y, eps=eps, norm=norm, queries=args.steps or 1000,
                                 seed=args.seed, device=device, batch_size=args.batch_size or 1000,
                                 progress=not args.quiet)
    else:
        found = find_universal(subject.model, train.x, train.y, eps=eps, norm=norm, epochs=args.steps or 3,
                               batch_size=args.batch_size or 50, step=args.alpha, seed=args.seed, device=device,
                               progress=not args.quiet)
    measured = fooling(subject.model, test.x, test.y, found.delta, mask=found.mask)
    seconds = time.perf_counter() - began
    print(universal_table(found, measured, n=len(test.y), train_images=args.train_images, seconds=seconds,
                          source=subject.source))
    settings = {"n": len(test.y), "train_images": args.train_images,
                **({"queries": args.steps or 1000} if searched else {"passes": args.steps or 3}),
                "batch_size": args.batch_size or (1000 if searched else 50), "seed": args.seed, "device": device,
                "seconds": seconds}
    written = write_universal_outputs(out, found, measured, test.x, test.y, settings=settings,
                                      source=subject.source)
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0


def run_eval(args: argparse.Namespace, default_eps) -> int:
    """``advx eval --universal``: for each eps of the curve, one perturbation found on
    ``--train-images`` training images, and the accuracy and fooling rate it gives on the test images."""
    given = [f"--{k.replace('_', '-')}" for k, v in UNUSED_IN_EVAL.items() if getattr(args, k) != v]
    if given:
        raise CLIError(f"{', '.join(given)} cannot go with --universal (one perturbation for every image, "
                       f"found by gradient ascent)")
    norm = get_norm(args.norm)
    if not isinstance(norm, NORMS):
        raise CLIError(f"--norm must be inf, 2, patch or frame with --universal, got --norm {args.norm}")
    args.train_images = 10000 if args.train_images is None else args.train_images
    _check_search_options(args)
    given_eps = floats(args.eps, "--eps") if args.eps is not None else None
    if given_eps is not None and (not given_eps or min(given_eps) < 0):
        raise CLIError(f"--eps must be comma-separated budgets >= 0, got {args.eps!r}")
    check_model_options(args)
    out = check_output_dir(args.out, "--out")
    device = device_named(args.device)
    subject, test = load_subject(args, device)
    budgets = given_eps or floats(default_eps(subject.dataset.name, norm.name), "--eps")
    train = _training_images(args, subject)
    began = time.perf_counter()
    rows = []
    for eps in budgets:
        found = find_universal(subject.model, train.x, train.y, eps=eps, norm=norm, epochs=args.steps or 3,
                               batch_size=50, step=args.alpha, seed=args.seed, device=device,
                               progress=not args.quiet)
        rows.append((found, fooling(subject.model, test.x, test.y, found.delta, mask=found.mask)))
    seconds = time.perf_counter() - began
    print(universal_sweep_table(rows, n=len(test.y), train_images=len(train.y), seconds=seconds,
                                source=subject.source))
    settings = {"n": len(test.y), "train_images": len(train.y), "passes": args.steps or 3, "batch_size": 50,
                "seed": args.seed, "device": device, "seconds": seconds}
    written = write_universal_sweep(out, rows, test.x, test.y, settings=settings, source=subject.source)
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0


def _check_search_options(args: argparse.Namespace) -> None:
    """``--train-images``, ``--steps`` (passes), ``--alpha`` (the first step), one process."""
    if args.train_images < 1:
        raise CLIError(f"--train-images must be >= 1, got {args.train_images}")
    if args.steps is not None and args.steps < 1:
        raise CLIError(f"--steps must be >= 1, got {args.steps}")
    if args.alpha is not None and not args.alpha > 0:
        raise CLIError(f"--alpha must be > 0 (the first step), got {args.alpha:g}")
    if distributed.world()[1] > 1:
        raise CLIError("--universal runs in one process: run it without torchrun")


def _training_images(args: argparse.Namespace, subject):
    """The first ``--train-images`` training images of the subject's dataset."""
    train = load_dataset(subject.dataset, "train", args.data_dir)
    if args.train_images > len(train):
        raise CLIError(f"--train-images must be at most {len(train):,} ({subject.dataset.title}'s training "
                       f"images), got {args.train_images:,}")
    return train.head(args.train_images)
