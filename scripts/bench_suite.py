#!/usr/bin/env python
"""advx ``--suite strong`` against the reference AutoAttack (standard version), per norm, on the
same images in one process: robust accuracy, wall time and their ratio, and the images on
which either side is weaker than the other.

    python3 -m venv .venv-bench && . .venv-bench/bin/activate   # the reference in its own venv
    pip install -e . -r scripts/bench-requirements.txt
    python scripts/bench_suite.py --checkpoints checkpoints/robust.pt --norm 2 --n 200

The reference is AutoAttack's own code, packaged as ``pyautoattack`` (standard version:
APGD-CE, APGD-T, FAB-T and Square with 5,000 queries, 100 iterations each; in L1 APGD with
5 restarts and APGD-T over 5 classes, both with AutoAttack's larger-eps schedule). A sample
counts as broken by the reference only when its point is misclassified by the model, inside
the pixel box and within eps in the norm (checked here, not taken from the reference).

Target: advx robust accuracy <= the reference's on every model and norm, with no image that
the reference breaks and advx does not, in at most 0.15x the reference's wall time (with
``--certify crown`` on the certified model: 0.05x).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import re
import time
from pathlib import Path

import torch

from advx.attacks.registry import describe, suite
from advx.certify import METHODS
from advx.evaluate import evaluate
from advx.norms import get_norm
from advx.subject import load_subject


class _Stages(logging.Handler):
    """The reference's own log lines 'robust accuracy after APGD-CE: 12.00% (total time 3.4 s)'."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[tuple[str, float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"robust accuracy after (\S+): ([\d.]+)% \(total time ([\d.]+) s\)", record.getMessage())
        if m:
            self.found.append((m.group(1).lower(), float(m.group(2)) / 100, float(m.group(3))))


def reference_robust(model, x, y, norm, eps, batch_size):
    """Per sample: correct and not broken within eps by the reference AutoAttack; its stages."""
    from pyautoattack import AutoAttack

    logger = logging.getLogger("auto-attack")
    stages = _Stages()
    logger.addHandler(stages)
    logger.setLevel(logging.DEBUG)
    try:
        aa = AutoAttack(model, norm=norm.label, eps=eps, version="standard", seed=0, device="cpu")
        out = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        logger.removeHandler(stages)
    x_adv = (out[0] if isinstance(out, tuple) else out).detach()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        fooled = model(x_adv).argmax(1) != y
    inside = (norm.size(x_adv - x) <= eps * (1 + 1e-5)) & (x_adv.flatten(1).min(1).values >= 0) \
        & (x_adv.flatten(1).max(1).values <= 1)
    return correct & ~(fooled & inside), stages.found


def by_stage(ev, eps) -> list:
    """``(stage, robust accuracy after it, seconds so far)`` for advx, as the reference's are
    reported, led by the certified share when it certified first."""
    seconds = dict(ev.seconds_by_stage)
    proved = [] if ev.certified_acc is None else [
        ("(certified)", ev.certified_acc[eps], seconds.pop(ev.settings["certify"]))]
    spent, rows = 0.0, []
    for name, acc, s in proved + [(k, v, seconds[k]) for k, v in ev.robust_acc_by_attack[eps].items()]:
        spent += s
        rows.append((name, acc, spent))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="checkpoints/baseline.pt,checkpoints/robust.pt")
    p.add_argument("--n", type=int, default=1000, help="the first N test images (default: 1000)")
    p.add_argument("--norm", default="inf", choices=["inf", "2", "1"])
    p.add_argument("--eps", type=float, default=None,
                   help="default: the standard budget of the checkpoint's dataset in the norm (MNIST: 0.3, 2, 10)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "auto"], help="advx's search precision")
    p.add_argument("--certify", default=None, choices=METHODS,
                   help="advx certifies first: proved images leave its cascade (bar a spot check); "
                        "the time includes the certifier's")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    norm = get_norm(args.norm)
    if importlib.util.find_spec("pyautoattack") is None:  # the other side of the benchmark
        raise SystemExit("this benchmark compares with the reference AutoAttack (pyautoattack), which is not "
                         "installed here: give it a virtualenv of its own, see scripts/bench-requirements.txt")

    rows = []
    for path in args.checkpoints.split(","):
        if not Path(path).exists():
            print(f"skipping {path}: not found")
            continue
        subject, test = load_subject(path, n=args.n, data_dir=args.data_dir, check=False)  # its dataset's images
        model = subject.model.eval()
        eps = subject.dataset.eps[norm.name] if args.eps is None else args.eps
        start = time.perf_counter()
        ev = evaluate(model, test.x, test.y, attacks=suite("strong", args.norm), eps=[eps], norm=args.norm,
                      batch_size=args.batch_size, checks=False, progress=False, precision=args.precision,
                      certify=args.certify)
        advx_s = time.perf_counter() - start
        ours = ev.records["robust"][0].bool()
        start = time.perf_counter()
        theirs, stages = reference_robust(model, test.x, test.y, norm, eps, args.batch_size)
        ref_s = time.perf_counter() - start
        weaker, stronger = int((ours & ~theirs).sum()), int((~ours & theirs).sum())
        rows.append((path, eps, ev.clean_acc, ev.robust_acc[eps], advx_s, theirs.float().mean().item(), ref_s,
                     weaker, stronger, by_stage(ev, eps), stages))
        print(f"{path}: advx strong {ev.robust_acc[eps]:.2%} in {advx_s:.1f} s, reference AutoAttack "
              f"{theirs.float().mean().item():.2%} in {ref_s:.1f} s", flush=True)

    print(f"\n{norm.label}, first {args.n} test images, cpu, {torch.get_num_threads()} threads, batch "
          f"{args.batch_size}, advx precision {args.precision}, certify first: {args.certify or 'no'}")
    print(f"advx --suite strong = {describe(suite('strong', args.norm))}")
    print(f"{'model':<28} {'eps':>5} {'clean':>7} {'advx':>7} {'s':>7} {'reference':>9} {'s':>7} {'time ratio':>10} "
          f"{'advx weaker on':>14} {'stronger on':>11}")
    for path, eps, clean, a_acc, a_s, r_acc, r_s, weaker, stronger, _, _ in rows:
        print(f"{path:<28} {eps:>5g} {clean:>7.2%} {a_acc:>7.2%} {a_s:>7.1f} {r_acc:>9.2%} {r_s:>7.1f} "
              f"{a_s / r_s:>10.3f} {weaker:>14} {stronger:>11}")
    for path, *_, stages_of, stages in rows:
        print(f"  {path}: advx, robust after each stage: "
              + ", ".join(f"{k} {acc:.2%} ({t:.0f} s)" for k, acc, t in stages_of))
        print(f"  {path}: reference, robust after each stage: "
              + ", ".join(f"{k} {acc:.2%} ({t:.0f} s)" for k, acc, t in stages))
    print("targets: advx weaker on 0 images and advx <= reference, in <= 0.15x its time")


if __name__ == "__main__":
    main()
