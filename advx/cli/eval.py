"""``advx eval``: robust accuracy over the test set at several eps, the worst case over a cascade."""

from __future__ import annotations

import argparse
import sys

from advx import distributed
from advx.attacks.registry import ATTACKS, SUITES, abilities, describe, stage_name, suite
from advx.certify.propagate import METHODS
from advx.cli import universal
from advx.cli.common import (CLIError, check_model_options, common_options, device_named, floats, images_option,
                             load_subject, model_options, name_what_is_kept, precision_option)
from advx.datasets import DATASETS
from advx.eval_config import EvalConfig
from advx.files import check_output_dir
from advx.norms import NORM_NAMES, get_norm
from advx.report.evaluation import (eval_table, norms_table, remove_stale_norm_folders, write_eval_outputs,
                                    write_norms_report)
from advx.resume import digest
from advx.sharded import evaluate_sharded, shared_store, store_fingerprint
from advx.smoothing import Smoothed


def default_eps(dataset: str, norm: str) -> str:
    """The budgets of the curve: ``advx.datasets``' ``curve`` of the dataset in the norm."""
    return ",".join(f"{e:g}" for e in DATASETS[dataset].curve[norm])


def add(sub) -> None:
    e = sub.add_parser("eval", help="robust accuracy over the test set at several eps (worst case)",
                       description="Robust accuracy at each eps: a sample counts as robust only if it is "
                                   "correct and survives every attack. Cheap attacks first, survivors "
                                   "only, early stop, nested-eps reuse. Writes report.json, "
                                   "per_sample.csv and curve.png.")
    e.add_argument("--attacks", default=None,
                   help=f"comma-separated, cheapest first, each at most once, from {','.join(sorted(ATTACKS))} "
                        f"(default: fgsm,pgd; in L0 and patches, which they do not take, the strong suite)")
    e.add_argument("--suite", default=None, choices=sorted(SUITES),
                   help="a named cascade instead of --attacks (after AutoAttack), one per norm; strong = "
                        + "; ".join(f"{get_norm(n).label}: {describe(suite('strong', n))}" for n in NORM_NAMES)
                        + "; --steps/--restarts override its settings")
    e.add_argument("--eps", default=None,
                   help="comma-separated budgets (default per dataset and norm: "
                        + "; ".join(f"{d} {n}: {default_eps(d, n)}" for d in DATASETS for n in NORM_NAMES)
                        + "; with several norms, the defaults)")
    e.add_argument("--norm", default=None,
                   help=f"threat model, or several comma-separated for one report per norm, from {','.join(NORM_NAMES)} "
                        "(default: inf)")
    e.add_argument("--threat", default=None, choices=[*NORM_NAMES, "universal"],
                   help="the threat model by name instead of --norm: as --norm, or universal (as --universal; with "
                        "--norm inf, 2, patch or frame for the perturbation's kind, default inf)")
    e.add_argument("--patch-size", default=None, metavar="SIDES",
                   help="with --threat patch (or --norm patch): the patch sides, as --eps (default: 4,6,8 on MNIST)")
    e.add_argument("--steps", type=int, default=None, help="iterations of iterative attacks (PGD default: 40)")
    e.add_argument("--alpha", type=float, default=None, help="PGD step size (default: 2.5*eps/steps)")
    e.add_argument("--restarts", type=int, default=None, help="random restarts where supported (default: 1)")
    e.add_argument("--no-cascade", action="store_true",
                   help="run every attack on every correct sample (slower; per-attack figures standalone)")
    e.add_argument("--no-early-stop", action="store_true", help="run every step even on fooled samples")
    e.add_argument("--no-checks", action="store_true", help="skip the sanity checks")
    e.add_argument("--no-adapt", action="store_true",
                   help="attack the model as it is, even when a probe batch shows masked input gradients (by "
                        "default such a model is attacked through BPDA, with the black-box Square stage added, and a "
                        "randomized model with EOT and majority verdicts)")
    e.add_argument("--eot", type=int, default=None,
                   help="draws of a randomized model's randomness averaged per gradient (EOT), for the gradient "
                        "attacks (default: 1, or 20 when a probe batch shows a randomized model)")
    e.add_argument("--votes", type=int, default=None,
                   help="an odd number M: a sample counts as correct or robust only when the model is right on "
                        "the majority of M draws (default: one forward pass, or 11 on a randomized model)")
    e.add_argument("--smoothing", type=float, default=None, metavar="SIGMA",
                   help="evaluate the model's Gaussian smoothing at noise level SIGMA (advx.Smoothed, the classifier "
                        "that advx certify --method smoothing certifies): a randomized model, attacked with EOT "
                        "gradients and judged by majority verdicts; with --norm 2, what the attacks find checks the "
                        "certified radii (default: the model itself)")
    images_option(e, 10000)
    e.add_argument("--batch-size", type=int, default=1000, help="default: 1000")
    e.add_argument("--certify", nargs="?", const="crown", default=None, choices=METHODS, metavar="METHOD",
                   help="also certify each sample at each eps, first (ibp, crown-ibp, crown or alpha-crown; "
                        "crown if no METHOD): certified, broken or unresolved, and so the robust accuracy as "
                        "an interval; the attacks skip the certified samples but a spot check of 64 per eps; "
                        "bab: branch and bound then decides the unresolved samples")
    e.add_argument("--timeout", type=float, default=60.0,
                   help="with --certify bab: seconds per unresolved sample before it stays unresolved "
                        "(default: 60)")
    precision_option(e, "the attacks' search (success, survivors and figures are always decided in fp32)")
    e.add_argument("--out", default="runs/eval", help="output folder (default: runs/eval)")
    e.add_argument("--resume", action="store_true",
                   help="continue a killed run of the same command from the results it had written "
                        "(<out>/.resume/; other settings are refused); without it a run starts afresh")
    universal.add_eval_options(e)
    model_options(e)
    common_options(e)
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    _resolve_threat(args)
    if args.universal:
        return universal.run_eval(args, default_eps)
    universal.check_not_given(args)
    if not args.timeout > 0:
        raise CLIError(f"--timeout must be > 0 seconds per sample, got {args.timeout:g}")
    check_model_options(args)
    _check_smoothing(args)
    _configs(args, args.dataset or "mnist", "cpu")  # every setting checked before any work
    out = check_output_dir(args.out, "--out")
    device = distributed.init(device_named(args.device))  # under torchrun: this rank's device
    subject, test = load_subject(args, device, verbose=distributed.world()[0] == 0)
    if args.smoothing is not None:
        subject.model = Smoothed(subject.model, args.smoothing)
        subject.source["smoothing"] = {"sigma": args.smoothing}
    # What decides the results besides the settings: hashed once, for every norm's resume store.
    identity = {"source": subject.source, "images": digest(test.x, test.y),
                "weights": digest(*subject.model.state_dict().values())}
    results, files, stores = {}, {}, []
    configs = _configs(args, subject.dataset.name, device)
    for norm, config in configs.items():
        folder = out if len(configs) == 1 else out / config.norm.label
        store = shared_store(folder / ".resume", store_fingerprint(config, **identity), resume=args.resume)
        try:
            ev = evaluate_sharded(subject.model, test.x, test.y, config, store=store)
        except BaseException as err:  # killed, or failed after hours of work: say where that work is
            name_what_is_kept(err, store, "batches of attack results")
            raise
        reused, computed = distributed.total([store.reused, store.computed])  # over every rank's batches
        if ev is None:  # another rank's shard: rank 0 reports
            continue
        print(eval_table(ev, source=subject.title))
        for name, message in ev.warnings.items():
            print(f"WARNING [{ev.norm.label}, {name}]: {message}", file=sys.stderr)
        folder.mkdir(parents=True, exist_ok=True)
        written = write_eval_outputs(folder, ev, source=subject.source, training_final=subject.final)
        if reused:
            print(f"resumed: {reused} chunks of attack results read back from {store.folder}, {computed} computed")
        stores.append(store)  # kept until every norm is reported: a run killed later resumes this one too
        results[norm], files[norm] = ev, [str(folder / w) for w in written]
    if distributed.world()[0] != 0:
        return 0
    final = subject.final
    if final:  # what its own training measured, beside this run's figures
        print(f"the checkpoint's own figure (end of its training): --suite {final['suite']} "
              f"{final['robust_acc']:.2%} at eps {final['eps']:g} on {final['n']} {final['images']}")
    written = [f for names in files.values() for f in names]
    if len(configs) > 1:
        print(norms_table(results))
        written.append(str(write_norms_report(out, results, files, source=subject.source)))
    print(f"wrote {', '.join(written)}")
    for store in stores:  # the whole run is reported: the stored chunks are no longer needed
        store.finish()
    remove_stale_norm_folders(out, [results[n].norm.label for n in results] if len(configs) > 1 else [])
    return 0


