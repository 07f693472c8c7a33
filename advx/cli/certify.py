"""``advx certify``: certified accuracy (a proved lower bound) over the test set at several eps
(sharded over the ranks under ``torchrun``)."""

from __future__ import annotations

import argparse

from advx import distributed
from advx.certify import METHODS
from advx.cli.common import (CLIError, check_model_options, common_options, device_named, floats, images_option,
                             load_subject, model_options)
from advx.files import check_output_dir
from advx.norms import NORM_NAMES
from advx.report.certification import certify_table, write_certify_outputs
from advx.sharded import certify_sharded


def add(sub) -> None:
    c = sub.add_parser("certify", help="certified accuracy: a proved lower bound on robust accuracy",
                       description="Bound every margin z_y - z_j over the whole eps-ball (bound propagation: "
                                   "ibp, crown-ibp or crown). A sample is certified when every bound is "
                                   "positive: no input in the ball changes its class. Writes report.json, "
                                   "per_sample.csv (each sample's margin bound) and curve.png.")
    c.add_argument("--eps", default=None,
                   help="comma-separated budgets (default: a third and all of the dataset's standard budget "
                        "in the norm: MNIST Linf 0.1,0.3)")
    c.add_argument("--norm", default="inf", choices=NORM_NAMES, help="default: inf")
    c.add_argument("--method", default="crown", choices=METHODS,
                   help="ibp: fast, loose; crown: tightest, slowest (default: crown)")
    images_option(c, 10000)
    c.add_argument("--batch-size", type=int, default=256, help="default: 256")
    c.add_argument("--out", default="runs/certify", help="output folder (default: runs/certify)")
    model_options(c)
    common_options(c)
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    eps = sorted(set(floats(args.eps, "--eps"))) if args.eps is not None else None
    if eps is not None and (not eps or min(eps) < 0):
        raise CLIError(f"--eps must be comma-separated numbers >= 0, got {args.eps!r}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_model_options(args)
    out = check_output_dir(args.out, "--out")
    device = distributed.init(device_named(args.device))  # under torchrun: this rank's device
    subject, test = load_subject(args, device, verbose=distributed.world()[0] == 0)
    if eps is None:
        standard = subject.dataset.eps[args.norm]
        eps = [float(f"{standard / 3:.3g}"), standard]
    # each rank certifies its shard of the images; rank 0 reports
    result = certify_sharded(subject.model, test.x, test.y, eps, method=args.method, norm=args.norm,
                             batch_size=args.batch_size, device=device, progress=not args.quiet)
    if result is None:
        return 0
    print(certify_table(result, source=subject.title))
    written = write_certify_outputs(out, result, source=subject.source)
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0
