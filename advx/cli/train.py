"""``advx train``: train a CNN, clean, adversarially, for certificates or under noise (dL/dW),
and save a checkpoint."""

from __future__ import annotations

import argparse
import dataclasses
import time

from advx import distributed
from advx.adversarial import AdversarialConfig
from advx.certified import CertifiedConfig
from advx.checkpoint import DEFAULT_CHECKPOINT, ROBUST_CHECKPOINT, load_checkpoint
from advx.cli.common import CLIError, common_options, device_named, precision_option
from advx.datasets import DATASET_NAMES, DATASETS, get_dataset
from advx.files import check_output_file
from advx.models import MODELS
from advx.noisy import NoisyConfig
from advx.report.common import format_table
from advx.robust_training import CONFIGS, KINDS, check_options, last_checkpoint, robust_config, train_robust
from advx.train import TrainConfig, train_baseline, training_precision


def add(sub) -> None:
    t = sub.add_parser("train", help="train a CNN (clean, or adversarially with --adv) and save a checkpoint",
                       description="Train a CNN on MNIST or Fashion-MNIST (the weight-gradient loop) and save a "
                                   "checkpoint (it records the dataset). "
                                   "With --adv, each batch is first attacked (dL/dX, weights frozen), then "
                                   "the weights step on the attacked batch; --adv gaussian/consistency trains "
                                   "on noisy copies instead, for randomized smoothing (advx certify --method "
                                   "smoothing).")
    d = TrainConfig()
    t.add_argument("--model", default=d.model, choices=sorted(MODELS), help=f"default: {d.model}")
    t.add_argument("--dataset", default=d.dataset, choices=DATASET_NAMES, help=f"default: {d.dataset}")
    t.add_argument("--epochs", type=int, default=d.epochs, help=f"default: {d.epochs}")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default: {d.batch_size}")
    t.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default: {d.lr})")
    precision_option(t, "forward and backward (weights and optimizer stay fp32; fp16 on CUDA only)")
    t.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="keep an exponential moving average of the weights with this decay, in (0, 1) (e.g. "
                        "0.999); the averaged network is the one measured and saved (default: off)")
    t.add_argument("--train-size", type=int, default=None, metavar="N",
                   help="train on the first N images only, for quick trials (default: all 60,000)")
    t.add_argument("--checkpoint", default=None,
                   help=f"output (default: {DEFAULT_CHECKPOINT}, or {ROBUST_CHECKPOINT} with --adv)")
    a, c = AdversarialConfig(), CertifiedConfig()
    certified_kinds = "/".join(CertifiedConfig.KINDS)
    # The --adv options default to None, so that one given without --adv (or to a kind that
    # does not take it) is an error instead of being ignored; the kind's config fills the rest.
    t.add_argument("--adv", dest="kind", default="none", choices=["none", *KINDS],
                   help="adversarial training: the attack that makes each batch; ibp/crown-ibp: "
                        "certified training on bounds over the whole ball; sabr: on bounds over a small box "
                        "around an attacked point; mtl-ibp/cc-ibp: an attacked point and IBP's bounds mixed; "
                        "gaussian/consistency: Gaussian noise, for randomized smoothing (default: none)")
    t.add_argument("--eps", type=float, default=None,
                   help="--adv: Linf budget (default: the dataset's standard one: "
                        + ", ".join(f"{d.title} {d.eps['inf']:g}" for d in DATASETS.values()) + ")")
    t.add_argument("--alpha", type=float, default=None,
                   help="--adv fgsm-rs/pgd/trades/mart: step size (default: 1.25*eps for fgsm-rs, 2.5*eps/steps "
                        "otherwise)")
    t.add_argument("--steps", type=int, default=None,
                   help="--adv pgd/trades/mart: attack steps (default: 10); sabr/mtl-ibp/cc-ibp: PGD steps of the "
                        "search for the attacked point (default: 8)")
    t.add_argument("--warmup-epochs", type=float, default=None,
                   help=f"--adv: ramp eps from 0 over this many epochs (default: {a.warmup_epochs:g})")
    t.add_argument("--no-early-stop", dest="early_stop", action="store_const", const=False, default=None,
                   help="--adv pgd: run every step on every sample (default: stop each sample at its "
                        "first adversarial iterate; without, the PGD-5 recipe overfits catastrophically)")
    t.add_argument("--beta", type=float, default=None, help="--adv trades/mart: weight of the KL term (default: 6)")
    t.add_argument("--ramp-start", type=float, default=None,
                   help=f"--adv {certified_kinds}: clean epochs before the eps ramp (default: {c.ramp_start:g})")
    t.add_argument("--kappa", type=float, default=None,
                   help=f"--adv {certified_kinds}: final weight of the clean loss, from 1 over the ramp "
                        f"(default: {c.kappa:g})")
    t.add_argument("--box-share", type=float, default=None, metavar="LAMBDA",
                   help="--adv sabr: the small box's radius as a share of eps, in (0, 1]; 1 is IBP "
                        "(default: 0.4)")
    t.add_argument("--mix", type=float, default=None, metavar="ALPHA",
                   help="--adv mtl-ibp/cc-ibp: weight of IBP's bounds against the attacked point, in [0, 1]; "
                        "1 is IBP, 0 adversarial training (default: 0.5)")
    n = NoisyConfig()
    t.add_argument("--sigma", type=float, default=None,
                   help=f"--adv gaussian/consistency: the noise's standard deviation, the sigma the model will be "
                        f"smoothed with (default: {n.sigma:g})")
    t.add_argument("--copies", type=int, default=None,
                   help="--adv consistency: noisy copies of each image (default: 2)")
    t.add_argument("--kl-weight", type=float, default=None, metavar="LAMBDA",
                   help="--adv consistency: weight of the copies' disagreement (KL to their mean; default: 10)")
    t.add_argument("--holdout", type=int, default=None,
                   help=f"--adv: training images held out for the per-epoch check (default: {a.holdout}; "
                        f"gaussian/consistency: {n.holdout})")
    t.add_argument("--final-n", type=int, default=None, metavar="N",
                   help="--adv fgsm-rs/pgd/trades/mart: at the end, --suite strong on the first N held-out images, "
                        "stored in the checkpoint (0: skip; default: 500, at most --holdout)")
    t.add_argument("--resume", action="store_true",
                   help="--adv: continue from <checkpoint>.last.pt if it exists")
    common_options(t)
    t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # the --adv options given: named (dest) as the fields of the training configs they set
    fields = {f.name for config in CONFIGS for f in dataclasses.fields(config)} - {"kind"}
    given = {k: getattr(args, k) for k in sorted(fields) if getattr(args, k, None) is not None}
    check_options(args.kind, given)  # before any work: an option the kind does not take
    adv = args.kind != "none"
    if args.resume and not adv:
        raise CLIError(f"--resume applies only with --adv ({', '.join(KINDS)}), got --adv none")
    config = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed, train_size=args.train_size, precision=args.precision,
                         ema=args.ema)
    device = distributed.init(device_named(args.device))  # under torchrun: data-parallel, this rank's device
    rank, size = distributed.world()
    default = ROBUST_CHECKPOINT if adv else DEFAULT_CHECKPOINT
    checkpoint = check_output_file(default if args.checkpoint is None else args.checkpoint, "--checkpoint")
    dataset = get_dataset(config.dataset)
    noisy = args.kind in NoisyConfig.KINDS
    defaults = {} if noisy else {"eps": dataset.eps["inf"]}
    robust = robust_config(args.kind, **{**defaults, **given}) if adv else None
    if adv:
        check_output_file(last_checkpoint(checkpoint))
    certified = isinstance(robust, CertifiedConfig)
    if noisy:
        what = f"training under noise ({args.kind}, sigma {robust.sigma:g})"
    else:
        what = f"{'certified' if certified else 'adversarial'} training ({args.kind}, eps {robust.eps:g})" if adv \
            else "training"
    precision = training_precision(config.precision, device)
    if rank == 0:
        print(f"{what}: {config.model} on {dataset.title}, {config.epochs} epochs, "
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
    title = ("noise-trained model" if noisy else "certified model" if certified else "robust model") if adv \
        else "baseline"
    print(format_table(rows, title=title))
    return 0


def _robust_rows(robust, history: list[dict], checkpoint) -> list[tuple[str, str]]:
    """The summary of adversarial or certified training: the best epoch's held-out figures
    and the final strong-suite figure stored in the checkpoint."""
    best = max(history, key=lambda r: r[robust.best_key])
    if isinstance(robust, NoisyConfig):
        return [("best epoch (held-out ACR)", f"{best['epoch']} of {len(history)}"),
                ("test accuracy (clean)", f"{best['test_acc']:.2%}"),
                (f"held-out smoothed accuracy (sigma {robust.sigma:g})", f"{best['smoothed_acc']:.2%}"),
                (f"held-out certified accuracy at radius {robust.sigma:g}", f"{best['cert_acc_sigma']:.2%}"),
                ("held-out average certified radius", f"{best['acr']:.3f}")]
    certified = isinstance(robust, CertifiedConfig)
    eps, by = f"at eps {robust.eps:g}", "certified" if certified else "probe"
    rows = [(f"best epoch (held-out {by})", f"{best['epoch']} of {len(history)}"),
            ("test accuracy (clean)", f"{best['test_acc']:.2%}")]
    if certified:
        return rows + [(f"held-out PGD-{robust.eval_steps} accuracy", f"{best['pgd_acc']:.2%} {eps}"),
                       ("held-out certified accuracy (IBP)", f"{best['cert_acc']:.2%} {eps}")]
    rows += [("held-out FGSM accuracy", f"{best['fgsm_acc']:.2%} {eps}"),
             ("held-out probe (APGD-CE, Square)", f"{best['probe_acc']:.2%} {eps}")]
    final = load_checkpoint(checkpoint)["metrics"].get("final")
    if final:
        rows.append((f"held-out --suite strong (n={final['n']})", f"{final['robust_acc']:.2%} {eps}"))
    return rows
