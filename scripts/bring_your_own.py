#!/usr/bin/env python
"""The three ways to bring your own model, end to end, on Fashion-MNIST.

    python scripts/bring_your_own.py              # -> runs/byom/: weights.pt, net.pt2, one eval each

This file plays the user's code: ``my_net`` builds a network that expects *normalized*
input, as most trained models do. The script trains one (3 epochs on (x - MEAN) / STD,
advx's trainer on ``Normalized(my_net(), MEAN, STD)``; skipped when runs/byom/weights.pt
exists), saves its state_dict and a ``torch.export`` program of it, then evaluates it the
three ways with ``advx eval --attacks fgsm,pgd`` (a check that the ways agree; for a
robustness figure use ``--suite strong``, much slower on images that survive):

1. a module + weights:  --model scripts/bring_your_own.py:my_net --weights weights.pt --mean --std
2. an exported program: --model net.pt2 --mean --std
3. the same without --mean/--std: its clean accuracy, printed first, falls, and advx warns
   that the model does better on normalized input, naming --mean/--std to pass.

(1. "Any module" is the Python side: ``Normalized(my_net(), MEAN, STD)`` in your own code.)
The first two must give the same figures; the script says whether they do.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from advx.cli import main as advx
from advx.data import load_dataset
from advx.files import atomic_write
from advx.models import Normalized, SmallCNN
from advx.train import TrainConfig, train

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's pixel mean and standard deviation


def my_net() -> torch.nn.Module:
    """Your network (here advx's SmallCNN stands in for it): it expects (x - MEAN) / STD."""
    return SmallCNN()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/byom", help="folder for the weights, the program and the evals")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of my_net (default: 3)")
    p.add_argument("--n", type=int, default=1000, help="test images per eval (default: 1000)")
    p.add_argument("--eps", default="0.01,0.03,0.1", help="Linf budgets (default: 0.01,0.03,0.1; at 0.1 this plain "
                                                      "network breaks entirely)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights, program = out / "weights.pt", out / "net.pt2"
    test = load_dataset("fashion-mnist", "test", args.data_dir)
    if not weights.exists():
        torch.manual_seed(0)
        net = my_net()
        history = train(Normalized(net, MEAN, STD), load_dataset("fashion-mnist", "train", args.data_dir), test,
                        TrainConfig(dataset="fashion-mnist", epochs=args.epochs))
        print(f"trained my_net on normalized Fashion-MNIST: {history[-1]['test_acc']:.2%} clean")
        with atomic_write(weights, "wb") as f:
            torch.save(net.state_dict(), f)
    net = my_net()
    net.load_state_dict(torch.load(weights, weights_only=True))
    exported = torch.export.export(net.eval(), (test.x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    with atomic_write(program, "wb") as f:
        torch.export.save(exported, f)

    normalization = ["--mean", str(MEAN), "--std", str(STD)]
    ways = {"module + weights": ("module", ["--model", f"{__file__}:my_net", "--weights", str(weights), *normalization]),
            "exported program": ("exported", ["--model", str(program), *normalization]),
            "no --mean/--std": ("unnormalized", ["--model", f"{__file__}:my_net", "--weights", str(weights)])}
    reports = {}
    for name, (subfolder, model) in ways.items():
        folder = out / subfolder
        print(f"\n== {name}: advx eval {' '.join(model)}", flush=True)
        code = advx(["eval", "--dataset", "fashion-mnist", "--attacks", "fgsm,pgd", "--eps", args.eps, "--n", str(args.n),
                     "--out", str(folder), *model] + (["--data-dir", args.data_dir] if args.data_dir else []))
        if code != 0:
            return code
        reports[name] = json.loads((folder / "report.json").read_text())
    first, second = (reports[k] for k in ("module + weights", "exported program"))
    same = first["clean_acc"] == second["clean_acc"] and first["robust_acc"] == second["robust_acc"]
    print("\nclean and robust accuracy, " + "; ".join(
        f"{k}: {r['clean_acc']:.2%}, " + ", ".join(f"{v:.2%} at {e}" for e, v in r["robust_acc"].items())
        for k, r in reports.items()))
    print("the module + weights and the exported program give " + ("the same figures" if same else "DIFFERENT figures"))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
