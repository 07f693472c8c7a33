#!/usr/bin/env python
"""Candidate cascades for ``--suite strong`` side by side: robust accuracy after each stage
and wall time, with ``advx.evaluate`` on the first MNIST test images (one process; run it on
an idle machine). How the per-norm cascades in ``advx.attacks.registry.SUITES`` were chosen.

    python scripts/bench_cascades.py --norm 2 --eps 2 --names L2-a,L2-b,L2-c,L2-d
    python scripts/bench_cascades.py --norm inf --eps 0.3 --names inf-strong,inf-fab,inf-fab-t
"""

from __future__ import annotations

import argparse
import time

from advx import evaluate
from advx.subject import load_subject

CANDIDATES = {
    "L2-a": [("apgd", {}), ("fab", {"steps": 100})],
    "L2-b": [("apgd", {}), ("fab", {"steps": 50}), ("fmn", {"steps": 200})],
    "L2-c": [("apgd", {}), ("fab", {"steps": 50, "restarts": 2}), ("fmn", {"steps": 200})],
    "L2-d": [("apgd", {}), ("fab", {"steps": 50}), ("fab-t", {"steps": 50, "n_target_classes": 3})],
    "inf-strong": [("apgd", {"restarts": 10}), ("apgd-t", {"n_target_classes": 3}), ("square", {"queries": 1000})],
    "inf-fab": [("apgd", {"restarts": 10}), ("apgd-t", {"n_target_classes": 3}),
                ("fab", {"steps": 50, "restarts": 2}), ("square", {"queries": 1000})],
    "inf-fab-t": [("apgd", {"restarts": 10}), ("apgd-t", {"n_target_classes": 3}),
                  ("fab-t", {"steps": 50, "n_target_classes": 3}), ("square", {"queries": 1000})],
    "inf-r3": [("apgd", {"restarts": 3}), ("apgd-t", {"n_target_classes": 3}), ("square", {"queries": 1000})],
    "inf-r5": [("apgd", {"restarts": 5}), ("apgd-t", {"n_target_classes": 3}), ("square", {"queries": 1000})],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/robust.pt")
    p.add_argument("--norm", default="2", choices=["inf", "2", "1"])
    p.add_argument("--eps", type=float, default=2.0)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--names", default="L2-a,L2-b,L2-c,L2-d", help=f"from {','.join(CANDIDATES)}")
    args = p.parse_args()
    subject, test = load_subject(args.checkpoint, n=args.n, check=False)  # and its dataset's test images
    model = subject.model
    for name in args.names.split(","):
        start = time.perf_counter()
        ev = evaluate(model, test.x, test.y, attacks=CANDIDATES[name], eps=[args.eps], norm=args.norm,
                      checks=False, progress=False)
        stages = ", ".join(f"{a} {v:.2%}" for a, v in ev.robust_acc_by_attack[args.eps].items())
        print(f"{name:<11} {stages}  ({time.perf_counter() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
