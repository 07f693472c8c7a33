#!/usr/bin/env python
"""L0 (pixels changed) benchmarks, both sides on the same images in one process.

    python scripts/bench_l0.py suite --checkpoints checkpoints/baseline.pt --n 1000
    python scripts/bench_l0.py minimum --checkpoints checkpoints/baseline.pt --n 200   # in a bench venv

``suite``: advx's strong L0 suite (``advx eval --norm 0``) against Sparse-RS alone with
10,000 queries (its paper's MNIST budget), at k = 5, 10, 15, 20 pixels: robust accuracy,
wall time, their ratio, and the images either side breaks and the other does not. Target:
the suite is at least as strong, in at most the time.

``minimum``: advx's sigma-zero (minimum L0, one run for every k) against the minimum-L0
attacks of the reference libraries that are installed (Foolbox's L0 Brendel-Bethge and
L0 FMN, torchattacks' SparseFool; see scripts/bench-requirements.txt, in a virtualenv of its
own): the median number of changed pixels (a failure counts as infinitely many) and the
time. Every side's images are checked here: a pixel counts as changed when some channel
moved by more than 1e-6, smaller moves are reset, and the image must still be misclassified.
Target: advx's median is no larger than the best reference's.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from pathlib import Path

import torch

from advx import SigmaZero
from advx.attacks.registry import describe, suite
from advx.evaluate import evaluate
from advx.subject import load_subject

KS = (5, 10, 15, 20)
TOLERANCE = 1e-6


def run_suite(model, x, y, batch_size):
    """``(name, evaluation, seconds)`` for advx's suite and for Sparse-RS alone."""
    sides = [("advx strong", suite("strong", "0")), ("sparse-rs 10000", [("sparse-rs", {"queries": 10000})])]
    out = []
    for name, stages in sides:
        start = time.perf_counter()
        ev = evaluate(model, x, y, attacks=stages, eps=list(KS), norm="0", batch_size=batch_size,
                      checks=False, progress=False)
        out.append((name, ev, time.perf_counter() - start))
        print(f"  {name}: {describe(stages)}: " + ", ".join(f"k={k} {ev.robust_acc[k]:.2%}" for k in KS)
              + f" in {out[-1][2]:.1f} s", flush=True)
    return out


def counted(model, x, y, x_adv):
    """Per image: pixels changed by more than ``TOLERANCE`` (inf where the image so cleaned is
    not misclassified)."""
    moved = (x_adv - x).abs() > TOLERANCE
    cleaned = torch.where(moved, x_adv, x).clamp(0, 1)
    with torch.no_grad():
        fooled = model(cleaned).argmax(1) != y
    pixels = moved.any(1).flatten(1).sum(1).double()
    return torch.where(fooled, pixels, torch.full_like(pixels, math.inf))


def references():
    """``(name, attack(model, x, y) -> x_adv)`` for each reference library installed."""
    out = []
    if importlib.util.find_spec("foolbox") is not None:
        import foolbox as fb

        def foolbox_attack(attack):
            def run(model, x, y):
                fmodel = fb.PyTorchModel(model, bounds=(0, 1))
                _, clipped, _ = attack(fmodel, x, y, epsilons=None)
                return clipped
            return run
        def brendel_bethge(model, x, y):
            """Brendel-Bethge needs an adversarial starting point for every image; its default
            start (blended uniform noise) finds none for some MNIST digits and the attack then
            stops. It starts from Foolbox's salt-and-pepper attack, else its L0 FMN; an image
            neither finds a start for is left unchanged (counted as not fooled)."""
            fmodel = fb.PyTorchModel(model, bounds=(0, 1))
            _, start, ok = fb.attacks.SaltAndPepperNoiseAttack()(fmodel, x, y, epsilons=None)
            if not ok.all():
                _, other, found = fb.attacks.L0FMNAttack()(fmodel, x, y, epsilons=None)
                start, ok = torch.where(ok[:, None, None, None], start, other), ok | found
            out = x.clone()
            if ok.any():
                _, adv, _ = fb.attacks.L0BrendelBethgeAttack()(fmodel, x[ok], y[ok], epsilons=None,
                                                              starting_points=start[ok])
                out[ok] = adv
            print(f"  (Brendel-Bethge had a starting point for {int(ok.sum())} of {len(x)} images)")
            return out
        out.append(("foolbox L0 Brendel-Bethge", brendel_bethge))
        out.append(("foolbox L0 FMN", foolbox_attack(fb.attacks.L0FMNAttack())))
    if importlib.util.find_spec("torchattacks") is not None:
        import torchattacks

        out.append(("torchattacks SparseFool", lambda model, x, y: torchattacks.SparseFool(model)(x, y)))
    return out


def run_minimum(model, x, y):
    rows = []
    sides = [("advx sigma-zero", lambda m, xs, ys: SigmaZero(m).run(xs, ys).x_adv)] + references()
    for name, attack in sides:
        start = time.perf_counter()
        x_adv = attack(model, x, y).detach()
        seconds = time.perf_counter() - start
        pixels = counted(model, x, y, x_adv)
        rows.append((name, pixels, seconds))
        print(f"  {name}: median {pixels.median().item():g} pixels, fooled {(pixels < math.inf).double().mean():.2%}"
              f", in {seconds:.1f} s", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["suite", "minimum"])
    p.add_argument("--checkpoints", default="checkpoints/baseline.pt")
    p.add_argument("--n", type=int, default=None, help="the first N test images (default: 1000 suite, 200 minimum)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    n = args.n or (1000 if args.what == "suite" else 200)
    for path in args.checkpoints.split(","):
        if not Path(path).exists():
            print(f"skipping {path}: not found")
            continue
        subject, test = load_subject(path, n=n, data_dir=args.data_dir, check=False)
        model = subject.model.eval()
        print(f"{path}, first {n} test images, cpu, {torch.get_num_threads()} threads")
        if args.what == "suite":
            (a, ev_a, s_a), (b, ev_b, s_b) = run_suite(model, test.x, test.y, args.batch_size)
            print(f"{'k':>3} {a:>12} {b:>16} {'advx weaker on':>14} {'stronger on':>11}")
            for i, k in enumerate(KS):
                ours, theirs = ev_a.records["robust"][i].bool(), ev_b.records["robust"][i].bool()
                print(f"{k:>3} {ev_a.robust_acc[k]:>12.2%} {ev_b.robust_acc[k]:>16.2%} "
                      f"{int((ours & ~theirs).sum()):>14} {int((~ours & theirs).sum()):>11}")
            print(f"time: {s_a:.1f} s against {s_b:.1f} s, ratio {s_a / s_b:.3f}")
        else:
            with torch.no_grad():
                right = model(test.x).argmax(1) == test.y
            rows = run_minimum(model, test.x[right], test.y[right])
            print(f"{int(right.sum())} images classified correctly; median pixels changed (inf: not fooled):")
            for name, pixels, seconds in rows:
                print(f"  {name:<28} median {pixels.median().item():>5g}  mean of fooled "
                      f"{pixels[pixels < math.inf].mean().item():>6.2f}  {seconds:>7.1f} s")


if __name__ == "__main__":
    main()
