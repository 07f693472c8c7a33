"""``advx attack``: one attack (dL/dX) on the first N test images of a trained model
(sharded over the ranks under ``torchrun``)."""

from __future__ import annotations

import argparse
import sys

import torch

from advx import distributed
from advx.adapt import PROBE
from advx.attacks.bpda import straight_through
from advx.attacks.eot import Seeded, is_randomized
from advx.attacks.registry import ATTACKS, abilities, attack_options, build_attack
from advx.cli import universal
from advx.cli.common import (CLIError, check_model_options, common_options, device_named, images_option, load_subject,
                             model_options, precision_option)
from advx.files import check_output_dir
from advx.norms import NORM_NAMES
from advx.report.attack import attack_table, write_attack_outputs
from advx.sharded import run_attack_sharded


def add(sub) -> None:
    a = sub.add_parser("attack", help="attack a trained model and report robust accuracy",
                       description="Run one attack on the first N test images of a trained model; "
                                   "print a table and write report.json and examples.png.")
    a.add_argument("--attack", default="pgd", choices=sorted(ATTACKS), help="default: pgd")
    unbounded = [n for n in sorted(ATTACKS) if abilities(n).minimum_norm]
    by_norm = {}  # each attack's own default norm
    for name in sorted(ATTACKS):
        by_norm.setdefault(attack_options(name)["norm"].default, []).append(name)
    usual = max(by_norm, key=lambda norm: len(by_norm[norm]))
    a.add_argument("--eps", type=float, default=None,
                   help="budget in pixel units (default: the dataset's standard one in the norm, e.g. MNIST "
                        f"Linf 0.3, Fashion-MNIST Linf 0.1; unbounded for the minimum-norm {', '.join(unbounded)})")
    a.add_argument("--norm", default=None, choices=NORM_NAMES,
                   help="default: the attack's own (" + "; ".join(f"{norm} for {', '.join(names)}"
                                                                 for norm, names in by_norm.items() if norm != usual)
                        + f"; else {usual})")
    a.add_argument("--alpha", type=float, default=None, help="PGD step size (default: 2.5*eps/steps)")
    a.add_argument("--steps", type=int, default=None, help="iterations (PGD default: 40)")
    a.add_argument("--restarts", type=int, default=None, help="PGD random restarts (default: 1)")
    a.add_argument("--early-stop", action="store_true", help="PGD: stop each sample once it is fooled")
    a.add_argument("--targeted", action="store_true", help="push every image to --target-class")
    a.add_argument("--target-class", type=int, default=None, help="target label for --targeted")
    a.add_argument("--bpda", action="store_true",
                   help="attack through BPDA: straight-through gradients for the model's rounding, thresholds, "
                        "integer casts and detach (for a defence that hides its gradients; verdicts unchanged)")
    a.add_argument("--eot", type=int, default=None,
                   help="draws of a randomized model's randomness averaged per gradient (EOT; gradient attacks; "
                        "default: 1)")
    images_option(a, 1000)
    a.add_argument("--batch-size", type=int, default=None, help="default: 500 (--universal: 50)")
    precision_option(a, "the attack's search (success is always decided in fp32)")
    a.add_argument("--out", default=None, help="output folder (default: runs/<attack>-<norm>-eps<eps>)")
    universal.add_options(a)
    model_options(a)
    common_options(a)
    a.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.universal:
        return universal.run(args)
    universal.check_not_given(args)
    args.batch_size = 500 if args.batch_size is None else args.batch_size
    if args.targeted != (args.target_class is not None):
        raise CLIError("--targeted and --target-class K go together (got only one of them)")
    check_model_options(args)
    if args.out is not None:
        check_output_dir(args.out, "--out")
    device = distributed.init(device_named(args.device))  # under torchrun: this rank's device
    rank, size = distributed.world()
    subject, test = load_subject(args, device, verbose=rank == 0)
    norm = args.norm or attack_options(args.attack)["norm"].default
    eps = args.eps
    if eps is None and not abilities(args.attack).minimum_norm:
        eps = subject.dataset.eps[norm]  # the dataset's standard budget in this norm
    attacked = straight_through(subject.model) if args.bpda else subject.model
    if is_randomized(subject.model, test.x[:PROBE].to(device)):  # its draws seeded per image: reproducible
        attacked = Seeded(attacked, args.seed)
        if rank == 0:
            print("the model is randomized (two forward passes differ): its draws are seeded per image; each "
                  "verdict is one draw" + ("" if args.eot else "; --eot N averages each gradient over N draws")
                  + " (advx eval decides by the majority of draws)", file=sys.stderr)
    attack = build_attack(args.attack, attacked, eps=eps, norm=args.norm, targeted=args.targeted,
                          precision=args.precision, seed=args.seed, alpha=args.alpha, steps=args.steps,
                          restarts=args.restarts, early_stop=args.early_stop or None, eot=args.eot)
    budget = "unbounded" if attack.eps is None else f"eps{attack.eps:g}"
    out = check_output_dir(args.out or f"runs/{args.attack}-{attack.norm.name}-{budget}", "--out")
    target = None
    if args.targeted:
        classes = subject.dataset.num_classes
        if not 0 <= args.target_class < classes:
            raise CLIError(f"--target-class must be in [0, {classes - 1}], got {args.target_class}")
        target = torch.full_like(test.y, args.target_class)

    # each rank attacks its shard of the images (every sample has its own random stream); rank 0 reports
    run = run_attack_sharded(attack, test.x, test.y, target=target, batch_size=args.batch_size, device=device,
                             progress=not args.quiet)
    if run is None:
        return 0
    print(attack_table(run, attack, source=subject.source))
    settings = {"n": len(run.y), "batch_size": args.batch_size, "seed": args.seed, "device": device, "ranks": size,
                "target_class": args.target_class, "precision_used": attack.precision_used, "bpda": args.bpda,
                "eot": attack.eot}
    written = write_attack_outputs(out, run, test.x[:len(run.x_adv)], attack, settings=settings,
                                   source=subject.source)
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0
