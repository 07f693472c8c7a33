"""``advx certify``: certified accuracy (a proved lower bound) over the test set at several eps
(sharded over the ranks under ``torchrun``)."""

from __future__ import annotations

import argparse
import time

import torch

from advx.bounds import METHODS, Certifier
from advx.bounds.report import CertifyRun, certify_table, write_certify_outputs
from advx import distributed
from advx.cli.common import (CLIError, check_model_options, common_options, device_named, floats, load_subject,
                             model_options)
from advx.files import check_output_dir
from advx.modes import predictions
from advx.norms import NORM_NAMES


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
    c.add_argument("--images", "--n", dest="n", type=int, default=10000,
                   help="first N test images (default: all 10,000; under torchrun write --images: torchrun takes "
                        "--n for its own --nnodes)")
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
    rank, size = distributed.world()
    subject, test = load_subject(args, device, verbose=rank == 0)
    model = subject.model
    if eps is None:
        standard = subject.dataset.eps[args.norm]
        eps = [float(f"{standard / 3:.3g}"), standard]
    certifier = Certifier(model, tuple(test.x.shape[1:]), method=args.method, norm=args.norm)

    def work(ids: torch.Tensor):  # this rank's shard of the images (all of them in one process)
        x, y = test.x[ids], test.y[ids]
        pred = predictions(model, x, batch_size=args.batch_size, device=device)
        lower, seconds = [], {}
        for e in eps:
            start = time.perf_counter()
            lower.append(certifier(x, y, eps=e, batch_size=args.batch_size, progress=not args.quiet).lower)
            seconds[e] = time.perf_counter() - start
        return pred, torch.stack(lower), seconds

    parts = distributed.on_shards(len(test.y), work)
    if parts is None:  # another rank's shard: rank 0 reports
        return 0
    pred = distributed.in_order([(ids, part[0]) for ids, part in parts])
    bounds = distributed.in_order([(ids, part[1]) for ids, part in parts])
    lower = {e: bounds[k] for k, e in enumerate(eps)}
    seconds = {e: max(part[2][e] for _, part in parts) for e in eps}
    settings = {"method": args.method, "eps": eps, "norm": certifier.norm, "n": len(test.y),
                "batch_size": args.batch_size, "device": device, "precision": "fp32", "ranks": size}
    result = CertifyRun(eps, args.method, certifier.norm, test.y, pred, lower, seconds, settings)
    print(certify_table(result, source=subject.title))
    written = write_certify_outputs(out, result, source=subject.source)
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0
