#!/usr/bin/env python
"""Sharded evaluation against one process, both sides in one run.

    python scripts/bench_scale.py --checkpoint checkpoints/fashion-robust.pt --images 300
    python scripts/bench_scale.py --ranks 4 --threads 1 ...      # on a bigger machine

Side A: one ``advx eval`` process with ``--threads`` x ``--ranks`` threads. Side B:
``torchrun --nproc-per-node RANKS`` with ``--threads`` threads per rank (gloo on the CPU).
Both run the same command; the script checks that their ``per_sample.csv`` are identical
and prints the wall times (process start to exit, start-up included) and B's throughput
over A's.
"""

from __future__ import annotations

import argparse
import filecmp
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="checkpoints/robust.pt")
    p.add_argument("--attacks", default="fgsm,pgd,square", help="default: fgsm,pgd,square")
    p.add_argument("--eps", default=None, help="default: the dataset's curve")
    p.add_argument("--images", type=int, default=300, help="default: 300")
    p.add_argument("--ranks", type=int, default=2, help="default: 2")
    p.add_argument("--threads", type=int, default=1, help="threads per rank (default: 1)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="advx-bench-scale-") as tmp:
        common = ["eval", "--checkpoint", args.checkpoint, "--attacks", args.attacks, "--images", str(args.images),
                  "--quiet", "--no-checks"] + (["--eps", args.eps] if args.eps else []) \
            + (["--data-dir", args.data_dir] if args.data_dir else [])
        one = timed([sys.executable, "-m", "advx", *common, "--out", f"{tmp}/one"], args.threads * args.ranks)
        many = timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                      str(args.ranks), "-m", "advx", *common, "--out", f"{tmp}/many"], args.threads)
        same = filecmp.cmp(Path(tmp) / "one" / "per_sample.csv", Path(tmp) / "many" / "per_sample.csv", shallow=False)
    print(f"{args.images} images, {args.attacks}: one process with {args.threads * args.ranks} threads {one:.1f} s; "
          f"torchrun {args.ranks} ranks x {args.threads} thread(s) {many:.1f} s; throughput ratio {one / many:.2f}")
    print("per_sample.csv " + ("identical" if same else "DIFFERENT"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
