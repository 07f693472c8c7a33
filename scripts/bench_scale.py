#!/usr/bin/env python
"""Sharded evaluation against one process, both sides in one run.

    python scripts/bench_scale.py --checkpoint checkpoints/fashion-robust.pt --images 300
    python scripts/bench_scale.py --command attack --attacks apgd ...  # advx attack (first attack)
    python scripts/bench_scale.py --command certify --checkpoint checkpoints/certified.pt ...
    python scripts/bench_scale.py --ranks 4 --threads 1 ...      # on a bigger machine

Side A: one ``advx <command>`` process with ``--threads`` x ``--ranks`` threads. Side B:
``torchrun --nproc-per-node RANKS`` with ``--threads`` threads per rank (gloo on the CPU).
Both run the same command; the script checks that their results are identical
(``per_sample.csv``; for ``attack`` the figures of ``report.json``; for ``certify`` every
column but the margin bounds, whose last float bits follow the batches and the thread
count, in one process too, so those are compared to 1e-4) and prints the wall times
(process start to exit, start-up included) and B's throughput over A's.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str], threads: int) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def same_results(command: str, one: Path, many: Path) -> bool:
    if command == "eval":
        return filecmp.cmp(one / "per_sample.csv", many / "per_sample.csv", shallow=False)
    if command == "certify":  # the margin bounds' last bits follow the batch and the thread count
        rows = [list(csv.DictReader((folder / "per_sample.csv").open())) for folder in (one, many)]
        margins = [k for k in rows[0][0] if k.startswith("margin_lb@")]
        gap = max(abs(float(a[k]) - float(b[k])) for a, b in zip(*rows) for k in margins)
        moved = sum(a[k] != b[k] for a, b in zip(*rows) for k in margins)
        print(f"margin bounds: {moved} of {len(rows[0]) * len(margins)} differ in print, by at most {gap:.2g}")
        return all({k: v for k, v in a.items() if k not in margins} == {k: v for k, v in b.items() if k not in margins}
                   for a, b in zip(*rows)) and gap <= 1e-4
    figures = []
    for folder in (one, many):
        results = json.loads((folder / "report.json").read_text())["results"]
        figures.append({k: v for k, v in results.items() if k not in ("seconds", "images_per_s")})
    return figures[0] == figures[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--command", default="eval", choices=["eval", "attack", "certify"], help="default: eval")
    p.add_argument("--checkpoint", default="checkpoints/robust.pt")
    p.add_argument("--attacks", default="fgsm,pgd,square", help="default: fgsm,pgd,square (attack: the first)")
    p.add_argument("--eps", default=None, help="default: the dataset's curve (attack: its standard budget)")
    p.add_argument("--images", type=int, default=300, help="default: 300")
    p.add_argument("--ranks", type=int, default=2, help="default: 2")
    p.add_argument("--threads", type=int, default=1, help="threads per rank (default: 1)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    what = {"eval": ["--attacks", args.attacks, "--no-checks"], "attack": ["--attack", args.attacks.split(",")[0]],
            "certify": []}[args.command]
    with tempfile.TemporaryDirectory(prefix="advx-bench-scale-") as tmp:
        common = [args.command, "--checkpoint", args.checkpoint, *what, "--images", str(args.images), "--quiet"] \
            + (["--eps", args.eps] if args.eps else []) + (["--data-dir", args.data_dir] if args.data_dir else [])
        one = timed([sys.executable, "-m", "advx", *common, "--out", f"{tmp}/one"], args.threads * args.ranks)
        many = timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                      str(args.ranks), "-m", "advx", *common, "--out", f"{tmp}/many"], args.threads)
        same = same_results(args.command, Path(tmp) / "one", Path(tmp) / "many")
    print(f"advx {args.command}, {args.images} images, {' '.join(what) or 'defaults'}: one process with "
          f"{args.threads * args.ranks} threads {one:.1f} s; torchrun {args.ranks} ranks x {args.threads} thread(s) "
          f"{many:.1f} s; throughput ratio {one / many:.2f}")
    print("results " + ("DIFFERENT" if not same else "identical" if args.command != "certify" else
                        "identical but for the margin bounds' last bits (above)"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
