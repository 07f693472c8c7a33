#!/usr/bin/env python
"""Randomized smoothing's CERTIFY: noisy forward passes per second, and what precision changes.

    python scripts/bench_smoothing.py                       # the baseline, 20 images, 10,000 samples
    python scripts/bench_smoothing.py --checkpoint checkpoints/smoothed-gaussian-0.5.pt --sigma 0.5 --n 50

In one process, on the first --n test images:

- the bare loop: Cohen et al.'s sampling as their code writes it (for each image, batches of
  ``x + sigma * randn_like``, the model's argmax counted), fp32, the global random stream;
- ``advx.Smoothed.certify`` in fp32 and in each of ``--precisions`` (default: bf16 where the
  CPU runs it fast): its forwards per second and the speedup over the bare loop;
- the votes of each precision against advx's fp32 run on the same noise (each image's own
  stream): how many votes moved, and whether any prediction or radius changed.

The target of issue 32: CERTIFY with 10,000 samples on 500 images in 10 minutes on 2 cores,
i.e. at least 8,334 noisy forwards per second on the SmallCNN.
"""

from __future__ import annotations

import argparse
import time

import torch

from advx import Smoothed
from advx.modes import frozen
from advx.precision import fast_bf16
from advx.subject import load_subject


@torch.no_grad()
def bare_counts(model, x: torch.Tensor, sigma: float, samples: int, batch_size: int, num_classes: int):
    """Votes [N, K]: Cohen et al.'s ``_sample_noise``, image by image."""
    votes = torch.zeros(len(x), num_classes, dtype=torch.long)
    with frozen(model):
        for i in range(len(x)):
            left = samples
            while left > 0:
                n = min(batch_size, left)
                batch = x[i:i + 1].repeat(n, 1, 1, 1)
                noisy = batch + sigma * torch.randn_like(batch)
                votes[i] += torch.bincount(model(noisy).argmax(1), minlength=num_classes)
                left -= n
    return votes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/baseline.pt")
    p.add_argument("--n", type=int, default=20, help="test images (default: 20)")
    p.add_argument("--samples", type=int, default=10000, help="noise samples per image (default: 10,000)")
    p.add_argument("--n0", type=int, default=100, help="selection samples (default: 100)")
    p.add_argument("--sigma", type=float, default=0.25, help="default: 0.25")
    p.add_argument("--alpha", type=float, default=0.001, help="default: 0.001")
    p.add_argument("--batch-size", type=int, default=1000, help="default: 1000")
    p.add_argument("--precisions", default=None, help="comma-separated, beside fp32 (default: bf16 where fast)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    precisions = (args.precisions.split(",") if args.precisions else (["bf16"] if fast_bf16("cpu") else []))
    subject, test = load_subject(args.checkpoint, n=args.n, data_dir=args.data_dir)
    model, x, y = subject.model, test.x, test.y
    forwards = args.n * (args.n0 + args.samples)
    print(f"{subject.title}: sigma {args.sigma:g}, {args.n} images x ({args.n0} + {args.samples:,}) noisy forwards, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads")

    torch.manual_seed(0)
    start = time.perf_counter()
    bare_counts(model, x, args.sigma, args.n0 + args.samples, args.batch_size, subject.dataset.num_classes)
    bare = time.perf_counter() - start
    print(f"{'run':<12} {'seconds':>8} {'forwards/s':>11} {'speedup':>8}  votes moved / predictions or radii changed")
    print(f"{'bare loop':<12} {bare:>8.1f} {forwards / bare:>11,.0f} {1.0:>8.2f}")
    runs = {}
    for precision in ["fp32", *precisions]:
        start = time.perf_counter()
        runs[precision] = Smoothed(model, args.sigma).certify(x, n0=args.n0, samples=args.samples, alpha=args.alpha,
                                                              batch_size=args.batch_size, precision=precision)
        seconds = time.perf_counter() - start
        ref = runs["fp32"]
        moved = int((runs[precision].counts - ref.counts).abs().sum()) // 2
        changed = int(((runs[precision].prediction != ref.prediction) | (runs[precision].radius != ref.radius)).sum())
        print(f"{'advx ' + precision:<12} {seconds:>8.1f} {forwards / seconds:>11,.0f} {bare / seconds:>8.2f}  "
              f"{moved:,} of {args.n * args.samples:,} / {changed} of {args.n}")
    result = runs["fp32"]
    print(f"fp32: certified at radius 0 (correct, not abstained): {result.certified(y, 0.0).float().mean():.2%}; "
          f"mean radius of those {result.radius[result.certified(y, 0.0)].mean():.3f}")


if __name__ == "__main__":
    main()
