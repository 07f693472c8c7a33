"""What the score-based random searches (Square, Sparse-RS) share: each sample's random
numbers, drawn in blocks of queries, and the rule that a change counts only beyond float
rounding."""

from __future__ import annotations

import torch

from advx import rng
from advx.validate import InputError, check_number

# Queries whose random numbers are drawn at once: per-sample streams are one call per
# sample, far too slow to make three times per query, above all on a GPU.
DRAWS_PER_CALL = 100
TIE = 1e-5  # a margin must fall by this share of itself (at least of 1) to count as lower


class Draws:
    """``width`` uniforms per query for each of ``n`` samples, from each sample's own stream
    of ``generator``, drawn ``DRAWS_PER_CALL`` queries at a time for the samples still running:
    a sample's numbers depend only on its own progress, not on its batch."""

    def __init__(self, generator, n: int, iterations: int, width: int, *, device, dtype) -> None:
        self.generator, self.iterations, self.width = generator, iterations, width
        self.device, self.dtype = device, dtype
        self.row = torch.full((n,), -1, dtype=torch.long, device=device)
        self.uniforms = None

    def at(self, i: int, active: torch.Tensor) -> torch.Tensor:
        """[len(active), width]: the uniforms of query ``i`` (0-based) of the samples ``active``."""
        if i % DRAWS_PER_CALL == 0:
            block = min(DRAWS_PER_CALL, self.iterations - i)
            self.uniforms = rng.rand((len(active), block, self.width), rng.subset(self.generator, active),
                                     device=self.device, dtype=self.dtype)
            self.row[active] = torch.arange(len(active), device=self.device)
        return self.uniforms[self.row[active], i % DRAWS_PER_CALL]


class Progress:
    """Where a per-image random search stands (Sparse-RS's patches and frames): each sample's
    ``margin``, ``queries`` spent and whether it ``reached`` the goal, and the samples still
    ``active``. Made from the starting images (one query each); ``step`` spends one more."""

    def __init__(self, attack, x_start: torch.Tensor, y: torch.Tensor) -> None:
        self.attack, self.y = attack, y
        logits = attack.search_logits(x_start)
        self.queries = torch.ones(len(y), dtype=torch.long, device=y.device)
        self.margin = attack._search_margin(logits, y)
        self.reached = attack.confirm(x_start, logits, y)
        self.active = (~self.reached).nonzero().squeeze(1)

    def step(self, candidate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One query on ``candidate`` (one image per active sample): ``(improved, kept)``, which
        of them lowered the margin beyond rounding (a mask over the active ones) and their
        sample indices; the margins are updated, and a sample that reached the goal stops."""
        attack, active = self.attack, self.active
        logits = attack.search_logits(candidate)
        self.queries[active] += 1
        new_margin = attack._search_margin(logits, self.y[active])
        improved = improves(new_margin, self.margin[active])
        kept = active[improved]
        self.margin[kept] = new_margin[improved]
        now_reached = improved.clone()
        now_reached[improved] = attack.confirm(candidate[improved], logits[improved], self.y[kept])
        self.reached[active[now_reached]] = True
        self.active = active[~now_reached]
        return improved, kept


def improves(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Where the margin ``new`` is lower than ``old`` by more than float rounding (``TIE``): a
    change that leaves the logits as they were must not count as progress in one batch and not
    in another (the last bits of a batched forward depend on it). An infinite ``old`` (a NaN
    margin counted as +inf) is beaten by any finite ``new``."""
    return new < torch.where(torch.isfinite(old), old - TIE * old.abs().clamp_min(1), old)


def search_options(queries, p_init, restarts) -> tuple[int, float, int]:
    """The options every random search takes, checked: ``queries`` (>= 1), ``p_init`` (in
    (0, 1]) and ``restarts`` (>= 1)."""
    queries = check_number("queries", queries, minimum=1, integer=True)
    p_init_checked = check_number("p_init", p_init, minimum=0, strict=True)
    if p_init_checked > 1:
        raise InputError(f"p_init must be in (0, 1], got {p_init!r}")
    return queries, p_init_checked, check_number("restarts", restarts, minimum=1, integer=True)
