#!/usr/bin/env python
"""Mixed precision side by side: time, robust accuracy and disagreements per precision.

    python scripts/bench_precision.py                                   # PGD-40, baseline + robust
    python scripts/bench_precision.py --suite                           # + --suite strong (long)
    python scripts/bench_precision.py --train                           # + baseline training
    python scripts/bench_precision.py --checkpoints checkpoints/robust.pt --eps 0.3 --precisions fp32,bf16

In one process, on the first --n test images of each checkpoint:

- PGD-40 (alpha 0.01, random start, no early stop: every setting does the same steps):
  the bare fp32 autograd loop of ``bench_attacks.py`` (the reference), then advx PGD in
  each precision (with ``--seeds 0,1,2``, each seed: PGD's own spread beside the
  precision's effect). "speedup" is the bare loop's time over the run's time; robust
  accuracy is always judged by the fp32 model; "disagree" counts the samples whose
  fp32-judged outcome (broken or not) differs from advx's fp32 run with the same seed.
- ``--suite``: ``advx.evaluate`` with ``--suite strong`` at the checkpoint's dataset's standard
  Linf eps (MNIST 0.3) in each precision
  (early stop, cascade, as ``advx eval`` runs it); speedup over its fp32 run.
- ``--square Q``: Square (Q queries) in fp32 and with its search forced into bf16 (Square
  declares ``low_precision = False``; this is the measurement behind that).
- ``--adv-train N``: one epoch of the robust recipe's PGD-5 training on N images per precision.
- ``--train``: the baseline recipe (``advx train``) in each precision: wall time and test
  accuracy, without writing a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from bench_attacks import bare_pgd, measure

from advx import PGD, evaluate, load_dataset
from advx.adversarial import AdversarialLoss
from advx.attacks import Square, frozen
from advx.attacks.registry import suite
from advx.datasets import DATASETS
from advx.precision import PRECISIONS, resolve
from advx.subject import load_subject
from advx.train import TrainConfig, seeded_model, train, training_slice


def with_speedup(rows: list[dict]) -> list[dict]:
    """Each row's speedup over the first (the reference) run."""
    for row in rows:
        row["speedup"] = rows[0]["seconds"] / row["seconds"]
    return rows


def pgd_rows(model, x, y, eps: float, steps: int, precisions: list[str], device: str,
             seeds: list[int]) -> list[dict]:
    def bare(n=len(x)):
        with frozen(model):
            return bare_pgd(model, x[:n], y[:n], eps=eps, alpha=0.01, steps=steps,
                            generator=torch.Generator(device=device).manual_seed(0))

    bare(50)  # warm-up
    for precision in precisions:
        PGD(model, eps=eps, steps=2, precision=precision).run(x[:50], y[:50])
    seconds, _, x_bare = measure(bare, device)
    with torch.no_grad():
        broken_bare = model(x_bare).argmax(1) != y
    rows = [{"run": "bare loop fp32", "seconds": seconds, "robust_acc": 1 - broken_bare.float().mean().item()}]
    reference = {}
    for precision in precisions:
        for seed in seeds:  # PGD's own seed-to-seed spread, next to the precision's effect
            attack = PGD(model, eps=eps, alpha=0.01, steps=steps, seed=seed, precision=precision)
            seconds, _, result = measure(lambda: attack.run(x, y), device)
            broken = result.success
            reference.setdefault(seed, broken)  # the fp32 run of the same seed
            rows.append({"run": f"advx {precision} ({attack.precision_used}) seed {seed}", "seconds": seconds,
                         "robust_acc": 1 - broken.float().mean().item(),
                         "disagree": int((broken != reference[seed]).sum())})
    return with_speedup(rows)


def mean_by_precision(rows: list[dict], precisions: list[str]) -> list[str]:
    """One line per precision: robust accuracy averaged over the seeds."""
    lines = []
    for precision in precisions:
        accs = [r["robust_acc"] for r in rows if r["run"].startswith(f"advx {precision} ")]
        lines.append(f"  mean over {len(accs)} seed(s), {precision}: robust {sum(accs) / len(accs):7.2%} "
                     f"(min {min(accs):.2%}, max {max(accs):.2%})")
    return lines


