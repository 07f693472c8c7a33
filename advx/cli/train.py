"""``advx train``: train a CNN, clean or adversarially (dL/dW), and save a checkpoint."""

from __future__ import annotations

import argparse
import time

from advx.adversarial import ATTACK_KINDS, KINDS, RobustConfig, last_checkpoint, train_robust
from advx.certify.training import CERTIFIED_KINDS
from advx.checkpoint import DEFAULT_CHECKPOINT, ROBUST_CHECKPOINT, load_checkpoint
from advx import distributed
from advx.cli.common import CLIError, common_options, device_named, precision_option
from advx.datasets import DATASET_NAMES, DATASETS, get_dataset
from advx.files import check_output_file
from advx.models import MODELS
from advx.report.common import format_table
from advx.train import TrainConfig, train_baseline, training_precision


def add(sub) -> None:
    t = sub.add_parser("train", help="train a CNN (clean, or adversarially with --adv) and save a checkpoint",
                       description="Train a CNN on MNIST or Fashion-MNIST (the weight-gradient loop) and save a "
                                   "checkpoint (it records the dataset). "
                                   "With --adv, each batch is first attacked (dL/dX, weights frozen), then "
                                   "the weights step on the attacked batch.")
    d = TrainConfig()
    t.add_argument("--model", default=d.model, choices=sorted(MODELS), help=f"default: {d.model}")
    t.add_argument("--dataset", default=d.dataset, choices=DATASET_NAMES, help=f"default: {d.dataset}")
    t.add_argument("--epochs", type=int, default=d.epochs, help=f"default: {d.epochs}")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default: {d.batch_size}")
    t.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default: {d.lr})")
    precision_option(t, "forward and backward (weights and optimizer stay fp32; fp16 on CUDA only)")
    t.add_argument("--train-size", type=int, default=None, metavar="N",
                   help="train on the first N images only, for quick trials (default: all 60,000)")
    t.add_argument("--checkpoint", default=None,
                   help=f"output (default: {DEFAULT_CHECKPOINT}, or {ROBUST_CHECKPOINT} with --adv)")
    r = RobustConfig()
    # The --adv options default to None, so that one given without --adv (or to a kind that
    # does not use it) is an error instead of being ignored; RobustConfig fills the rest.
    t.add_argument("--adv", default="none", choices=list(KINDS),
                   help="adversarial training: the attack that makes each batch; ibp/crown-ibp: "
                        "certified training on bounds over the whole ball (default: none)")
    t.add_argument("--eps", type=float, default=None,
                   help="--adv: Linf budget (default: the dataset's standard one: "
                        + ", ".join(f"{d.title} {d.eps['inf']:g}" for d in DATASETS.values()) + ")")
    t.add_argument("--alpha", type=float, default=None,
                   help="--adv fgsm-rs/pgd/trades: step size (default: 1.25*eps for fgsm-rs, 2.5*eps/steps otherwise)")
    t.add_argument("--steps", type=int, default=None, help=f"--adv pgd/trades: attack steps (default: {r.steps})")
    t.add_argument("--warmup-epochs", type=float, default=None,
                   help=f"--adv: ramp eps from 0 over this many epochs (default: {r.warmup_epochs:g})")
    t.add_argument("--no-early-stop", action="store_true",
                   help="--adv pgd: run every step on every sample (default: stop each sample at its "
                        "first adversarial iterate; without, the PGD-5 recipe overfits catastrophically)")
    t.add_argument("--beta", type=float, default=None,
                   help=f"--adv trades: weight of the KL term (default: {r.beta:g})")
    t.add_argument("--ramp-start", type=float, default=None,
                   help=f"--adv ibp/crown-ibp: clean epochs before the eps ramp (default: {r.ramp_start:g})")
    t.add_argument("--kappa", type=float, default=None,
                   help=f"--adv ibp/crown-ibp: final weight of the clean loss, from 1 over the ramp "
                        f"(default: {r.kappa:g})")
    t.add_argument("--holdout", type=int, default=None,
                   help=f"--adv: training images held out for the per-epoch PGD check (default: {r.holdout})")
    t.add_argument("--final-n", type=int, default=None, metavar="N",
                   help=f"--adv fgsm-rs/pgd/trades: at the end, --suite strong on the first N held-out images, "
                        f"stored in the checkpoint (0: skip; default: {r.final_n})")
    t.add_argument("--resume", action="store_true",
                   help="--adv: continue from <checkpoint>.last.pt if it exists")
    common_options(t)
    t.set_defaults(func=run)


