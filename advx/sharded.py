"""Evaluation, one attack, and certification over the ranks of a ``torchrun`` job
(``torchrun --nproc-per-node N -m advx eval|attack|certify ...``).

Each rank works on its interleaved shard of the samples (``advx.distributed.on_shards``),
every sample with the random streams it has in a single-process run (its index in the
whole set: ``evaluate(sample_ids=...)``, ``run_attack(sample_ids=...)``), so its result
does not depend on the number of ranks. Rank 0 merges the shards' per-sample records and,
for ``evaluate_sharded``, runs the sanity checks on the whole set: its result is that of a
single-process run. Certification needs no random stream: its bounds depend on the sample
alone. Without a process group every function here is its single-process counterpart.

With ``--resume`` the ranks share one ``advx.resume.ChunkStore`` (``shared_store``): a rank
that died redoes only its missing chunks.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, replace

import torch
from torch import nn

from advx.adapt import adaptation_for
from advx.certify import Certifier
from advx.certify.sweep import CertifyRun
from advx.certify.verdicts import VERDICTS
from advx.dataset_attack import DatasetResult, run_attack
from advx.distributed import barrier, in_order, on_shards, world
from advx.eval_config import EvalConfig
from advx.evaluate import Evaluation, evaluate, sanity_warnings
from advx.modes import predictions
from advx.resume import ChunkStore
from advx.validate import InputError, check_batch


def evaluate_sharded(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: EvalConfig,
                     store: ChunkStore | None = None) -> Evaluation | None:
    """``evaluate`` over all ranks: each attacks its shard; rank 0 returns the merged
    ``Evaluation`` (the others None). ``store``: a ``ChunkStore`` the ranks share."""
    if world()[1] == 1:
        return evaluate(model, x, y, config, store=store)
    check_batch(x, y)
    adaptation = adaptation_for(model, x, y, config)  # decided on the whole set
    parts = on_shards(len(y), lambda ids: _portable(evaluate(model, x[ids], y[ids], replace(config, checks=False),
                                                             sample_ids=ids, store=store, adaptation=adaptation)))
    if parts is None:
        return None
    ev = merge_evaluations([part for _, part in parts], [ids for ids, _ in parts])
    if config.checks:  # on the whole set, as a single run does
        ev.warnings = sanity_warnings(adaptation.model, x, y, ev, replace(config, attacks=adaptation.attacks))
    return ev


def run_attack_sharded(attack, x: torch.Tensor, y: torch.Tensor, *, target: torch.Tensor | None = None,
                       keep: int = 8, **options) -> DatasetResult | None:
    """``run_attack`` over all ranks (the attack needs a ``seed``: each sample's random
    stream comes from it and the sample's id); rank 0 returns the merged result, the
    others None. ``options``: those of ``run_attack``."""
    check_batch(x, y, attack.bounds)
    if world()[1] > 1 and (attack.seed is None or attack.generator is not None):
        raise InputError("attack: run_attack_sharded needs an attack with a seed (and no generator of its own), "
                         "so that every sample's random stream is the same on any rank")

    def work(ids: torch.Tensor) -> DatasetResult:
        part = run_attack(attack, x[ids], y[ids], target=None if target is None else target[ids],
                          keep=keep, sample_ids=ids, **options)
        return replace(part, x_adv=part.x_adv.cpu())

    parts = on_shards(len(y), work)
    return None if parts is None else merge_runs(parts, keep)


def certify_sharded(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float], *, method: str,
                    norm, batch_size: int = 256, device: str | torch.device = "cpu", timeout: float = 60.0,
                    milp: float = 0.0, store: ChunkStore | None = None, progress: bool = True) -> CertifyRun | None:
    """Certify every image of ``x`` [N, C, H, W] (labels ``y``) at every ``eps`` by
    ``method``, each rank its shard; rank 0 returns the whole ``CertifyRun`` (with the clean
    predictions and, per eps, the seconds of the slowest rank), the others None. With
    ``method="bab"``: a verdict per sample (``timeout`` seconds each, the share ``milp`` of
    them for an exact MILP on what the search leaves open), each written into
    ``store`` as it is decided when one is given."""
    check_batch(x, y, shape=tuple(x.shape[1:]) if isinstance(x, torch.Tensor) and x.dim() > 1 else None)
    certifier = Certifier(model, tuple(x.shape[1:]), method="alpha-crown" if method == "bab" else method,
                          norm=norm, timeout=timeout, milp=milp)

    def work(ids: torch.Tensor):
        xs, ys = x[ids], y[ids]
        pred = predictions(model, xs, batch_size=batch_size, device=device)
        lower, codes, took, seconds = [], [], [], {}
        for e in eps:
            start = time.perf_counter()
            cert = certifier(xs, ys, eps=e, batch_size=batch_size, progress=progress)
            if method == "bab":  # misclassified samples are falsified at once (x itself)
                certifier.decide(xs, ys, cert, store=store, ids=ids, progress=progress)
                codes.append(torch.tensor([VERDICTS.index(v) for v in cert.verdicts]))
                took.append(cert.seconds)
            lower.append(cert.lower)
            seconds[e] = time.perf_counter() - start
        return pred, torch.stack(lower), seconds, codes, took

    parts = on_shards(len(y), work)
    if parts is None:
        return None
    bounds = in_order([(ids, part[1]) for ids, part in parts])
    verdicts = verdict_seconds = None
    if method == "bab":
        codes = in_order([(ids, torch.stack(part[3])) for ids, part in parts])
        took = in_order([(ids, torch.stack(part[4])) for ids, part in parts])
        verdicts = {e: codes[k] for k, e in enumerate(eps)}
        verdict_seconds = {e: took[k] for k, e in enumerate(eps)}
    settings = {"method": method, "eps": list(eps), "norm": certifier.norm.name, "n": len(y),
                "batch_size": batch_size, "device": str(device), "precision": "fp32", "ranks": len(parts)}
    if method == "bab":
        settings["timeout_per_sample"] = timeout
        settings["milp_share"] = milp
    return CertifyRun(eps=list(eps), method=method, norm=certifier.norm, y=y.cpu(),
                      pred_clean=in_order([(ids, part[0]) for ids, part in parts]),
                      lower={e: bounds[k] for k, e in enumerate(eps)},
                      seconds={e: max(part[2][e] for _, part in parts) for e in eps},
                      settings=settings, verdicts=verdicts, verdict_seconds=verdict_seconds)


def shared_store(folder: str | os.PathLike, fingerprint: dict, *, resume: bool) -> ChunkStore:
    """The ``ChunkStore`` every rank writes its results into as they complete (``resume``:
    keep what a killed run of the same ``fingerprint`` left there). Rank 0 opens it first,
    clearing an old one unless resuming; the other ranks open it once it is ready."""
    rank = world()[0]
    store = ChunkStore(folder, fingerprint, resume=resume) if rank == 0 else None
    barrier()  # no rank writes into the folder before rank 0 has cleared it
    return store or ChunkStore(folder, fingerprint, resume=resume, clear=False)


def store_fingerprint(config: EvalConfig, **identity) -> dict:
    """What decides an evaluation's results: ``identity`` (source, image and weight
    hashes) and the ``config`` (the device's kind only: cuda:0 and cuda:1 alike)."""
    settings = {k: v for k, v in asdict(config).items() if k != "progress"}
    return {**identity, "config": {**settings, "device": str(config.device).split(":")[0]}}


def merge_runs(parts: list[tuple[torch.Tensor, DatasetResult]], keep: int = 8) -> DatasetResult:
    """One ``DatasetResult`` of the shards' ``(ids, result)``: every column in sample order,
    the adversarial images of the whole set's first ``keep`` samples."""
    if len(parts) == 1:
        return parts[0][1]
    first = parts[0][1]

    def whole(field: str) -> torch.Tensor:
        return in_order([(ids, getattr(part, field)) for ids, part in parts])

    kept = in_order([(ids[ids < keep], part.x_adv.movedim(0, -1)) for ids, part in parts]).movedim(-1, 0)
    return DatasetResult(y=whole("y"), target=None if first.target is None else whole("target"),
                         pred_clean=whole("pred_clean"), pred_adv=whole("pred_adv"), success=whole("success"),
                         distance=whole("distance"), x_adv=kept, seconds=max(p.seconds for _, p in parts))


def _portable(ev: Evaluation) -> Evaluation:
    """``ev`` with its tensors on the CPU (to cross processes)."""
    return replace(ev, records={k: v.cpu() for k, v in ev.records.items()})


def _spot_checks(parts: list[Evaluation]) -> dict:
    """With certify first, each shard spot-checks its own proved samples: the counts add up."""
    if "spot_checked" not in parts[0].settings:
        return {}
    return {"spot_checked": [sum(c) for c in zip(*(p.settings["spot_checked"] for p in parts))]}


def merge_evaluations(parts: list[Evaluation], ids: list[torch.Tensor]) -> Evaluation:
    """One ``Evaluation`` of the shards ``parts`` (``ids[i]``: the indices of part i's samples
    in the whole set): the per-sample records put back in sample order, every accuracy
    recounted over all samples."""
    first, n = parts[0], sum(p.n for p in parts)
    records = {k: in_order([(i, p.records[k]) for i, p in zip(ids, parts)]) for k in first.records}

    def share(count: int) -> float:  # as a single run computes it: a float32 mean of booleans
        return (torch.tensor(float(count), dtype=torch.float32) / n).item()

    def count(p: Evaluation, fraction: float) -> int:
        return round(fraction * p.n)

    correct = records["pred_clean"] == records["y"]
    by_attack = {e: {name: share(sum(count(p, p.robust_acc_by_attack[e][name]) for p in parts))
                     for name in first.robust_acc_by_attack[e]} for e in first.eps}
    certified = records.get("certified")
    return Evaluation(
        eps=first.eps, attacks=first.attacks, n=n, clean_acc=correct.float().mean().item(),
        robust_acc={e: records["robust"][k].float().mean().item() for k, e in enumerate(first.eps)},
        robust_acc_by_attack=by_attack, records=records, seconds=max(p.seconds for p in parts),
        settings={**first.settings, "n": n, "ranks": len(parts), **_spot_checks(parts)}, norm=first.norm,
        certified_acc=None if certified is None else {e: certified[k].float().mean().item()
                                                      for k, e in enumerate(first.eps)},
    )
