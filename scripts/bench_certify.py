#!/usr/bin/env python
"""Certification speed: images per second of each method, side by side in one process.

    python scripts/bench_certify.py --checkpoint checkpoints/certified.pt --eps 0.1 --n 10000
    python scripts/bench_certify.py --checkpoint checkpoints/robust.pt --eps 0.1 --n 200 --no-dense

For CROWN it also times the two shortcuts advx takes, against the plain way on the same
images: receptive-field windows for convolutional neurons (``advx.certify.patches``)
against dense back-substitution, and screening (CROWN only where IBP did not certify)
against CROWN on every sample. Every side must certify the same samples; the script
says so, or stops.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager

import torch

from advx.certify import Certifier, patches
from advx.subject import load_subject


@contextmanager
def dense_only():
    """Switch off the receptive-field walk: every row is back-substituted densely."""
    real = patches.spatial
    patches.spatial = lambda op: False
    try:
        yield
    finally:
        patches.spatial = real


def timed(certifier, x, y, eps, batch_size):
    start = time.perf_counter()
    cert = certifier(x, y, eps=eps, batch_size=batch_size)
    return time.perf_counter() - start, cert


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/certified.pt", help="default: checkpoints/certified.pt")
    p.add_argument("--eps", type=float, default=0.1, help="Linf budget (default: 0.1)")
    p.add_argument("--n", type=int, default=10000, help="first N test images (default: 10000)")
    p.add_argument("--batch-size", type=int, default=256, help="default: 256")
    p.add_argument("--no-dense", action="store_true", help="skip the slow dense CROWN side")
    p.add_argument("--data-dir", default=None, help="folder holding MNIST/raw (default: $ADVX_DATA or ./data)")
    args = p.parse_args(argv)
    subject, test = load_subject(args.checkpoint, n=args.n, data_dir=args.data_dir, check=False)
    model = subject.model  # and the first n test images of its dataset
    x, y = test.x, test.y
    print(f"{args.checkpoint}: {args.n} test images, Linf eps {args.eps:g}, {torch.get_num_threads()} threads")
    runs = {}
    for name, method, screen in (("ibp", "ibp", True), ("crown-ibp", "crown-ibp", True),
                                 ("crown", "crown", True), ("crown, every sample", "crown", False)):
        runs[name] = timed(Certifier(model, method=method, screen=screen), x, y, args.eps, args.batch_size)
    if not args.no_dense:
        with dense_only():
            runs["crown, every sample, dense"] = timed(Certifier(model, method="crown", screen=False),
                                                      x, y, args.eps, args.batch_size)
    print(f"{'method':<28} {'certified':>9} {'seconds':>8} {'images/s':>9}")
    for name, (seconds, cert) in runs.items():
        print(f"{name:<28} {cert.certified.float().mean().item():>9.2%} {seconds:>8.2f} {len(y) / seconds:>9.0f}")
    full = runs["crown, every sample"]
    print(f"screening (CROWN where IBP fails) vs CROWN everywhere: {full[0] / runs['crown'][0]:.2f}x")
    if not torch.equal(full[1].certified, runs["crown"][1].certified):
        print("ERROR: screening changed a verdict", file=sys.stderr)
        return 1
    if not args.no_dense:
        dense = runs["crown, every sample, dense"]
        print(f"receptive-field windows vs dense back-substitution: {dense[0] / full[0]:.2f}x")
        if not torch.equal(dense[1].certified, full[1].certified):
            print("ERROR: the windows changed a verdict", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
