#!/usr/bin/env python
"""advx --suite strong vs torchattacks' AutoAttack (standard), and CW-L2 vs torchattacks' CW,
side by side in one process, on the first MNIST test images, per norm (Linf eps 0.3 default).

    python3 -m venv .venv-bench && . .venv-bench/bin/activate   # torchattacks in its own venv
    pip install -e . -r scripts/bench-requirements.txt
    python scripts/bench_suite.py [--checkpoints checkpoints/baseline.pt,checkpoints/robust.pt] [--n 1000]

torchattacks' AutoAttack "standard" is APGD-CE, APGD-T and FAB-T at torchattacks' default
of 10 steps each (the reference AutoAttack uses 100), then Square with 5,000 queries; it has
Linf and L2. For L1 (``--norm 1``, eps 10 by default), where it has no AutoAttack, the
reference is the per-sample worst case of its FAB-L1 (one run, 10 steps: its ``perturb``
has no L1 distance check, so the run is called directly and counted within eps) and its
EAD-L1 at their defaults.

Targets: advx robust accuracy <= AutoAttack's, in no more wall time; advx CW (binary
search over c) median L2 <= torchattacks CW's at the same number of iterations (median
over the correctly classified samples, a failure counting as infinite distance).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from pathlib import Path

import torch

from advx import CW
from advx.attacks.registry import describe, suite
from advx.evaluate import evaluate
from advx.norms import L1, get_norm
from advx.subject import load_subject


def robust_acc(model, x, y, x_adv):
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


def median_l2(model, x, y, x_adv):
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    dist = (x_adv - x).flatten(1).norm(dim=1)
    dist[~fooled] = math.inf
    return dist.median().item(), fooled.float().mean().item()


def l1_reference(torchattacks, model, x, y, eps):
    """Per sample: correct and not broken within L1 eps by torchattacks' FAB-L1 or EAD-L1."""
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    fab = torchattacks.FAB(model, norm="L1", eps=eps, steps=10, n_restarts=1, n_classes=10)
    with torch.no_grad():
        candidates = [fab.attack_single_run(x, y, use_rand_start=False)]
    candidates.append(torchattacks.EADL1(model)(x, y))
    for x_adv in candidates:
        with torch.no_grad():
            fooled = model(x_adv).argmax(1) != y
        robust &= ~(fooled & ((x_adv - x).flatten(1).abs().sum(1) <= eps))
    return robust


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="checkpoints/baseline.pt,checkpoints/robust.pt")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--norm", default="inf", choices=["inf", "2", "1"])
    p.add_argument("--eps", type=float, default=None,
                   help="default: the standard budget of the checkpoint's dataset in the norm (MNIST: 0.3, 2, 10)")
    p.add_argument("--cw-n", type=int, default=200, help="images for the CW comparison (0: skip it)")
    p.add_argument("--cw-search", type=int, default=5, help="advx CW binary-search steps")
    p.add_argument("--cw-steps", type=int, default=100, help="advx CW iterations per search step")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    norm = get_norm(args.norm)
    if importlib.util.find_spec("torchattacks") is None:  # the other side of the benchmark
        raise SystemExit("this benchmark compares with torchattacks, which is not installed here: give it a "
                         "virtualenv of its own, see scripts/bench-requirements.txt")
    import torchattacks

    rows, cw_rows = [], []
    given_eps = args.eps
    for path in args.checkpoints.split(","):
        if not Path(path).exists():
            print(f"skipping {path}: not found")
            continue
        subject, test = load_subject(path, n=args.n, data_dir=args.data_dir, check=False)  # its dataset's images
        model = subject.model
        args.eps = subject.dataset.eps[norm.name] if given_eps is None else given_eps
        start = time.perf_counter()
        ev = evaluate(model, test.x, test.y, attacks=suite("strong", args.norm), eps=[args.eps], norm=args.norm,
                      batch_size=args.batch_size, checks=False, progress=False)
        advx_s = time.perf_counter() - start

        start = time.perf_counter()
        batches = [(test.x[i:i + args.batch_size], test.y[i:i + args.batch_size])
                   for i in range(0, args.n, args.batch_size)]
        if isinstance(norm, L1):  # torchattacks has no L1 AutoAttack
            robust = torch.cat([l1_reference(torchattacks, model, x, y, args.eps) for x, y in batches])
            aa_acc = robust.float().mean().item()
        else:
            aa = torchattacks.AutoAttack(model, norm=norm.label, eps=args.eps, version="standard", n_classes=10,
                                         seed=0)
            aa_acc = robust_acc(model, test.x, test.y, torch.cat([aa(x, y) for x, y in batches]))
        aa_s = time.perf_counter() - start
        rows.append((path, ev.clean_acc, ev.robust_acc[args.eps], advx_s, aa_acc, aa_s,
                     ev.robust_acc_by_attack[args.eps]))
        print(f"{path}: advx strong {ev.robust_acc[args.eps]:.2%} in {advx_s:.1f} s, "
              f"torchattacks {aa_acc:.2%} in {aa_s:.1f} s", flush=True)

        if args.cw_n < 1:
            continue
        x, y = test.x[:args.cw_n], test.y[:args.cw_n]
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        x, y = x[ok], y[ok]
        iters = args.cw_search * args.cw_steps
        start = time.perf_counter()
        ours = CW(model, steps=args.cw_steps, binary_search_steps=args.cw_search)(x, y)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = torchattacks.CW(model, c=1, kappa=0, steps=iters, lr=0.01)(x, y)
        theirs_s = time.perf_counter() - start
        cw_rows.append((path, len(y), iters, *median_l2(model, x, y, ours), ours_s,
                        *median_l2(model, x, y, theirs), theirs_s))

    print(f"\n{norm.label} eps={args.eps:g}, first {args.n} test images, cpu, {torch.get_num_threads()} "
          f"threads, batch {args.batch_size}")
    print(f"advx --suite strong = {describe(suite('strong', args.norm))}")
    reference = "FAB+EAD L1" if isinstance(norm, L1) else "AutoAttack"
    print(f"{'model':<28} {'clean':>7} {'advx strong':>12} {'s':>7} {reference:>11} {'s':>7} {'time ratio':>10}")
    for path, clean, a_acc, a_s, t_acc, t_s, _ in rows:
        print(f"{path:<28} {clean:>7.2%} {a_acc:>12.2%} {a_s:>7.1f} {t_acc:>11.2%} {t_s:>7.1f} {a_s / t_s:>10.3f}")
    for path, *_, stages in rows:
        print(f"  {path}: advx cascade, robust after each stage: "
              + ", ".join(f"{k} {v:.2%}" for k, v in stages.items()))
    if cw_rows:
        print(f"\nCW-L2 on the correctly classified of the first {args.cw_n} images, equal iterations")
        print(f"{'model':<28} {'n':>4} {'iters':>6} {'advx median':>12} {'success':>8} {'s':>6} "
              f"{'ta median':>10} {'success':>8} {'s':>6}")
        for path, n, iters, a_med, a_succ, a_s, t_med, t_succ, t_s in cw_rows:
            print(f"{path:<28} {n:>4} {iters:>6} {a_med:>12.3f} {a_succ:>8.1%} {a_s:>6.1f} "
                  f"{t_med:>10.3f} {t_succ:>8.1%} {t_s:>6.1f}")
    print("targets: advx strong <= the reference's accuracy in <= 0.5x its time; advx CW median <= torchattacks'")


if __name__ == "__main__":
    main()
