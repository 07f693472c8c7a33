"""EOT on randomized defences: ``advx eval``'s default (adapted) evaluation against the reference
AutoAttack's ``version="rand"`` (APGD-CE and APGD-DLR, 100 iterations, EOT over 20 draws), on
the same images, side by side.

Both sides' adversarial images are judged by the same rule, the majority of 11 draws of the
model's randomness (``advx.attacks.eot.majority`` on the seeded model), so that the figures
compare the attacks, not the verdicts; AutoAttack's own figure (one draw per verdict) is
printed beside. AutoAttack runs on the defence as it is (its randomness from the global RNG,
seeded once); advx seeds it per image (``advx.attacks.eot.Seeded``).

Runs in the bench virtualenv, which has the reference AutoAttack (``pyautoattack``):

    python3 -m venv .venv-bench && . .venv-bench/bin/activate
    pip install -e . -r scripts/bench-requirements.txt
    python scripts/bench_eot.py --checkpoint checkpoints/baseline.pt --n 200 --eps 0.1
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the zoo lives with the tests
from defences import Noisy, ResizePad  # noqa: E402

from advx import evaluate, load_subject  # noqa: E402
from advx.adapt import VOTES  # noqa: E402
from advx.attacks.eot import Seeded, majority  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/baseline.pt")
    p.add_argument("--n", type=int, default=200, help="the first N test images (default: 200)")
    p.add_argument("--eps", type=float, default=0.1, help="Linf budget (default: 0.1)")
    p.add_argument("--attacks", default="fgsm,pgd", help="advx's cascade (default: advx eval's, fgsm,pgd)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    subject, test = load_subject(args.checkpoint, n=args.n, data_dir=args.data_dir, check=False)
    x, y = test.x, test.y
    print(f"{subject.title}: first {len(y)} test images, Linf eps {args.eps:g}; robust accuracy, every verdict "
          f"the majority of {VOTES} draws (seconds)")
    print(f"{'defence':>11}  {'clean':>7}  {'advx eval default':>18}  {'AutoAttack rand':>16}  "
          f"{'(its own verdict)':>17}  advx's cascade")
    for defence in (Noisy, ResizePad):
        model = defence(subject.model).eval()
        judge = Seeded(model, 0)
        start = time.perf_counter()
        ev = evaluate(model, x, y, attacks=args.attacks.split(","), eps=[args.eps], checks=False, progress=False)
        t_advx = time.perf_counter() - start
        ours = ev.robust_acc[args.eps]

        torch.manual_seed(0)
        start = time.perf_counter()
        reference = AutoAttack(model, norm="Linf", eps=args.eps, version="rand", seed=0)
        reference.verbose = False
        x_ref = reference.run_standard_evaluation(x, y, batch_size=250)
        x_ref = x_ref[0] if isinstance(x_ref, tuple) else x_ref  # pyautoattack 0.2 returns (x_adv, y_adv)
        t_ref = time.perf_counter() - start
        with torch.no_grad():
            own = (model(x_ref).argmax(1) == y).float().mean().item()
        # the same rule for both: clean and adversarial verdicts by the majority of the seeded draws
        correct = majority(judge, x, votes=VOTES) == y
        theirs = (correct & (majority(judge, x_ref, votes=VOTES) == y)).float().mean().item()
        print(f"{defence.name:>11}  {ev.clean_acc:>7.2%}  {ours:>9.2%} ({t_advx:>5.0f})  {theirs:>8.2%} "
              f"({t_ref:>5.0f})  {own:>17.2%}  {ev.settings['stages']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
