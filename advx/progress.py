"""Progress bars that show the whole job, also when ``torchrun`` splits it over ranks.

In one process ``bar`` is a plain ``tqdm``. Under a process group every rank counts its
work (and its share of the total) into torch.distributed's key-value store, the one
torchrun's rendezvous set up, and rank 0 alone draws the sums: one bar for the whole job,
not rank 0's shard. No collective is involved, so a rank never waits for another to
report progress; only rank 0 waits, when its own share is done, until every rank has
closed the bar (or all the work is counted), drawing it meanwhile. Bars are matched across ranks by the order in which
each process opens them (every rank runs the same code, so the same bars).
"""

from __future__ import annotations

import time

import torch.distributed as dist
from tqdm.auto import tqdm


def bar(total: int, *, desc: str, unit: str, enabled: bool = True, leave: bool = True):
    """A progress bar with ``update(n)`` and ``close()``: of this process, or of the job
    when this process is one rank of several (every rank must open it, enabled or not alike)."""
    store = _store()
    if store is None or not enabled:
        return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=leave)
    JobBar.opened += 1
    return JobBar(store, total, rank=dist.get_rank(), size=dist.get_world_size(),
                  key=f"advx/progress/{JobBar.opened}", desc=desc, unit=unit, leave=leave)


def _store():
    """The process group's store, or None (one process, or a torch without it)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError):  # not public API: without it, each rank draws its own share
        return None


class JobBar:
    """One bar over every rank's work (see the module docstring): this process is ``rank`` of
    ``size``, and ``key`` names the bar alike on every rank in ``store``."""

    opened = 0  # bars opened by this process so far: their order names them alike on every rank
    poll_seconds = 0.2

    def __init__(self, store, total: int, *, rank: int, size: int, key: str, desc: str = "", unit: str = "it",
                 leave: bool = True) -> None:
        self.store, self.rank, self.size, self.key = store, rank, size, key
        self.store.add(f"{self.key}/total", int(total))
        self.tqdm = tqdm(total=int(total), desc=desc, unit=unit, leave=leave) if self.rank == 0 else None
        self._draw()

    def _count(self, name: str, add: int = 0) -> int:
        return int(self.store.add(f"{self.key}/{name}", int(add)))

    def _draw(self) -> None:
        if self.tqdm is not None:
            self.tqdm.total = self._count("total")
            self.tqdm.update(self._count("done") - self.tqdm.n)

    def update(self, n: int = 1) -> None:
        if n:
            self._count("done", n)
        self._draw()

    def close(self) -> None:
        self._count("closed", 1)
        if self.tqdm is None:
            return
        # The other ranks' shares may still be running: draw until every rank has closed it
        # (or all the work is counted, should a rank never open this bar).
        while self._count("closed") < self.size and self._count("done") < self._count("total"):
            self._draw()
            time.sleep(self.poll_seconds)
        self._draw()
        self.tqdm.close()
