"""``advx certify``: certified accuracy (a proved lower bound) over the test set at several eps
(sharded over the ranks under ``torchrun``), or with ``--method smoothing`` randomized
smoothing's probabilistic L2 certificate at several noise levels."""

from __future__ import annotations

import argparse

from advx import distributed
from advx.certify import METHODS
from advx.cli.common import (CLIError, check_model_options, common_options, device_named, floats, images_option,
                             load_subject, model_options, name_what_is_kept, precision_option)
from advx.files import check_output_dir
from advx.norms import NORM_NAMES, get_norm
from advx.modes import predictions
from advx.report.certification import certify_table, write_certify_outputs
from advx.report.smoothing import smoothing_table, write_smoothing_outputs
from advx.resume import digest
from advx.sharded import certify_sharded, shared_store
from advx.smoothing import certify_smoothed

# --method smoothing: its options and their defaults (None in the parser: given or not)
SMOOTHING = {"sigma": "0.25,0.5,1.0", "n0": 100, "samples": 10000, "alpha": 0.001, "precision": "fp32"}
BAB = {"timeout": 60.0, "milp": 0.0, "resume": False}  # --method bab's options, at their defaults


def add(sub) -> None:
    c = sub.add_parser("certify", help="certified accuracy: a proved lower bound on robust accuracy",
                       description="Bound every margin z_y - z_j over the whole eps-ball (bound propagation: "
                                   "ibp, crown-ibp, crown or alpha-crown). A sample is certified when every "
                                   "bound is positive: no input in the ball changes its class. --method bab "
                                   "adds branch and bound: a verdict per sample, verified, falsified (a "
                                   "counterexample the model confirms) or unknown (out of time); with no "
                                   "unknown left, the exact robust accuracy. --method smoothing certifies the "
                                   "model smoothed by Gaussian noise instead (Cohen et al. 2019): any model, in "
                                   "L2, each radius holding with probability >= 1 - alpha. Writes report.json, "
                                   "per_sample.csv (each sample's margin bound and verdict, or radius) and "
                                   "curve.png.")
    c.add_argument("--eps", default=None,
                   help="comma-separated budgets (default: a third and all of the dataset's standard budget "
                        "in the norm: MNIST Linf 0.1,0.3); with --method smoothing the L2 radii reported "
                        "(default: 0.5,1,1.5,2)")
    c.add_argument("--norm", default=None, choices=NORM_NAMES,
                   help="default: inf (smoothing: 2, its only norm); L0 and patches have no certificate here: attack them")
    c.add_argument("--method", default="crown", choices=(*METHODS, "smoothing"),
                   help="ibp: fast, loose; crown, alpha-crown: tighter, slower; bab: a verdict per sample; "
                        "smoothing: randomized smoothing, a probabilistic L2 certificate of the smoothed model "
                        "(default: crown)")
    c.add_argument("--timeout", type=float, default=BAB["timeout"],
                   help="with --method bab: seconds per sample before it is left unknown (default: 60)")
    c.add_argument("--milp", type=float, default=BAB["milp"], metavar="SHARE",
                   help="with --method bab: the share of --timeout kept for an exact MILP (HiGHS through "
                        "SciPy) on what branch and bound leaves unknown; for MNIST-sized networks, e.g. 0.5 "
                        "(default: 0, none)")
    c.add_argument("--resume", action="store_true",
                   help="with --method bab: keep the verdicts a killed run of the same command had written "
                        "(<out>/.resume/) and decide only the rest")
    g = c.add_argument_group("randomized smoothing (--method smoothing)")
    g.add_argument("--sigma", default=None, help=f"comma-separated noise levels (default: {SMOOTHING['sigma']})")
    g.add_argument("--n0", type=int, default=None,
                   help=f"noise samples that choose each image's class (default: {SMOOTHING['n0']})")
    g.add_argument("--samples", type=int, default=None,
                   help=f"noise samples that bound its probability (Cohen et al.'s n; default: "
                        f"{SMOOTHING['samples']:,}; --images counts test images)")
    g.add_argument("--alpha", type=float, default=None,
                   help=f"failure probability of each certificate (default: {SMOOTHING['alpha']:g})")
    precision_option(g, "the noisy forward passes")
    g.set_defaults(precision=None)
    images_option(c, 10000)
    c.add_argument("--batch-size", type=int, default=None, help="default: 256 (smoothing: 1000 noisy images)")
    c.add_argument("--out", default="runs/certify", help="output folder (default: runs/certify)")
    model_options(c)
    common_options(c)
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    eps = sorted(set(floats(args.eps, "--eps"))) if args.eps is not None else None
    if eps is not None and (not eps or min(eps) < 0):
        raise CLIError(f"--eps must be comma-separated numbers >= 0, got {args.eps!r}")
    if args.method == "smoothing":
        return _smoothing(args, eps)
    for option in SMOOTHING:
        if getattr(args, option) is not None:
            raise CLIError(f"--{option} applies only with --method smoothing, got --method {args.method}")
    args.norm = args.norm or "inf"
    if not get_norm(args.norm).certifiable:
        raise CLIError(f"--norm {args.norm}: no certificate covers {get_norm(args.norm).label} here (bound "
                       f"propagation needs a dual norm); attack it instead: advx eval --norm {args.norm}")
    args.batch_size = 256 if args.batch_size is None else args.batch_size
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.timeout > 0:
        raise CLIError(f"--timeout must be > 0 seconds per sample, got {args.timeout:g}")
    if not 0 <= args.milp < 1:
        raise CLIError(f"--milp must be a share of --timeout in [0, 1), got {args.milp:g}")
    if args.milp > 0 and args.method != "bab":
        raise CLIError(f"--milp applies only with --method bab, got --method {args.method}")
    if args.resume and args.method != "bab":
        raise CLIError(f"--resume applies only with --method bab, got --method {args.method}")
    check_model_options(args)
    out = check_output_dir(args.out, "--out")
    device = distributed.init(device_named(args.device))  # under torchrun: this rank's device
    subject, test = load_subject(args, device, verbose=distributed.world()[0] == 0)
    if eps is None:
        standard = subject.dataset.eps[args.norm]
        eps = [float(f"{standard / 3:.3g}"), standard]
    store = None
    if args.method == "bab":  # every verdict written as it is decided
        identity = {"source": subject.source, "images": digest(test.x, test.y), "eps": eps, "norm": args.norm,
                    "weights": digest(*subject.model.state_dict().values()), "timeout": args.timeout,
                    "milp": args.milp}
        store = shared_store(out / ".resume", identity, resume=args.resume)
    # each rank certifies its shard of the images; rank 0 reports
    try:
        result = certify_sharded(subject.model, test.x, test.y, eps, method=args.method, norm=args.norm,
                                 batch_size=args.batch_size, device=device, timeout=args.timeout, milp=args.milp,
                                 store=store, progress=not args.quiet)
    except BaseException as err:
        if store is not None:
            name_what_is_kept(err, store, "verdicts")
        raise
    if result is None:
        return 0
    print(certify_table(result, source=subject.title))
    written = write_certify_outputs(out, result, source=subject.source)
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    if store is not None:
        if store.reused:
            print(f"resumed: {store.reused} verdicts read back from {store.folder}, {store.computed} decided now")
        store.finish()
    return 0



