"""Sharded work on ``torch.distributed``: ``torchrun --nproc-per-node N -m advx eval ...``
(and ``advx attack``, ``advx certify``).

torchrun starts N processes and sets ``RANK``/``WORLD_SIZE`` (and the rendezvous); each
process loads the model and the data, ``init`` joins the process group (gloo on the CPU,
NCCL on CUDA, one GPU per local rank), and ``on_shards`` gives each rank an interleaved
shard of the samples and gathers the results on rank 0. Every sample keeps the random
streams it has in a single-process run (``evaluate(sample_ids=...)``,
``run_attack(sample_ids=...)``: its index in the whole set), so its result does not depend
on the number of ranks. Rank 0 merges the shards' per-sample records (``merge``,
``merge_runs``, ``in_order``) and, for ``evaluate_sharded``, runs the sanity checks on the
whole set: its report is that of a single-process run. Certification needs no random
stream: its bounds depend on the sample alone.

With ``--resume`` the ranks share one ``advx.resume.ChunkStore``: a rank that died redoes
only its missing chunks. Data-parallel training lives in ``advx.train``; the progress bar
of the whole job in ``advx.progress``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from advx.eval_config import EvalConfig
from advx.validate import InputError
from advx.dataset_attack import DatasetResult, run_attack
from advx.evaluate import Evaluation, evaluate, sanity_warnings

T = TypeVar("T")


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the process group this process joined (``init``), or ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init(device: str = "cpu") -> str:
    """Join torchrun's process group when there is one (``WORLD_SIZE`` > 1); return the
    device this rank works on (``cuda:<local rank>`` with CUDA)."""
    if int(os.environ.get("WORLD_SIZE", 1)) == 1 or not dist.is_available():  # torchrun sets it
        return device
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def finish() -> None:
    """Leave the process group, every rank together (nothing to do in a single process). A
    rank that exits while another still works (rank 0 writing the report) could otherwise be
    aborted by gloo's threads at exit ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(n: int, rank: int, size: int) -> range:
    """The share of ``n`` samples for ``rank`` of ``size``: every ``size``-th from ``rank``
    (interleaved, so that hard and easy images, which a test set often holds in runs, spread
    evenly over the ranks; sizes differ by at most 1)."""
    return range(rank, n, size)


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def total(values: list[int]) -> list[int]:
    """The sums of ``values`` over all ranks (every rank must call it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    sums = torch.tensor(values, dtype=torch.long)
    dist.all_reduce(sums)
    return sums.tolist()


def on_shards(n: int, work: Callable[[torch.Tensor], T]) -> list[tuple[torch.Tensor, T]] | None:
    """``work(ids)`` on this rank's shard of ``n`` samples (``ids``: their indices in the
    whole set); rank 0 gets every rank's ``(ids, result)``, the others None. In one process:
    ``[(all ids, work(all ids))]``. Results cross processes by pickling: keep them on the CPU."""
    rank, size = world()
    if size == 1:
        ids = torch.arange(n)
        return [(ids, work(ids))]
    if n < size:
        raise InputError(f"--images: {n} images cannot be shared among {size} ranks; give at least {size}")
    own = work(torch.tensor(shard(n, rank, size), dtype=torch.long))
    gathered = [None] * size
    dist.gather_object(own, gathered if rank == 0 else None, dst=0)
    if rank != 0:
        return None
    return [(torch.tensor(shard(n, r, size), dtype=torch.long), part) for r, part in enumerate(gathered)]


def in_order(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The shards' per-sample columns (last dimension: the shard's samples) put back in sample order."""
    order = torch.cat([ids for ids, _ in parts])
    joined = torch.cat([t for _, t in parts], dim=-1)
    whole = torch.empty_like(joined)
    whole[..., order] = joined
    return whole


def evaluate_sharded(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: EvalConfig,
                     store=None) -> Evaluation | None:
    """``evaluate`` over all ranks: each attacks its shard; rank 0 returns the merged
    ``Evaluation`` (the others None). Without a process group it is ``evaluate``.
    ``store``: an ``advx.resume.ChunkStore`` the ranks share."""
    if world()[1] == 1:
        return evaluate(model, x, y, config, store=store)
    parts = on_shards(len(y), lambda ids: _portable(evaluate(model, x[ids], y[ids], replace(config, checks=False),
                                                             sample_ids=ids, store=store)))
    if parts is None:
        return None
    ev = merge([part for _, part in parts], [ids for ids, _ in parts])
    if config.checks:  # on the whole set, as a single run does
        ev.warnings = sanity_warnings(model, x, y, ev, config)
    return ev


def run_attack_sharded(model: nn.Module, attack, x: torch.Tensor, y: torch.Tensor, *,
                       target: torch.Tensor | None = None, keep: int = 8, **options) -> DatasetResult | None:
    """``run_attack`` over all ranks (the attack needs a ``seed``: each sample's random
    stream comes from it and the sample's id); rank 0 returns the merged result, the
    others None. ``options``: those of ``run_attack``."""
    if world()[1] > 1 and (attack.seed is None or attack.generator is not None):
        raise InputError("run_attack_sharded: the attack needs a seed (and no generator of its own), so that "
                         "every sample's random stream is the same on any rank")

    def work(ids: torch.Tensor) -> DatasetResult:
        part = run_attack(model, attack, x[ids], y[ids], target=None if target is None else target[ids],
                          keep=keep, sample_ids=ids, **options)
        return replace(part, x_adv=part.x_adv.cpu())

    parts = on_shards(len(y), work)
    return None if parts is None else merge_runs(parts, keep)


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


def merge(parts: list[Evaluation], ids: list[torch.Tensor]) -> Evaluation:
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
        settings={**first.settings, "n": n, "ranks": len(parts)},
        certified_acc=None if certified is None else {e: certified[k].float().mean().item()
                                                      for k, e in enumerate(first.eps)},
    )
