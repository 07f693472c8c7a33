"""``advx eval``: robust accuracy over the test set at several eps, the worst case over a cascade."""

from __future__ import annotations

import argparse
import sys

from advx.attacks.registry import ATTACKS, SUITES, describe
from advx.bounds.propagate import METHODS
from advx.checkpoint import DEFAULT_CHECKPOINT, load_model
from advx.cli.common import CLIError, common_options, device_named, floats, precision_option, test_images
from advx.evaluate import evaluate
from advx.files import check_output_dir
from advx.norms import NORM_NAMES
from advx.report import eval_table, write_eval_outputs


def add(sub) -> None:
    e = sub.add_parser("eval", help="robust accuracy over the test set at several eps (worst case)",
                       description="Robust accuracy at each eps: a sample counts as robust only if it is "
                                   "correct and survives every attack. Cheap attacks first, survivors "
                                   "only, early stop, nested-eps reuse. Writes report.json, "
                                   "per_sample.csv and curve.png.")
    e.add_argument("--attacks", default=None,
                   help=f"comma-separated, cheapest first, each at most once, from {','.join(sorted(ATTACKS))} "
                        f"(default: fgsm,pgd)")
    e.add_argument("--suite", default=None, choices=sorted(SUITES),
                   help="a named cascade instead of --attacks (after AutoAttack); strong = "
                        + describe(SUITES["strong"]) + "; --steps/--restarts override its settings")
    e.add_argument("--eps", default="0.05,0.1,0.2,0.3", help="comma-separated budgets (default: 0.05,0.1,0.2,0.3)")
    e.add_argument("--norm", default="inf", choices=NORM_NAMES, help="default: inf")
    e.add_argument("--steps", type=int, default=None, help="iterations of iterative attacks (PGD default: 40)")
    e.add_argument("--alpha", type=float, default=None, help="PGD step size (default: 2.5*eps/steps)")
    e.add_argument("--restarts", type=int, default=None, help="random restarts where supported (default: 1)")
    e.add_argument("--no-cascade", action="store_true",
                   help="run every attack on every correct sample (slower; per-attack figures standalone)")
    e.add_argument("--no-early-stop", action="store_true", help="run every step even on fooled samples")
    e.add_argument("--no-checks", action="store_true", help="skip the sanity checks")
    e.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help=f"default: {DEFAULT_CHECKPOINT}")
    e.add_argument("--n", type=int, default=10000, help="first N test images (default: all 10,000)")
    e.add_argument("--batch-size", type=int, default=1000, help="default: 1000")
    e.add_argument("--certify", nargs="?", const="crown", default=None, choices=METHODS, metavar="METHOD",
                   help="also certify each sample at each eps (ibp, crown-ibp or crown; crown if no METHOD): "
                        "certified, broken or unresolved, and so the robust accuracy as an interval")
    precision_option(e, "the attacks' search (success, survivors and figures are always decided in fp32)")
    e.add_argument("--out", default="runs/eval", help="output folder (default: runs/eval)")
    common_options(e)
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.suite and args.attacks is not None:
        raise CLIError(f"--suite and --attacks exclude each other: got --suite {args.suite} "
                       f"and --attacks {args.attacks}")
    if args.suite:
        attacks = SUITES[args.suite]
    else:
        text = args.attacks if args.attacks is not None else "fgsm,pgd"
        attacks = [a.strip() for a in text.split(",") if a.strip()]
        unknown = [a for a in attacks if a not in ATTACKS]
        if not attacks or unknown:
            raise CLIError(f"--attacks must name attacks from {','.join(sorted(ATTACKS))}, got {text!r}")
        repeated = sorted({a for a in attacks if attacks.count(a) > 1})
        if repeated:
            raise CLIError(f"--attacks must name each attack once, got {', '.join(repeated)} more than once")
    eps = floats(args.eps, "--eps")
    out = check_output_dir(args.out, "--out")
    device = device_named(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    test = test_images(args)
    ev = evaluate(model, test.x, test.y, attacks=attacks, eps=eps, norm=args.norm, steps=args.steps,
                  alpha=args.alpha, restarts=args.restarts, cascade=not args.no_cascade,
                  early_stop=not args.no_early_stop, batch_size=args.batch_size, seed=args.seed,
                  device=device, checks=not args.no_checks, precision=args.precision, progress=not args.quiet,
                  certify=args.certify)
    print(eval_table(ev, source=str(args.checkpoint), cascade=not args.no_cascade))
    final = ckpt.get("metrics", {}).get("final")
    if final:  # what its own training measured, beside this run's figures
        print(f"the checkpoint's own figure (end of its training): --suite {final['suite']} "
              f"{final['robust_acc']:.2%} at eps {final['eps']:g} on {final['n']} {final['images']}")
    for name, message in ev.warnings.items():
        print(f"WARNING [{name}]: {message}", file=sys.stderr)
    written = write_eval_outputs(out, ev, checkpoint=str(args.checkpoint), model_name=ckpt["model_name"],
                                 training_final=final)
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0
