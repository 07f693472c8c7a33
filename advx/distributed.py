"""Sharded evaluation on ``torch.distributed``: ``torchrun --nproc-per-node N -m advx eval ...``.

torchrun starts N processes and sets ``RANK``/``WORLD_SIZE`` (and the rendezvous); each
process loads the model and the data, ``init`` joins the process group (gloo on the CPU,
NCCL on CUDA, one GPU per local rank), and ``evaluate_sharded`` gives each rank a
interleaved shard of the samples. Every sample keeps the random streams it has in a
single-process run (``evaluate(sample_ids=...)``: its index in the whole set), so its result
does not depend on the number of ranks. Rank 0 gathers the shards' per-sample records and
merges them into one ``Evaluation``, then runs the sanity checks on the whole set: its
report is that of a single-process run.

With ``--resume`` the ranks share one ``advx.resume.ChunkStore``: a rank that died redoes
only its missing chunks. Not yet: data-parallel training (issue 17 asks for it).
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
import torch.distributed as dist
from torch import nn

from advx import sanity
from advx.attacks.registry import abilities
from advx.eval_config import EvalConfig
from advx.evaluate import Evaluation, evaluate


def world() -> tuple[int, int]:
    """``(rank, world size)``: of the process group, else of torchrun's environment, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init(device: str = "cpu") -> str:
    """Join torchrun's process group when there is one (``WORLD_SIZE`` > 1); return the
    device this rank works on (``cuda:<local rank>`` with CUDA)."""
    rank, size = world()
    if size == 1 or not dist.is_available():
        return device
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


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


def evaluate_sharded(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: EvalConfig,
                     store=None) -> Evaluation | None:
    """``evaluate`` over all ranks: each attacks its shard; rank 0 returns the merged
    ``Evaluation`` (the others None). Without a process group it is ``evaluate``.
    ``store``: an ``advx.resume.ChunkStore`` the ranks share."""
    rank, size = world()
    if size == 1:
        return evaluate(model, x, y, config, store=store)
    part = torch.tensor(shard(len(y), rank, size))
    own = evaluate(model, x[part], y[part], replace(config, checks=False, progress=config.progress and rank == 0),
                   sample_ids=part, store=store)
    gathered = [None] * size
    dist.gather_object(_portable(own), gathered if rank == 0 else None, dst=0)
    if rank != 0:
        return None
    ev = merge(gathered, [torch.tensor(shard(len(y), r, size)) for r in range(size)])
    if config.checks:  # on the whole set, as a single run does
        ev.warnings = sanity.run_checks(
            model, x, y, eps=ev.eps, robust_acc=ev.robust_acc, pred_clean=ev.records["pred_clean"],
            broken_by=ev.records["broken_by"],
            black_box=[not callable(s) and abilities(name).black_box for s, name in zip(config.attacks, ev.attacks)],
            norm=config.norm, device=config.device, seed=config.seed)
    return ev


def _portable(ev: Evaluation) -> Evaluation:
    """``ev`` with its tensors on the CPU (to cross processes)."""
    return replace(ev, records={k: v.cpu() for k, v in ev.records.items()})


def merge(parts: list[Evaluation], ids: list[torch.Tensor]) -> Evaluation:
    """One ``Evaluation`` of the shards ``parts`` (``ids[i]``: the indices of part i's samples
    in the whole set): the per-sample records put back in sample order, every accuracy
    recounted over all samples."""
    first, n = parts[0], sum(p.n for p in parts)
    order = torch.cat(ids)
    records = {}
    for k, v in first.records.items():
        joined = torch.cat([p.records[k] for p in parts], dim=-1)
        records[k] = torch.empty_like(joined)
        records[k][..., order] = joined

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
