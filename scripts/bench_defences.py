"""Defended models: what plain attacks report, what ``advx eval``'s default (adapted) evaluation
reports, and what a hand-written adaptive attack finds, side by side on the same images.

Each defence of the test zoo (``tests/defences.py``: input quantization, binarization, an
8-bit codec, a detached smoothing) is put in front of an advx checkpoint. The reference is
BPDA written by hand (``advx.attacks.bpda.bpda`` around the preprocessing, identity
backward) with PGD, 100 steps. The default evaluation should land within 5 points of it;
the plain one shows the trap.

    python scripts/bench_defences.py --checkpoint checkpoints/baseline.pt --n 500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the zoo lives with the tests
from defences import DEFENCES  # noqa: E402

from advx import PGD, evaluate, load_subject  # noqa: E402
from advx.attacks.bpda import bpda  # noqa: E402


class _ByHand(nn.Module):
    """The defence with its preprocessing wrapped in ``bpda`` by hand: the reference attack's model."""

    def __init__(self, defended) -> None:
        super().__init__()
        self.defended, self.pre = defended, bpda(defended.preprocess)

    def forward(self, x):
        return self.defended.model(self.pre(x))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/baseline.pt")
    p.add_argument("--n", type=int, default=500, help="the first N test images (default: 500)")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    subject, test = load_subject(args.checkpoint, n=args.n, data_dir=args.data_dir, check=False)
    x, y = test.x, test.y
    print(f"{subject.title}: first {len(y)} test images, Linf eps {args.eps:g}; robust accuracy (seconds)")
    print(f"{'defence':>12}  {'clean':>7}  {'plain fgsm,pgd':>16}  {'advx eval default':>18}  "
          f"{'BPDA-PGD-100 by hand':>21}  adapted")
    for defence in DEFENCES:
        model = defence(subject.model).eval()
        row = []
        for adapt in (False, True):
            start = time.perf_counter()
            ev = evaluate(model, x, y, attacks=["fgsm", "pgd"], eps=[args.eps], adapt=adapt, checks=False,
                          progress=False)
            row.append((ev.robust_acc[args.eps], time.perf_counter() - start, ev))
        start = time.perf_counter()
        correct = ev.records["pred_clean"] == y
        run = PGD(_ByHand(model), eps=args.eps, steps=100, seed=0).run(x[correct], y[correct])
        by_hand = (~run.success).sum().item() / len(y)
        seconds = time.perf_counter() - start
        (plain, t_plain, _), (default, t_default, ev) = row
        print(f"{defence.name:>12}  {ev.clean_acc:>7.2%}  {plain:>8.2%} ({t_plain:>4.0f})  "
              f"{default:>9.2%} ({t_default:>4.0f})  {by_hand:>12.2%} ({seconds:>4.0f})  "
              + ",".join(ev.settings["adaptations"]))
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    sys.exit(main())