def _resolve_threat(args: argparse.Namespace) -> None:
    """``--threat`` and ``--patch-size``, the threat model's other spellings, onto ``--norm``,
    ``--universal`` and ``--eps``."""
    if args.threat == "universal":  # --norm then names the universal perturbation's (inf, 2, patch)
        args.universal = True
    elif args.threat is not None:
        if args.norm is not None:
            raise CLIError(f"--threat and --norm exclude each other (one names the threat model), got --threat "
                           f"{args.threat} and --norm {args.norm}")
        args.norm = args.threat
    args.norm = args.norm or "inf"
    if args.patch_size is not None:
        if args.norm != "patch":
            raise CLIError(f"--patch-size applies to patches (--threat patch), got --norm {args.norm}")
        if args.eps is not None:
            raise CLIError(f"--patch-size and --eps both give the patch sides: give one, got --patch-size "
                           f"{args.patch_size} and --eps {args.eps}")
        args.eps = args.patch_size


def _check_smoothing(args: argparse.Namespace) -> None:
    """``--smoothing``: a noise level, and only with the options that can judge a randomized model."""
    if args.smoothing is None:
        return
    if not args.smoothing > 0:
        raise CLIError(f"--smoothing must be a noise level > 0, got {args.smoothing:g}")
    if args.no_adapt:
        raise CLIError("--smoothing needs the adaptation to a randomized model (seeded draws, EOT gradients, "
                       "majority verdicts), got --no-adapt")
    if args.certify:
        raise CLIError(f"--certify bounds the network itself, not its smoothing (got --certify {args.certify}): "
                       f"certify the smoothed model with advx certify --method smoothing --sigma {args.smoothing:g}")


