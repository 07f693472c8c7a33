#!/usr/bin/env python
"""advx eval vs torchattacks: robust accuracy under PGD-40 (alpha 0.01) on the MNIST test
set, side by side in one process, same model, same images.

    python3 -m venv .venv-bench && . .venv-bench/bin/activate   # torchattacks in its own venv
    pip install -e . -r scripts/bench-requirements.txt
    python scripts/bench_eval.py [--checkpoint checkpoints/baseline.pt] [--n 10000] [--eps 0.3,0.1]

advx runs ``advx.evaluate`` (attacks only correctly classified samples, per-sample early
stop) without the sanity checks; torchattacks runs ``torchattacks.PGD`` on every image
for all 40 steps, batch by batch. Target at eps 0.3: advx robust accuracy <= torchattacks',
in <= 1/5 of its wall time.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch

from advx.evaluate import evaluate
from advx.subject import load_subject


def torchattacks_robust_acc(model, x, y, *, eps, alpha, steps, batch_size, device):
    import torchattacks

    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    torch.manual_seed(0)  # torchattacks draws its random start from the global RNG
    robust = 0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        x_adv = attack(xb, yb)
        with torch.no_grad():
            robust += (model(x_adv).argmax(1) == yb).sum().item()
    return robust / len(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/baseline.pt")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--eps", default="0.3,0.1")
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    if importlib.util.find_spec("torchattacks") is None:  # the other side of the benchmark
        raise SystemExit("this benchmark compares with torchattacks, which is not installed here: give it a "
                         "virtualenv of its own, see scripts/bench-requirements.txt")

    subject, test = load_subject(args.checkpoint, n=args.n, data_dir=args.data_dir, device=args.device, check=False)
    model = subject.model  # and the first n test images of its dataset
    rows = []
    for eps in [float(e) for e in args.eps.split(",")]:
        start = time.perf_counter()
        ev = evaluate(model, test.x, test.y, attacks=["pgd"], eps=[eps], steps=args.steps, alpha=args.alpha,
                      batch_size=args.batch_size, device=args.device, checks=False, progress=False)
        advx_s = time.perf_counter() - start
        start = time.perf_counter()
        ta_acc = torchattacks_robust_acc(model, test.x, test.y, eps=eps, alpha=args.alpha, steps=args.steps,
                                         batch_size=args.batch_size, device=args.device)
        ta_s = time.perf_counter() - start
        rows.append((eps, ev.robust_acc[eps], advx_s, ta_acc, ta_s))
        print(f"eps={eps}: advx {ev.robust_acc[eps]:.2%} in {advx_s:.1f} s, "
              f"torchattacks {ta_acc:.2%} in {ta_s:.1f} s", flush=True)

    print(f"\nPGD-{args.steps} Linf, alpha={args.alpha}, {args.n} MNIST test images, {args.checkpoint}, "
          f"{args.device}, {torch.get_num_threads()} threads")
    print(f"{'eps':>5} {'advx acc':>9} {'advx s':>8} {'ta acc':>8} {'ta s':>8} {'time ratio':>11}")
    for eps, a_acc, a_s, t_acc, t_s in rows:
        print(f"{eps:>5g} {a_acc:>9.2%} {a_s:>8.1f} {t_acc:>8.2%} {t_s:>8.1f} {a_s / t_s:>11.3f}")
    print("target at eps 0.3: advx acc <= torchattacks acc, time ratio <= 0.2")


if __name__ == "__main__":
    main()
