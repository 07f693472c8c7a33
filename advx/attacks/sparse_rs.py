"""Sparse-RS: score-based black-box attacks by random search over which pixels to change:
L0 (any k pixels), patches (one square of side s, anywhere: ``advx.attacks.sparse_rs_patch``)
and frames (a border w pixels wide: ``advx.attacks.sparse_rs_frame``).

Croce, Andriushchenko, Singh, Flammarion & Hein (2022), "Sparse-RS: a versatile framework
for query-efficient sparse black-box adversarial attacks" (AAAI). It never looks at a
gradient: it reads the model's logits (under ``torch.no_grad``) and keeps a random change
of the perturbed pixels only if it lowers the margin loss.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from advx import rng
from advx.attacks.base import Attack
from advx.attacks.results import Run
from advx.attacks.sparse_rs_frame import search_frame
from advx.attacks.sparse_rs_patch import search_patch
from advx.attacks.search import Draws, improves, search_options
from advx.norms import Frame, Norm, Patch

# (last iteration, divisor of p_init): the paper's schedule for L0 over 10,000 iterations
# (rescaled to the budget); beyond the last, p_init / 20.
_SCHEDULE = ((0, 1), (50, 2), (200, 4), (500, 5), (1000, 6), (2000, 8), (4000, 10), (6000, 12), (8000, 15))


def swap_fraction(p_init: float, query: int, queries: int) -> float:
    """The fraction alpha of the k pixels swapped at ``query`` (1 for the first query after
    the start) out of ``queries``: the schedule stretched from 10,000 to ``queries``."""
    at = int(query / queries * 10000)
    return p_init / next((d for last, d in _SCHEDULE if at <= last), 20)


class SparseRS(Attack):
    """Sparse-RS for L0, patches and frames, untargeted or targeted; uses model outputs only.

    L0 (``norm="0"``): the state of a sample is a set M of k = ``eps`` pixels (a pixel: one
    position with all its channels) and their values; every other pixel is the clean one.
    Start: k positions drawn uniformly, each channel at a random corner of the box (``bounds``
    low or high, 1/2 each). Each query: a = max(int(alpha * k), 1) positions of M, drawn
    uniformly, go back to their clean values and a positions outside M, drawn uniformly, take
    random corners. alpha starts at ``p_init`` and shrinks on the paper's schedule
    (``swap_fraction``). A budget above the number of pixels is clamped to it; with every
    pixel in M, a query redraws the corners of a of them instead.

    Patches (``norm="patch"``, image- and location-specific): the state is one square patch
    of side s = ``eps`` (on an image side shorter than s, the patch covers that side) with its
    own contents, each value a corner of the box, and its place. Start: the place uniform
    over where the patch fits, the contents random vertical stripes (one corner per channel
    and column). Each query either moves the patch by up to ``shift_range`` pixels each way,
    every ``location_period`` queries while that range is not 0, or paints a random square of
    side max(int(sqrt(p) * s), 1) inside it in one random corner colour (one per channel; if
    the square has that colour already, the other corner), p from ``p_init`` on the paper's
    patch schedule (``patch_fraction``); see ``advx.attacks.sparse_rs_patch``.

    Frames (``norm="frame"``, image-specific): the state is the colour of every pixel of the
    border ``eps`` pixels wide, each at a corner of the box; each query repaints p times the
    frame's pixel count of w x w squares at random frame pixels (on the patch schedule); see
    ``advx.attacks.sparse_rs_frame``.

    In all three, a change is kept if it lowers the margin (``z_y - max_{j!=y} z_j``, or
    ``max_{j!=t} z_j - z_t`` targeted) by more than float rounding, and a sample stops as
    soon as it reaches the goal. ``steps`` in the result is the exact number of model
    evaluations ("queries") spent on each sample, the initial one included. Every random
    number of a sample comes from its own stream (with an ``advx.rng.SampleRNG``), so its
    result does not depend on its batch.

    Args:
        eps: L0: k, the number of pixels changed; patch: s, the patch's side; frame: w,
            its width (a whole number each way). queries: most queries per sample and restart (the initial
            one included). p_init: initial fraction of the k pixels swapped (L0) or of the
            patch's area (patch) or of the frame's pixels (frame) repainted per query.
            restarts: independent runs, each only on samples not broken yet. norm: ``"0"``,
            ``"patch"`` or ``"frame"``. targeted: ``y`` holds
            target labels.

    Example:
        >>> atk = SparseRS(model, eps=20, queries=1000)
        >>> result = atk.run(x, y)       # result.distance: pixels changed, at most 20
        >>> patch = SparseRS(model, eps=8, norm="patch").run(x, y)  # an 8 x 8 sticker
    """

    norms = ("0", "patch", "frame")
    black_box = True
    low_precision = False  # not measured in bf16: the search runs in fp32

    def __init__(self, model: nn.Module, *, eps: float = 10, queries: int = 1000,
                 p_init: float = 0.8, restarts: int = 1, norm: str | Norm = "0",
                 bounds: tuple[float, float] = (0.0, 1.0), targeted: bool = False,
                 seed: int | None = 0, generator: torch.Generator | None = None,
                 precision: str = "fp32") -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator, precision=precision)
        self.queries, self.p_init, self.restarts = search_options(queries, p_init, restarts)

    @torch.no_grad()
    def _run(self, x, y, generator):
        if isinstance(self.norm, Frame):
            width = int(min(self.budget(x), self.norm.diameter(x.shape[1:], self.bounds)))
            search = lambda xs, ys, gen: search_frame(self, xs, ys, width, gen)  # noqa: E731
        elif isinstance(self.norm, Patch):
            side = int(min(self.budget(x), max(x.shape[2:], default=1)))
            search = lambda xs, ys, gen: search_patch(self, xs, ys, side, gen)  # noqa: E731
        else:
            k = int(min(self.budget(x), math.prod(x.shape[2:])))
            search = lambda xs, ys, gen: self._run_once(xs, ys, k, gen)  # noqa: E731

        def restart(idx, gen):
            x_new, margin, reached, queries = search(x[idx], y[idx], gen)
            return Run(x_new, reached, -margin, queries)  # the lower the margin, the better

        return self.best_of_runs(x, generator, [restart] * self.restarts)

    def _run_once(self, x, y, k, generator):
        """One random search with k pixels; returns ``(x_best, margin, reached, queries)``."""
        n, channels, shape = len(x), x.shape[1], x.shape
        clean = x.reshape(n, channels, -1)  # [n, C, P]
        positions = clean.shape[2]
        outside = positions - k
        # A random order of the positions per sample, the first k of it M; the order is
        # what the swaps below permute (partial Fisher-Yates), so each draw is uniform.
        keys = rng.rand((n, positions), generator, device=x.device, dtype=torch.float64)
        order = keys.argsort(dim=1, stable=True)
        bits = rng.randint(2, (n, channels, positions), generator, device=x.device)
        low, high = (torch.tensor(b, dtype=x.dtype, device=x.device) for b in self.bounds)
        in_m = torch.zeros((n, positions), dtype=torch.bool, device=x.device).scatter_(1, order[:, :k], True)
        x_best = torch.where(in_m[:, None], torch.where(bits == 1, high, low), clean)

        logits = self.search_logits(x_best.view(shape))
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        margin = _comparable(self.margin(logits, y))
        reached = self.confirm(x_best.view(shape), logits, y)
        active = (~reached).nonzero().squeeze(1)
        iterations = self.queries - 1
        most = max(int(self.p_init * k), 1)
        most = min(most, outside) if outside else min(most, k)
        width = most * (2 + channels)  # per query: a removals, a additions, a x C corners
        draws = Draws(generator, n, iterations, width, device=x.device, dtype=torch.float64)
        for i in range(iterations):
            if len(active) == 0:
                break
            u = draws.at(i, active)  # [A, width]
            a = min(max(int(swap_fraction(self.p_init, i + 1, self.queries) * k), 1), most)
            current, ordered = x_best[active], order[active]
            for j in range(a):  # M's positions j..k-1 -> column j, the outside's -> column k + j
                _pick(ordered, j, k, u[:, j])
                if outside:
                    _pick(ordered, k + j, positions, u[:, most + j])
            corners = torch.where(u[:, 2 * most:].reshape(-1, most, channels)[:, :a] < 0.5, low, high)
            added = ordered[:, k:k + a] if outside else ordered[:, :a]
            candidate = current.clone()
            if outside:  # the removed positions go back to the clean image
                removed = ordered[:, None, :a].expand(-1, channels, -1)
                candidate.scatter_(2, removed, clean[active].gather(2, removed))
            candidate.scatter_(2, added[:, None].expand(-1, channels, -1), corners.transpose(1, 2))

            logits = self.search_logits(candidate.view(-1, *shape[1:]))
            queries[active] += 1
            new_margin = _comparable(self.margin(logits, y[active]))
            improved = improves(new_margin, margin[active])  # beyond float rounding
            x_best[active[improved]] = candidate[improved]
            margin[active[improved]] = new_margin[improved]
            if outside:  # an accepted swap: the added positions join M, the removed leave it
                swapped = ordered.clone()
                swapped[:, :a], swapped[:, k:k + a] = ordered[:, k:k + a], ordered[:, :a]
                ordered = torch.where(improved[:, None], swapped, ordered)
            order[active] = ordered
            now_reached = improved.clone()
            now_reached[improved] = self.confirm(candidate[improved].view(-1, *shape[1:]), logits[improved],
                                                 y[active[improved]])
            reached[active[now_reached]] = True
            active = active[~now_reached]
        return x_best.view(shape), margin, reached, queries

    def _search_margin(self, logits, y):
        """The margin the search lowers, NaN as the worst (``_comparable``)."""
        return _comparable(self.margin(logits, y))


def _comparable(margin: torch.Tensor) -> torch.Tensor:
    """The margin with NaN (non-finite logits) as +inf: the worst, so that any finite margin
    is an improvement on it and a NaN one never is."""
    return margin.nan_to_num(nan=math.inf, posinf=math.inf, neginf=-math.inf)


def _pick(order: torch.Tensor, column: int, end: int, u: torch.Tensor) -> None:
    """One step of a partial Fisher-Yates shuffle, in place: the entry of each row of
    ``order`` at a position drawn uniformly from ``column..end-1`` (by ``u`` in [0, 1))
    swaps with the one at ``column``."""
    span = end - column
    pick = (column + (u * span).long().clamp_max(span - 1)).unsqueeze(1)
    here = order[:, column].clone()
    order[:, column] = order.gather(1, pick).squeeze(1)
    order.scatter_(1, pick, here.unsqueeze(1))