ADV_OPTIONS = {  # option -> the --adv kinds that use it
    "eps": KINDS[1:], "warmup_epochs": KINDS[1:], "holdout": KINDS[1:], "resume": KINDS[1:],
    "alpha": ATTACK_KINDS, "steps": ("pgd", "trades"), "beta": ("trades",),
    "ramp_start": CERTIFIED_KINDS, "kappa": CERTIFIED_KINDS, "final_n": ATTACK_KINDS,
    "no_early_stop": ("pgd",),
}


def run(args: argparse.Namespace) -> int:
    for name, kinds in ADV_OPTIONS.items():
        if getattr(args, name) not in (None, False) and args.adv not in kinds:
            option = "--" + name.replace("_", "-")
            raise CLIError(f"{option} applies only with --adv {' or '.join(kinds)}, got --adv {args.adv}")
    config = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, train_size=args.train_size,
                         precision=args.precision)
    device = distributed.init(device_named(args.device))  # under torchrun: data-parallel, this rank's device
    rank, size = distributed.world()
    adv = args.adv != "none"
    checkpoint = check_output_file(args.checkpoint or (ROBUST_CHECKPOINT if adv else DEFAULT_CHECKPOINT))
    if adv:
        given = {k: getattr(args, k) for k in ("eps", "alpha", "steps", "warmup_epochs", "beta", "holdout",
                                               "ramp_start", "kappa", "final_n")}
        given["early_stop"] = False if args.no_early_stop else None
        if given["eps"] is None:
            given["eps"] = get_dataset(args.dataset).eps["inf"]
        robust = RobustConfig(adv=args.adv, **{k: v for k, v in given.items() if v is not None})
        check_output_file(last_checkpoint(checkpoint))
    what = (f"{'certified' if robust.certified else 'adversarial'} training ({args.adv}, eps {robust.eps:g})"
            if adv else "training")
    precision = training_precision(config.precision, device)
    if rank == 0:
        print(f"{what}: {config.model} on {get_dataset(config.dataset).title}, {config.epochs} epochs, "
              f"seed {config.seed}, {device}, {precision}" + (f", {size} ranks (data-parallel)" if size > 1 else ""))
    start = time.perf_counter()
    if adv:
        _, history = train_robust(config, robust, checkpoint=checkpoint, data_dir=args.data_dir,
                                  device=device, progress=not args.quiet, resume=args.resume)
    else:
        _, history = train_baseline(config, data_dir=args.data_dir, checkpoint=checkpoint,
                                    device=device, progress=not args.quiet)
    if rank != 0:  # rank 0 saved and reports
        return 0
    rows = _robust_rows(robust, history, checkpoint) if adv else [("test accuracy", f"{history[-1]['test_acc']:.2%}")]
    rows += [("wall time", f"{time.perf_counter() - start:.1f} s"), ("checkpoint", str(checkpoint))]
    title = ("certified model" if robust.certified else "robust model") if adv else "baseline"
    print(format_table(rows, title=title))
    return 0


def _robust_rows(robust, history: list[dict], checkpoint) -> list[tuple[str, str]]:
    """The summary of adversarial or certified training: the best epoch's held-out figures
    and the final strong-suite figure stored in the checkpoint."""
    best = max(history, key=lambda r: r[robust.best_key])
    eps, by = f"at eps {robust.eps:g}", "certified" if robust.certified else "probe"
    rows = [(f"best epoch (held-out {by})", f"{best['epoch']} of {len(history)}"),
            ("test accuracy (clean)", f"{best['test_acc']:.2%}")]
    if robust.certified:
        return rows + [(f"held-out PGD-{robust.eval_steps} accuracy", f"{best['pgd_acc']:.2%} {eps}"),
                       ("held-out certified accuracy (IBP)", f"{best['cert_acc']:.2%} {eps}")]
    rows += [("held-out FGSM accuracy", f"{best['fgsm_acc']:.2%} {eps}"),
             ("held-out probe (APGD-CE, Square)", f"{best['probe_acc']:.2%} {eps}")]
    final = load_checkpoint(checkpoint)["metrics"].get("final")
    if final:
        rows.append((f"held-out --suite strong (n={final['n']})", f"{final['robust_acc']:.2%} {eps}"))
    return rows
