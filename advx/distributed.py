"""The ranks of a ``torchrun`` job: which one this process is, joining and leaving the
process group, each rank's share of the samples, and what crosses between ranks.

torchrun starts N processes and sets ``RANK``/``WORLD_SIZE`` (and the rendezvous); each
process loads the model and the data, ``init`` joins the process group (gloo on the CPU,
NCCL on CUDA, one GPU per local rank). ``on_shards`` runs a piece of work on each rank's
interleaved shard and gathers the results on rank 0, ``in_order`` puts per-sample columns
back in sample order; ``from_rank_0`` and ``buffers_of_rank_0`` share rank 0's values.
In a single process every helper here is a no-op or its trivial case. What is sharded with
them: ``advx.sharded`` (evaluation, one attack, certification) and ``advx.train``
(data-parallel training); the progress bar of the whole job is ``advx.progress``.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from advx.validate import InputError

T = TypeVar("T")


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the process group this process joined (``init``), or ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init(device: str = "cpu") -> str:
    """Join torchrun's process group when there is one (``WORLD_SIZE`` > 1); return the
    device this rank works on (``cuda:<local rank>`` with CUDA). A ``WORLD_SIZE`` without
    any other of torchrun's variables (one left in the environment) runs as one process,
    with a warning; some of them without the others is an ``InputError``."""
    size = _whole("WORLD_SIZE", "1", minimum=1, why=" (torchrun sets it)")
    if size == 1 or not dist.is_available():
        return device
    given = {name: os.environ.get(name) for name in ("RANK", "MASTER_ADDR", "MASTER_PORT")}
    missing = [name for name, value in given.items() if not value]
    if len(missing) == len(given):
        warnings.warn(f"WORLD_SIZE={size} is set, but not RANK, MASTER_ADDR or MASTER_PORT (torchrun sets them "
                      f"all): running as one process; unset WORLD_SIZE, or launch with torchrun", RuntimeWarning,
                      stacklevel=2)
        return device
    if missing:
        present = [name for name in given if name not in missing]
        raise InputError(f"WORLD_SIZE={size} and {', '.join(present)} are set, but not {' and '.join(missing)}: "
                         f"launch with torchrun, which sets them all, or unset WORLD_SIZE")
    rank = _whole("RANK", None, minimum=0, maximum=size - 1, why=f" (WORLD_SIZE={size})")
    if device.startswith("cuda"):
        local = _whole("LOCAL_RANK", "0", minimum=0, why=" (torchrun sets it)")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        try:
            dist.init_process_group(backend)
        except (RuntimeError, ValueError, OSError) as err:  # torch's DistError is a RuntimeError
            lines = str(err).strip().splitlines()
            cause = f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__
            raise InputError(f"joining torchrun's process group ({backend}, rank {rank} of {size}, "
                             f"{given['MASTER_ADDR']}:{given['MASTER_PORT']}) failed: {cause}") from None
    return device


def _whole(name: str, default: str | None, *, minimum: int, maximum: int | None = None, why: str = "") -> int:
    """The environment variable ``name`` (``default`` when unset) as a whole number in range."""
    text = os.environ.get(name) or default
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        expected = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise InputError(f"{name} must be a whole number {expected}{why}, got {text!r}")
    return value


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


def total(values: list) -> list:
    """The sums of ``values`` (numbers) over all ranks (every rank must call it); in float64
    when any of them is a float."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    exact = all(isinstance(v, int) for v in values)
    sums = torch.tensor(values, dtype=torch.long if exact else torch.float64)
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
        raise InputError(f"n must be at least the number of ranks ({size}): every rank needs a sample, got {n}")
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


def every_rank(value: T) -> list[T]:
    """``value`` of every rank, in rank order, on every rank (every rank must call it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def from_rank_0(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, its value sent to every rank (the others wait for it)."""
    rank, size = world()
    box = [compute() if rank == 0 else None]
    if size > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def buffers_of_rank_0(model: nn.Module) -> None:
    """Every rank takes rank 0's buffers (BatchNorm's running statistics), as
    DistributedDataParallel does at each forward pass, but earlier: data-parallel
    adversarial training attacks the module inside DDP, in eval mode, before that forward,
    and the attack reads them. Without this each rank's attack would use the statistics of
    its own last share, which no checkpoint holds, and a resumed run would differ."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