def _configs(args: argparse.Namespace, dataset: str, device) -> dict[str, EvalConfig]:
    """The evaluation of each threat model of ``--norm``, at ``--eps`` or the dataset's default budgets."""
    return {norm: EvalConfig(attacks=_cascade(args, norm),
                             eps=floats(args.eps or default_eps(dataset, norm), "--eps"), norm=norm,
                             steps=args.steps, alpha=args.alpha, restarts=args.restarts, cascade=not args.no_cascade,
                             early_stop=not args.no_early_stop, batch_size=args.batch_size, seed=args.seed,
                             device=device, checks=not args.no_checks, precision=args.precision,
                             progress=not args.quiet, certify=args.certify, certify_timeout=args.timeout,
                             adapt=not args.no_adapt,
                             eot=args.eot, votes=args.votes)
            for norm in _norms(args)}


def _cascade(args: argparse.Namespace, norm: str) -> list:
    """The stages for the threat model ``norm``: ``--suite``'s, ``--attacks``, or by default
    FGSM then PGD where both take the norm, else the strong suite (L0, patches)."""
    given = _attacks(args)  # checked first: --suite and --attacks exclude each other
    if args.suite:
        return suite(args.suite, norm)
    if args.attacks is None and any(norm not in abilities(name).norms for name in DEFAULT_ATTACKS):
        return suite("strong", norm)
    return given


DEFAULT_ATTACKS = ("fgsm", "pgd")


def _attacks(args: argparse.Namespace) -> list[str] | None:
    """The names of ``--attacks`` (None with ``--suite``), checked."""
    if args.suite and args.attacks is not None:
        raise CLIError(f"--suite and --attacks exclude each other: got --suite {args.suite} "
                       f"and --attacks {args.attacks}")
    if args.suite:
        return None
    text = args.attacks if args.attacks is not None else ",".join(DEFAULT_ATTACKS)
    attacks = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in attacks if a not in ATTACKS]
    if not attacks or unknown:
        raise CLIError(f"--attacks must name attacks from {','.join(sorted(ATTACKS))}, got {text!r}")
    repeated = sorted({a for a in attacks if attacks.count(a) > 1})
    if repeated:
        raise CLIError(f"--attacks must name each attack once, got {', '.join(repeated)} more than once")
    return attacks


def _norms(args: argparse.Namespace) -> list[str]:
    """The threat models of ``--norm``, checked against ``--eps`` and the attacks, before any work."""
    norms = [n.strip() for n in (args.norm or "inf").split(",") if n.strip()]
    if not norms or any(n not in NORM_NAMES for n in norms) or len(set(norms)) < len(norms):
        raise CLIError(f"--norm must name each threat model at most once, from {','.join(NORM_NAMES)}, "
                       f"got {args.norm!r}")
    if len(norms) > 1 and args.eps is not None:
        raise CLIError(f"--eps applies to one --norm; with several norms ({args.norm}) each is evaluated at "
                       f"its default budgets ({_budgets(args.dataset, norms)}), "
                       f"got --eps {args.eps}")
    for norm in norms:
        names = [stage_name(s) for s in _cascade(args, norm)]
        lacking = [name for name in names if norm not in abilities(name).norms]
        if lacking:
            raise CLIError(f"--attacks: {', '.join(lacking)} cannot attack in --norm {norm}")
        if args.certify and not get_norm(norm).certifiable:
            raise CLIError(f"--certify: no certificate covers --norm {norm} ({get_norm(norm).label}); drop "
                           f"--certify to attack it")
    return norms


def _budgets(dataset: str | None, norms: list[str]) -> str:
    """The default curves of ``norms`` for ``dataset`` (every dataset's when it is not known yet)."""
    names = [dataset] if dataset else list(DATASETS)
    return "; ".join(f"{DATASETS[d].title} " + ", ".join(f"{n}: {default_eps(d, n)}" for n in norms) for d in names)
