#!/usr/bin/env python
"""Minimum-norm attacks side by side: advx FAB and FMN vs torchattacks' FAB at the same
number of iterations, per norm, on the correctly classified of the first MNIST test images.

    python3 -m venv .venv-bench && . .venv-bench/bin/activate   # torchattacks in its own venv
    pip install -e . -r scripts/bench-requirements.txt
    python scripts/bench_minnorm.py [--checkpoints checkpoints/baseline.pt,checkpoints/robust.pt]
                                    [--n 1000] [--steps 10] [--norms inf,2,1]

Figure of merit: the median per-sample distance (a sample the attack did not fool counts as
infinitely far), lower is better; and the wall time. torchattacks' FAB is called through its
single run (``attack_single_run``: no random start, as with one restart), which returns the
smallest adversarial example it found per sample; its ``perturb`` would keep only those within
its ``eps`` (and has no L1 distance check). Also timed: ``advx.evaluate`` with FAB at one eps
and at eight, which must cost one FAB run each (a minimum-norm attack answers every eps).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time

import torch

from advx import FAB, FMN, evaluate
from advx.norms import get_norm
from advx.subject import load_subject

TORCHATTACKS_NORM = {"inf": "Linf", "2": "L2", "1": "L1"}


def median_distance(model, x, y, x_adv, norm) -> tuple[float, float]:
    """(median distance with failures at inf, share fooled)."""
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    dist = get_norm(norm).size(x_adv - x)
    dist[~fooled] = math.inf
    return dist.median().item(), fooled.float().mean().item()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def torchattacks_fab(model, x, y, norm, steps):
    import torchattacks
    atk = torchattacks.FAB(model, norm=TORCHATTACKS_NORM[norm], steps=steps, n_restarts=1, n_classes=10)
    with torch.no_grad():
        return atk.attack_single_run(x, y, use_rand_start=False)


def rows_for(model, x, y, norm, steps, fmn_steps, have_torchattacks):
    runs = {f"advx FAB ({steps} steps)": lambda: FAB(model, norm=norm, steps=steps)(x, y),
            f"advx FMN ({steps} steps)": lambda: FMN(model, norm=norm, steps=steps)(x, y),
            f"advx FMN ({fmn_steps} steps)": lambda: FMN(model, norm=norm, steps=fmn_steps)(x, y)}
    if have_torchattacks:
        runs[f"torchattacks FAB ({steps} steps)"] = lambda: torchattacks_fab(model, x, y, norm, steps)
    rows = {}
    for name, run in runs.items():
        x_adv, seconds = timed(run)
        median, fooled = median_distance(model, x, y, x_adv, norm)
        rows[name] = (median, fooled, seconds)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="checkpoints/baseline.pt,checkpoints/robust.pt")
    p.add_argument("--n", type=int, default=1000, help="first N test images (the correct ones are attacked)")
    p.add_argument("--steps", type=int, default=10, help="iterations of both FABs (torchattacks' default: 10)")
    p.add_argument("--fmn-steps", type=int, default=100, help="FMN's iterations in its second row")
    p.add_argument("--norms", default="inf,2", help="comma-separated from inf,2,1")
    p.add_argument("--sweep-n", type=int, default=200, help="images for the one-eps vs eight-eps timing (0: skip)")
    args = p.parse_args()
    have = importlib.util.find_spec("torchattacks") is not None
    if not have:
        print("torchattacks is not installed: advx rows only (see the docstring for its venv)")
    for checkpoint in args.checkpoints.split(","):
        subject, test = load_subject(checkpoint, check=False)  # and its dataset's test images
        model = subject.model
        model.eval()
        x, y = test.x[:args.n], test.y[:args.n]
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        x, y = x[correct], y[correct]
        for norm in args.norms.split(","):
            rows = rows_for(model, x, y, norm, args.steps, args.fmn_steps, have)
            ref = next((v for k, v in rows.items() if k.startswith("torchattacks")), None)
            print(f"\n{checkpoint}, {get_norm(norm).label}, {len(y)} correctly classified of the first {args.n}")
            print(f"{'attack':<28} {'median dist':>11} {'fooled':>8} {'seconds':>8} {'dist ratio':>10} {'time ratio':>10}")
            for name, (median, fooled, seconds) in rows.items():
                ratio = f"{median / ref[0]:>10.3f}" if ref and math.isfinite(ref[0]) else f"{'':>10}"
                speed = f"{seconds / ref[2]:>10.2f}" if ref else f"{'':>10}"
                print(f"{name:<28} {median:>11.4f} {fooled:>8.2%} {seconds:>8.1f} {ratio} {speed}")
        if args.sweep_n:
            xs, ys = test.x[:args.sweep_n], test.y[:args.sweep_n]
            for eps in ([0.3], [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]):
                ev, seconds = timed(lambda: evaluate(model, xs, ys, attacks=[("fab", {"steps": args.steps})],
                                                     eps=eps, progress=False, checks=False))
                print(f"advx.evaluate FAB Linf, {len(eps)} eps on {args.sweep_n} images: {seconds:.1f} s "
                      f"(robust at 0.3: {ev.robust_acc[0.3]:.2%})")


if __name__ == "__main__":
    main()