def suite_rows(model, x, y, precisions: list[str], device: str, eps: float = 0.3) -> list[dict]:
    rows, reference = [], None
    for precision in precisions:
        start = time.perf_counter()
        ev = evaluate(model, x, y, attacks=suite("strong"), eps=[eps], device=device, precision=precision,
                      progress=False, checks=False)
        robust = ev.records["robust"][0]
        reference = robust if reference is None else reference
        rows.append({"run": f"strong suite {precision} ({', '.join(sorted(set(ev.settings['precision_used'].values())))})",
                     "seconds": time.perf_counter() - start, "robust_acc": ev.robust_acc[eps],
                     "disagree": int((robust != reference).sum())})
    return with_speedup(rows)


def square_rows(model, x, y, queries: int, device: str, eps: float = 0.3) -> list[dict]:
    """Square at ``eps`` (the dataset's standard Linf budget) with its search forced into bf16
    (it declares fp32: this is the measurement behind that)."""
    class LowPrecisionSquare(Square):
        low_precision = True

    rows, reference = [], None
    for precision in ("fp32", "bf16"):
        attack = LowPrecisionSquare(model, eps=eps, queries=queries, seed=0, precision=precision)
        seconds, _, result = measure(lambda: attack.run(x, y), device)
        reference = result.success if reference is None else reference
        rows.append({"run": f"square {precision} ({queries} queries)", "seconds": seconds,
                     "robust_acc": 1 - result.success.float().mean().item(),
                     "disagree": int((result.success != reference).sum())})
    return with_speedup(rows)


def train_rows(precisions: list[str], device: str, data_dir, epochs: int, dataset: str = "mnist") -> list[dict]:
    rows = []
    for precision in precisions:
        config = TrainConfig(precision=precision, epochs=epochs, dataset=dataset)
        start = time.perf_counter()
        train_set = training_slice(load_dataset(dataset, "train", data_dir), config.train_size)
        model = seeded_model(config.model, config.seed, DATASETS[dataset])
        history = train(model, train_set, load_dataset(dataset, "test", data_dir), config, device=device,
                        progress=False)
        rows.append({"run": f"baseline training {precision} ({resolve(precision, device)})",
                     "seconds": time.perf_counter() - start, "test_acc": history[-1]["test_acc"]})
    return with_speedup(rows)


def adv_train_rows(precisions: list[str], device: str, data_dir, n: int, dataset: str = "mnist") -> list[dict]:
    """One epoch of the robust recipe's adversarial training (PGD-5 at the dataset's standard
    Linf eps, MNIST 0.3; early stop)
    on the first ``n`` training images, nothing else timed (no held-out probe, no test)."""
    rows = []
    train_set = training_slice(load_dataset(dataset, "train", data_dir), n)
    for precision in precisions:
        config = TrainConfig(precision=precision, epochs=1, dataset=dataset)
        model = seeded_model(config.model, config.seed, DATASETS[dataset])
        loss_fn = AdversarialLoss("pgd", eps=DATASETS[dataset].eps["inf"], steps=5, precision=precision)
        start = time.perf_counter()
        history = train(model, train_set, None, config, loss_fn=loss_fn, device=device, progress=False)
        rows.append({"run": f"PGD-5 training {precision} ({resolve(precision, device)})",
                     "seconds": time.perf_counter() - start, "train_acc": history[-1]["train_acc"]})
    return with_speedup(rows)