def _smoothing(args: argparse.Namespace, radii: list[float] | None) -> int:
    """``--method smoothing``: CERTIFY at each ``--sigma`` on the first ``--images`` test images."""
    if args.norm not in (None, "2"):
        raise CLIError(f"--norm must be 2 with --method smoothing (its certificate is an L2 radius), "
                       f"got --norm {args.norm}")
    for option in BAB:
        if getattr(args, option) != BAB[option]:
            raise CLIError(f"--{option} applies only with --method bab, got --method smoothing")
    if distributed.world()[1] > 1:
        raise CLIError("--method smoothing runs in one process: run it without torchrun")
    given = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in SMOOTHING.items()}
    sigmas = sorted(set(floats(given["sigma"], "--sigma")))
    batch_size = 1000 if args.batch_size is None else args.batch_size
    if batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {batch_size}")
    check_model_options(args)
    out = check_output_dir(args.out, "--out")
    device = device_named(args.device)
    subject, test = load_subject(args, device)
    radii = radii or [0.5, 1.0, 1.5, 2.0]
    run = certify_smoothed(subject.model, test.x, test.y, sigmas, n0=given["n0"], samples=given["samples"],
                           alpha=given["alpha"], seed=args.seed, batch_size=batch_size,
                           precision=given["precision"], progress=not args.quiet)
    print(smoothing_table(run, radii, source=subject.title))
    written = write_smoothing_outputs(out, run, radii, pred_clean=predictions(subject.model, test.x),
                                      source=subject.source)
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0
