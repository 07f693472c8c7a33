"""Defended models: what plain attacks report, what ``advx eval``'s default (adapted) evaluation
reports, and what a hand-written adaptive attack finds, side by side on the same images.

Each defence of the test zoo (``tests/defences.py``: input quantization, binarization, an
8-bit codec, a detached smoothing, a palette; with ``--randomized``: input noise, random
resize-and-pad, noise then quantization) is put in front of an advx checkpoint. The
reference is BPDA written by hand (``advx.attacks.bpda.bpda`` around the preprocessing,
identity backward) with PGD, 100 steps; on a randomized defence with EOT over 20 draws per
step, on the model seeded by hand (``advx.attacks.eot.Seeded``), each verdict the majority
of 11 draws. The default evaluation should land within 5 points of it; the plain one shows
the trap.

    python scripts/bench_defences.py --checkpoint checkpoints/baseline.pt --n 500
    python scripts/bench_defences.py --checkpoint checkpoints/baseline.pt --n 200 --randomized --eps 0.1,0.3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the zoo lives with the tests
from defences import DEFENCES, RANDOMIZED  # noqa: E402

from advx import PGD, evaluate, load_subject  # noqa: E402
from advx.adapt import EOT, VOTES  # noqa: E402
from advx.attacks.bpda import bpda  # noqa: E402
from advx.attacks.eot import Seeded, majority  # noqa: E402


class _ByHand(nn.Module):
    """The defence with its preprocessing wrapped in ``bpda`` by hand: the reference attack's model."""

    def __init__(self, defended) -> None:
        super().__init__()
        self.defended, self.pre = defended, bpda(defended.preprocess)

    def forward(self, x):
        return self.defended.model(self.pre(x))


def by_hand(model, x, y, correct, eps: float, randomized: bool) -> float:
    """Robust accuracy under PGD-100 through BPDA written by hand (with EOT and majority verdicts
    on a randomized defence) on the correct images."""
    target = _ByHand(model)
    if not randomized:
        run = PGD(target, eps=eps, steps=100, seed=0).run(x[correct], y[correct])
        return (~run.success).sum().item() / len(y)
    target = Seeded(target, 0)
    x_adv = PGD(target, eps=eps, steps=100, seed=0, eot=EOT)(x[correct], y[correct])
    return (majority(target, x_adv, votes=VOTES) == y[correct]).sum().item() / len(y)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/baseline.pt")
    p.add_argument("--n", type=int, default=500, help="the first N test images (default: 500)")
    p.add_argument("--eps", default="0.3", help="comma-separated Linf budgets (default: 0.3)")
    p.add_argument("--randomized", action="store_true", help="the randomized defences instead of the deterministic")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    budgets = [float(e) for e in args.eps.split(",")]
    subject, test = load_subject(args.checkpoint, n=args.n, data_dir=args.data_dir, check=False)
    x, y = test.x, test.y
    reference = "EOT-BPDA-PGD-100 by hand" if args.randomized else "BPDA-PGD-100 by hand"
    print(f"{subject.title}: first {len(y)} test images, Linf; robust accuracy (seconds)")
    print(f"{'defence':>12}  {'eps':>5}  {'clean':>7}  {'plain fgsm,pgd':>16}  {'advx eval default':>18}  "
          f"{reference:>25}  adapted")
    for defence in RANDOMIZED if args.randomized else DEFENCES:
        model = defence(subject.model).eval()
        row = []
        for adapt in (False, True):
            start = time.perf_counter()
            ev = evaluate(model, x, y, attacks=["fgsm", "pgd"], eps=budgets, adapt=adapt, checks=False,
                          progress=False)
            row.append((ev, time.perf_counter() - start))
        (plain, t_plain), (default, t_default) = row
        correct = default.records["pred_clean"] == y
        for eps in budgets:
            start = time.perf_counter()
            hand = by_hand(model, x, y, correct, eps, args.randomized)
            seconds = time.perf_counter() - start
            print(f"{defence.name:>12}  {eps:>5g}  {default.clean_acc:>7.2%}  {plain.robust_acc[eps]:>8.2%} "
                  f"({t_plain:>4.0f})  {default.robust_acc[eps]:>9.2%} ({t_default:>4.0f})  "
                  f"{hand:>16.2%} ({seconds:>4.0f})  " + ",".join(default.settings["adaptations"]), flush=True)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    sys.exit(main())
