"""The ``advx`` command line: argparse only; it parses, then calls the library.

    advx data --from DIR            copy MNIST into ./data and check it
    advx train                      train the baseline CNN (dL/dW), save checkpoints/baseline.pt
    advx attack --attack pgd        attack it (dL/dX), print a table, write report.json + examples.png
    advx eval                       robust accuracy over the test set at several eps (worst case)
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from advx.adversarial import KINDS, RobustConfig, last_checkpoint, train_robust
from advx.checkpoint import DEFAULT_CHECKPOINT, ROBUST_CHECKPOINT, load_model
from advx.data import load_mnist, prepare_mnist
from advx.attacks.registry import ATTACKS, SUITES, attack_class, attack_options, build_attack, describe
from advx.evaluate import evaluate, run_attack
from advx.files import check_output_dir, check_output_file
from advx.models import MODELS
from advx.norms import NORM_NAMES
from advx.validate import AdvxError
from advx.report import attack_table, eval_table, format_table, write_attack_outputs, write_eval_outputs
from advx.train import TrainConfig, train_baseline


class CLIError(AdvxError, ValueError):
    """A bad combination of command-line options."""


def _device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was asked for, but torch.cuda.is_available() is False on this machine")
    return name


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder holding MNIST/raw/*.gz (default: $ADVX_DATA or ./data)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: cpu")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advx",
        description="Adversarial examples on MNIST: train with dL/dW, attack with dL/dX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for add in (_add_data, _add_train, _add_attack, _add_eval):
        add(sub)
    return parser


def _add_data(sub) -> None:
    dp = sub.add_parser("data", help="put MNIST in the data folder and check it",
                        description="Copy the four MNIST .gz files from --from (or download them with "
                                    "torchvision), verify their contents and print the split sizes. Every "
                                    "source file is checked before any is copied; a missing or corrupt "
                                    "file in the data folder is replaced (this is the repair).")
    dp.add_argument("--from", dest="source", default=None, metavar="DIR",
                    help="folder holding MNIST/raw/*.gz (or the .gz files themselves) to copy from "
                         "(default: download)")
    dp.add_argument("--data-dir", default=None,
                    help="where to put them (default: $ADVX_DATA or ./data)")
    dp.set_defaults(func=cmd_data)


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train a CNN (clean, or adversarially with --adv) and save a checkpoint",
                       description="Train a CNN on MNIST (the weight-gradient loop) and save a checkpoint. "
                                   "With --adv, each batch is first attacked (dL/dX, weights frozen), then "
                                   "the weights step on the attacked batch.")
    d = TrainConfig()
    t.add_argument("--model", default=d.model, choices=sorted(MODELS), help=f"default: {d.model}")
    t.add_argument("--epochs", type=int, default=d.epochs, help=f"default: {d.epochs}")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default: {d.batch_size}")
    t.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default: {d.lr})")
    t.add_argument("--train-size", type=int, default=None, metavar="N",
                   help="train on the first N images only, for quick trials (default: all 60,000)")
    t.add_argument("--checkpoint", default=None,
                   help=f"output (default: {DEFAULT_CHECKPOINT}, or {ROBUST_CHECKPOINT} with --adv)")
    r = RobustConfig()
    # The --adv options default to None, so that one given without --adv (or to a kind that
    # does not use it) is an error instead of being ignored; RobustConfig fills the rest.
    t.add_argument("--adv", default="none", choices=list(KINDS),
                   help="adversarial training: the attack that makes each batch (default: none)")
    t.add_argument("--eps", type=float, default=None, help=f"--adv: Linf budget (default: {r.eps})")
    t.add_argument("--alpha", type=float, default=None, help="--adv pgd/trades: step size (default: 2.5*eps/steps)")
    t.add_argument("--steps", type=int, default=None, help=f"--adv pgd/trades: attack steps (default: {r.steps})")
    t.add_argument("--warmup-epochs", type=float, default=None,
                   help=f"--adv: ramp eps from 0 over this many epochs (default: {r.warmup_epochs:g})")
    t.add_argument("--beta", type=float, default=None, help=f"--adv trades: weight of the KL term (default: {r.beta:g})")
    t.add_argument("--holdout", type=int, default=None,
                   help=f"--adv: training images held out for the per-epoch PGD check (default: {r.holdout})")
    t.add_argument("--resume", action="store_true",
                   help="--adv: continue from <checkpoint>.last.pt if it exists")
    _common(t)
    t.set_defaults(func=cmd_train)


def _add_attack(sub) -> None:
    a = sub.add_parser("attack", help="attack a trained model and report robust accuracy",
                       description="Run one attack on the first N test images of a trained model; "
                                   "print a table and write report.json and examples.png.")
    a.add_argument("--attack", default="pgd", choices=sorted(ATTACKS), help="default: pgd")
    unbounded = [n for n in sorted(ATTACKS) if attack_class(n).minimum_norm]
    own_norm = {n: attack_options(n)["norm"].default for n in sorted(ATTACKS)}
    a.add_argument("--eps", type=float, default=None,
                   help="budget in pixel units (default: the attack's own; unbounded for the "
                        f"minimum-norm {', '.join(unbounded)})")
    a.add_argument("--norm", default=None, choices=NORM_NAMES,
                   help="default: the attack's own (" + ", ".join(f"{norm} for {n}" for n, norm in own_norm.items()
                                                                 if norm != "inf") + ", else inf)")
    a.add_argument("--alpha", type=float, default=None, help="PGD step size (default: 2.5*eps/steps)")
    a.add_argument("--steps", type=int, default=None, help="iterations (PGD default: 40)")
    a.add_argument("--restarts", type=int, default=None, help="PGD random restarts (default: 1)")
    a.add_argument("--early-stop", action="store_true", help="PGD: stop each sample once it is fooled")
    a.add_argument("--targeted", action="store_true", help="push every image to --target-class")
    a.add_argument("--target-class", type=int, default=None, help="target label for --targeted")
    a.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help=f"default: {DEFAULT_CHECKPOINT}")
    a.add_argument("--n", type=int, default=1000, help="number of test images (default: 1000)")
    a.add_argument("--batch-size", type=int, default=500, help="default: 500")
    a.add_argument("--out", default=None, help="output folder (default: runs/<attack>-<norm>-eps<eps>)")
    _common(a)
    a.set_defaults(func=cmd_attack)


def _add_eval(sub) -> None:
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
    e.add_argument("--out", default="runs/eval", help="output folder (default: runs/eval)")
    _common(e)
    e.set_defaults(func=cmd_eval)


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CLIError(f"{option} must be comma-separated numbers, got {text!r}") from None


def _test_images(args: argparse.Namespace):
    """The first ``--n`` test images; more than the test set holds is an error."""
    if args.n < 1:
        raise CLIError(f"--n must be >= 1, got {args.n}")
    test = load_mnist("test", args.data_dir)
    if args.n > len(test):
        raise CLIError(f"--n must be <= {len(test)} (the test images), got {args.n}")
    return test.head(args.n)


def cmd_eval(args: argparse.Namespace) -> int:
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
    eps = _floats(args.eps, "--eps")
    out = check_output_dir(args.out, "--out")
    device = _device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    test = _test_images(args)
    ev = evaluate(model, test.x, test.y, attacks=attacks, eps=eps, norm=args.norm, steps=args.steps,
                  alpha=args.alpha, restarts=args.restarts, cascade=not args.no_cascade,
                  early_stop=not args.no_early_stop, batch_size=args.batch_size, seed=args.seed,
                  device=device, checks=not args.no_checks, progress=not args.quiet)
    print(eval_table(ev, source=str(args.checkpoint), cascade=not args.no_cascade))
    for name, message in ev.warnings.items():
        print(f"WARNING [{name}]: {message}", file=sys.stderr)
    written = write_eval_outputs(out, ev, checkpoint=str(args.checkpoint), model_name=ckpt["model_name"])
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    raw = prepare_mnist(args.data_dir, source=args.source)
    train, test = load_mnist("train", args.data_dir), load_mnist("test", args.data_dir)
    print(f"MNIST ready in {raw}: {len(train):,} training and {len(test):,} test images")
    return 0


ADV_OPTIONS = {  # option -> the --adv kinds that use it
    "eps": ("fgsm-rs", "pgd", "trades"), "warmup_epochs": ("fgsm-rs", "pgd", "trades"),
    "holdout": ("fgsm-rs", "pgd", "trades"), "resume": ("fgsm-rs", "pgd", "trades"),
    "alpha": ("pgd", "trades"), "steps": ("pgd", "trades"), "beta": ("trades",),
}


def cmd_train(args: argparse.Namespace) -> int:
    for name, kinds in ADV_OPTIONS.items():
        if getattr(args, name) not in (None, False) and args.adv not in kinds:
            option = "--" + name.replace("_", "-")
            raise CLIError(f"{option} applies only with --adv {' or '.join(kinds)}, got --adv {args.adv}")
    config = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, train_size=args.train_size)
    device = _device(args.device)
    adv = args.adv != "none"
    checkpoint = check_output_file(args.checkpoint or (ROBUST_CHECKPOINT if adv else DEFAULT_CHECKPOINT))
    if adv:
        given = {k: getattr(args, k) for k in ("eps", "alpha", "steps", "warmup_epochs", "beta", "holdout")}
        robust = RobustConfig(adv=args.adv, **{k: v for k, v in given.items() if v is not None})
        check_output_file(last_checkpoint(checkpoint))
    what = f"adversarial training ({args.adv}, eps {robust.eps:g})" if adv else "training"
    print(f"{what}: {config.model} on MNIST, {config.epochs} epochs, seed {config.seed}, {device}")
    start = time.perf_counter()
    if adv:
        _, history = train_robust(config, robust, checkpoint=checkpoint, data_dir=args.data_dir,
                                  device=device, progress=not args.quiet, resume=args.resume)
        best = max(history, key=lambda r: r["pgd_acc"])
        rows = [("best epoch (held-out PGD)", f"{best['epoch']} of {len(history)}"),
                ("test accuracy (clean)", f"{best['test_acc']:.2%}"),
                (f"held-out PGD-{robust.eval_steps} accuracy", f"{best['pgd_acc']:.2%} at eps {robust.eps:g}")]
    else:
        _, history = train_baseline(config, data_dir=args.data_dir, checkpoint=checkpoint,
                                    device=device, progress=not args.quiet)
        rows = [("test accuracy", f"{history[-1]['test_acc']:.2%}")]
    rows += [("wall time", f"{time.perf_counter() - start:.1f} s"), ("checkpoint", str(checkpoint))]
    print(format_table(rows, title="robust model" if adv else "baseline"))
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    if args.targeted != (args.target_class is not None):
        raise CLIError("--targeted and --target-class K go together (got only one of them)")
    if args.out is not None:
        check_output_dir(args.out, "--out")
    device = _device(args.device)
    model, ckpt = load_model(args.checkpoint, device)
    attack = build_attack(args.attack, model, eps=args.eps, norm=args.norm, targeted=args.targeted,
                          seed=args.seed, alpha=args.alpha, steps=args.steps, restarts=args.restarts,
                          early_stop=args.early_stop or None)
    budget = "unbounded" if attack.eps is None else f"eps{attack.eps:g}"
    out = check_output_dir(args.out or f"runs/{args.attack}-{attack.norm.name}-{budget}", "--out")
    test = _test_images(args)
    target = None
    if args.targeted:
        if not 0 <= args.target_class <= 9:
            raise CLIError(f"--target-class must be in [0, 9], got {args.target_class}")
        target = torch.full_like(test.y, args.target_class)

    run = run_attack(model, attack, test.x, test.y, target=target, batch_size=args.batch_size,
                     device=device, progress=not args.quiet)
    print(attack_table(run, attack, checkpoint=str(args.checkpoint), model_name=ckpt["model_name"]))
    settings = {"n": len(run.y), "batch_size": args.batch_size, "seed": args.seed, "device": device,
                "target_class": args.target_class}
    written = write_attack_outputs(out, run, test.x[:len(run.x_adv)], attack, settings=settings,
                                   checkpoint=str(args.checkpoint), model_name=ckpt["model_name"])
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0


def _name_the_option(message: str, parser: argparse.ArgumentParser | None) -> str:
    """The library names its arguments (``eps must be >= 0``); on the command line the user
    typed an option (``--eps``). Put the option's name in the message where one matches."""
    head = message.split(" ", 1)[0].rstrip(":")
    if parser is None or not head.isidentifier():
        return message
    for action in parser._actions:
        if action.dest == head and action.option_strings:
            return action.option_strings[-1] + message[len(head):]
    return message


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    sub = next(a for a in parser._actions if a.dest == "command").choices.get(args.command)
    try:
        return args.func(args)
    except AdvxError as err:  # bad input, bad files, a failed run: said in one line
        print(f"advx {args.command}: error: {_name_the_option(str(err), sub)}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, permission denied, ...: one line, never a traceback
        where = f": {err.filename}" if err.filename else ""
        print(f"advx {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"advx {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