def show(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    for r in rows:
        name = next(k for k in ("robust_acc", "test_acc", "train_acc") if k in r)
        acc = f"{name.split('_')[0]} {r[name]:7.2%}"
        extra = f"  disagree {r['disagree']:4d}" if "disagree" in r else ""
        print(f"  {r['run']:<34} {r['seconds']:8.2f} s  {acc}  speedup {r['speedup']:5.2f}x{extra}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", default="checkpoints/baseline.pt,checkpoints/robust.pt")
    p.add_argument("--eps", default="0.3,0.1", help="PGD budgets (default: 0.3,0.1)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seeds", default="0", help="PGD seeds, each run in every precision (default: 0)")
    p.add_argument("--train-epochs", type=int, default=3, help="--train: epochs of the recipe (default: 3)")
    p.add_argument("--precisions", default="fp32,bf16", help=f"from {','.join(PRECISIONS)} (default: fp32,bf16)")
    p.add_argument("--suite", action="store_true",
                   help="also --suite strong at the dataset's standard eps (MNIST 0.3; long)")
    p.add_argument("--train", action="store_true", help="also the baseline training recipe")
    p.add_argument("--dataset", default="mnist", choices=sorted(DATASETS),
                   help="--train/--adv-train: the data to train on (default: mnist; the attacks use each "
                        "checkpoint's own)")
    p.add_argument("--square", type=int, default=0, metavar="QUERIES",
                   help="also Square at the dataset's standard eps (MNIST 0.3) with this many queries, fp32 "
                        "against a forced bf16 search")
    p.add_argument("--adv-train", type=int, default=0, metavar="N",
                   help="also one epoch of the robust recipe's PGD-5 training on the first N training images")
    p.add_argument("--no-pgd", action="store_true", help="skip the PGD comparison")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args()
    precisions = [q.strip() for q in args.precisions.split(",") if q.strip()]
    if any(q not in PRECISIONS for q in precisions) or not precisions:
        p.error(f"--precisions must name some of {','.join(PRECISIONS)}, got {args.precisions!r}")
    precisions = ["fp32"] + [q for q in precisions if q != "fp32"]  # fp32 first: the reference
    try:
        seeds = [int(q) for q in args.seeds.split(",") if q.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")

    print(f"{args.device}, {torch.get_num_threads()} threads, first {args.n} test images")
    report = {}
    for checkpoint in [c for c in args.checkpoints.split(",") if c]:
        subject, test = load_subject(checkpoint, n=args.n, data_dir=args.data_dir, device=args.device, check=False)
        model = subject.model  # and the first n test images of its own dataset
        x, y = test.x.to(args.device), test.y.to(args.device)
        standard = subject.dataset.eps["inf"]  # Square's and the suite's budget (MNIST 0.3)
        if not args.no_pgd:
            for eps in (float(e) for e in args.eps.split(",")):
                rows = pgd_rows(model, x, y, eps, args.steps, precisions, args.device, seeds)
                show(f"{checkpoint}: PGD-{args.steps} Linf eps {eps:g}", rows)
                print("\n".join(mean_by_precision(rows, precisions)), flush=True)
                report[f"{checkpoint} pgd eps {eps:g}"] = rows
        if args.square:
            rows = square_rows(model, x, y, args.square, args.device, standard)
            show(f"{checkpoint}: Square Linf eps {standard:g}", rows)
            report[f"{checkpoint} square"] = rows
        if args.suite:
            rows = suite_rows(model, x, y, precisions, args.device, standard)
            show(f"{checkpoint}: --suite strong, Linf eps {standard:g}", rows)
            report[f"{checkpoint} strong"] = rows
    if args.train:
        rows = train_rows(precisions, args.device, args.data_dir, args.train_epochs, args.dataset)
        show(f"baseline training on {args.dataset} (SmallCNN, {args.train_epochs} epochs, 60,000 images)", rows)
        report["train"] = rows
    if args.adv_train:
        rows = adv_train_rows(precisions, args.device, args.data_dir, args.adv_train, args.dataset)
        show(f"adversarial training on {args.dataset} (PGD-5, eps {DATASETS[args.dataset].eps['inf']:g}, 1 epoch "
             f"on {args.adv_train} images)", rows)
        report["adv_train"] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
