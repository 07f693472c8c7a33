"""HopSkipJump: a decision-based (label-only) attack that walks along the decision boundary.

Chen, Jordan & Wainwright (2020), "HopSkipJumpAttack: A Query-Efficient Decision-Based
Attack" (IEEE S&P). It reads nothing but the model's predicted class (the argmax of the
logits, under ``torch.no_grad``): no gradient, no score. From an adversarial starting image
it bisects towards ``x`` to the boundary, then repeats: estimate the boundary's normal at
the boundary point from the labels of random probes around it (Monte-Carlo, with a
baseline), step along it (geometric step-size search), bisect back towards ``x``. For Linf
the step follows the sign of the estimate and the bisection clips to a shrinking Linf ball
around ``x`` (the paper's Linf variant); for L2 the bisection runs on the segment to ``x``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from advx import rng
from advx.attacks.base import Attack
from advx.norms import TINY, Linf, Norm, per_sample
from advx.validate import InputError, check_number

_PROBE_ROWS = 8192    # probe images per forward pass (and per random draw)
_FIRST_DELTA = 0.1    # the probes' radius at the first iteration, in units of the box's width


class HopSkipJump(Attack):
    """HopSkipJump (HSJA), Linf (default) or L2, untargeted or targeted; labels only.

    Per sample: one query on the clean image (already adversarial: returned as it is);
    random adversarial starting images (tries that cycle through uniform noise in the box,
    sparse noise and blocky noise, since a classifier tends to give uniform noise one and the
    same label), each bisected to the boundary, the closest kept; then iterations of a
    gradient-direction estimate from ``init_evals * sqrt(t + 1)`` probes (at most
    ``max_evals``), a geometric step-size search and a bisection. A sample stops when its
    budget is spent, after ``steps`` iterations, or, with ``eps`` given, once its distance is
    at most ``eps``. The smallest adversarial image found is returned (the base class then
    projects it onto the eps-ball: one farther than ``eps`` does not count as broken); a
    sample with no adversarial start comes back as ``x``. Targeted, a start must be noise
    that the model gives the target label.

    ``steps`` in the result is the exact number of model evaluations ("queries") spent on
    each sample: the clean one, the tries, the probes, the step-size search and bisections.

    Args:
        eps: an optional budget (``None``: unbounded, a minimum-norm attack).
        queries: most queries per sample, all of them counted.
        steps: most iterations (``None``: until ``queries`` are spent).
        init_evals, max_evals: probes of the first iteration, and the most of any one.
        init_tries: most tries for starting images, all starts together.
        init_starts: adversarial starting images bisected; the closest is kept (the paper
            takes the first: 1). Measured on checkpoints/baseline.pt, the first 200 MNIST test
            images at Linf 0.3: 5 broke 195, 1 broke 192 (the misses: 8s, which uniform noise
            is classified as, whose other starts lie far).
        gamma: sets the bisection's precision ``theta`` (``gamma / d**1.5`` for L2,
            ``gamma / d**2`` for Linf, ``d`` the number of pixel values) and the probes'
            radius (``gamma * distance / d``).
        binary_search_steps: bisection steps per boundary search (``None``: enough to reach
            ``theta``, ``log2(1 / theta)``; a number fixes it instead).
        norm: ``"inf"`` or ``"2"``. targeted: ``y`` holds target labels.

    Example:
        >>> atk = HopSkipJump(model, eps=0.3, queries=5000)
        >>> result = atk.run(x, y)       # result.steps: queries per sample
    """

    norms = ("inf", "2")
    targetable = True
    black_box = True
    minimum_norm = True
    low_precision = False  # it reads labels only, near a boundary: fp32

    def __init__(self, model: nn.Module, *, eps: float | None = None, norm: str | Norm = "inf",
                 queries: int = 5000, steps: int | None = None, init_evals: int = 100,
                 max_evals: int = 10000, init_tries: int = 100, init_starts: int = 5, gamma: float = 1.0,
                 binary_search_steps: int | None = None, bounds: tuple[float, float] = (0.0, 1.0),
                 targeted: bool = False, seed: int | None = 0, generator: torch.Generator | None = None,
                 precision: str = "fp32") -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator, precision=precision)
        self.queries = check_number("queries", queries, minimum=1, integer=True)
        self.steps = None if steps is None else check_number("steps", steps, minimum=1, integer=True)
        self.init_evals = check_number("init_evals", init_evals, minimum=1, integer=True)
        self.max_evals = check_number("max_evals", max_evals, minimum=self.init_evals, integer=True)
        self.init_tries = check_number("init_tries", init_tries, minimum=1, integer=True)
        self.init_starts = check_number("init_starts", init_starts, minimum=1, integer=True)
        self.gamma = check_number("gamma", gamma, minimum=0, strict=True)
        self.binary_search_steps = (None if binary_search_steps is None else
                                    check_number("binary_search_steps", binary_search_steps, minimum=1,
                                                 integer=True))
        if self.binary_search_steps is not None:  # the minimum does not depend on the images
            self._check_budget(None)

    # ---------------------------------------------------------------- budget
    def _bisections(self, d: int) -> int:
        """Queries of one boundary search on images of ``d`` values: ``log2(1 / theta)``, the
        paper's precision ``theta = gamma / d**1.5`` (L2) or ``gamma / d**2`` (Linf)."""
        if self.binary_search_steps is not None:
            return self.binary_search_steps
        theta = self.gamma / d ** (2 if isinstance(self.norm, Linf) else 1.5)
        return max(1, math.ceil(math.log2(1 / theta) - 1e-9))

    def _check_budget(self, d: int | None) -> None:
        steps = self._bisections(d) if d is not None else self.binary_search_steps
        minimum = 2 + steps  # the clean image, one try and one bisection
        if self.queries < minimum:
            what = f"images of {d} values" if d is not None else f"binary_search_steps={steps}"
            raise InputError(f"queries must be >= {minimum} for HopSkipJump on {what} (one query on the clean "
                             f"image, one starting try and a bisection of {steps}), got {self.queries}")

    # ----------------------------------------------------------------- search
    @torch.no_grad()
    def _run(self, x, y, generator):
        n, d = len(x), x[0].numel()
        self._check_budget(d)
        bisections = self._bisections(d)
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        x_best = x.clone()
        best = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)

        hit = self._adversarial(x, y)
        queries += 1
        best[hit] = 0
        todo = (~hit).nonzero().squeeze(1)
        current, dist, found = self._initialise(x[todo], y[todo], rng.subset(generator, todo), queries, todo,
                                                bisections)
        active, current, dist = todo[found], current[found], dist[found]
        x_best[active], best[active] = current, dist

        t = 0
        while len(active) and (self.steps is None or t < self.steps):
            left = self.queries - queries[active]
            wanted = min(int(self.init_evals * math.sqrt(t + 1)), self.max_evals)
            probes = torch.clamp(left - bisections - 1, max=wanted)
            keep = probes >= 1
            if self.eps is not None:  # broken: no need to get closer
                keep &= best[active] > self.eps
            active, current, dist, probes = active[keep], current[keep], dist[keep], probes[keep]
            if not len(active):
                break
            x0, y0, gen = x[active], y[active], rng.subset(generator, active)
            # The probes' radius: the paper's d**(1/2) * theta * dist (L2), d * theta * dist (Linf).
            delta = (_FIRST_DELTA * (self.bounds[1] - self.bounds[0]) if t == 0
                     else (self.gamma / d * dist).clamp_min(TINY))
            direction = self._estimate(current, y0, delta, probes, wanted, gen)
            queries[active] += probes
            if isinstance(self.norm, Linf):
                direction = direction.sign()
            stepped, ok, spent = self._step(current, y0, direction, dist / math.sqrt(t + 1),
                                            self.queries - queries[active] - bisections, bisections)
            queries[active] += spent
            moved = ok.nonzero().squeeze(1)
            if len(moved):
                current[moved] = self._bisect(x0[moved], y0[moved], stepped[moved], bisections)
                queries[active[moved]] += bisections
                dist[moved] = self.norm.size(current[moved] - x0[moved])
                closer = moved[dist[moved] < best[active[moved]]]
                x_best[active[closer]], best[active[closer]] = current[closer], dist[closer]
            t += 1
        return x_best, queries

    def _adversarial(self, images, labels):
        """[A] bool: the model's label on ``images`` reaches the goal (finite logits only)."""
        hits = []
        for i in range(0, len(images), _PROBE_ROWS):
            chunk, goal = images[i:i + _PROBE_ROWS], labels[i:i + _PROBE_ROWS]
            logits = self.search_logits(chunk)
            hits.append(self.confirm(chunk, logits, goal) & torch.isfinite(logits).all(1))
        return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool, device=images.device)

    def _initialise(self, x, y, generator, queries, index, bisections):
        """Per sample, up to ``init_starts`` random adversarial images, each bisected to the
        boundary; returns the closest boundary point, its distance and whether one was found.
        A sample tries at most ``init_tries`` images, and only while its budget leaves room for
        a bisection; with ``eps`` it stops once a point is within ``eps``. Counted in
        ``queries[index]``."""
        a = len(x)
        tries = torch.zeros(a, dtype=torch.long, device=x.device)
        boundary, candidate = x.clone(), x.clone()
        dist = torch.full((a,), math.inf, dtype=x.dtype, device=x.device)
        for _ in range(self.init_starts):
            searching = torch.arange(a, device=x.device)
            if self.eps is not None:
                searching = searching[dist > self.eps]
            got = torch.zeros(a, dtype=torch.bool, device=x.device)
            while len(searching):
                room = (tries[searching] < self.init_tries) & (queries[index[searching]] + 1 + bisections
                                                               <= self.queries)
                searching = searching[room]
                if not len(searching):
                    break
                u = rng.rand((len(searching), x[0].numel() + 2), rng.subset(generator, searching),
                             device=x.device, dtype=x.dtype)
                noise = self._noise(u, x[searching], tries[searching])
                hit = self._adversarial(noise, y[searching])
                queries[index[searching]] += 1
                tries[searching] += 1
                candidate[searching[hit]], got[searching[hit]] = noise[hit], True
                searching = searching[~hit]
            new = got.nonzero().squeeze(1)
            if not len(new):
                break
            point = self._bisect(x[new], y[new], candidate[new], bisections)
            queries[index[new]] += bisections
            size = self.norm.size(point - x[new])
            closer = size < dist[new]
            boundary[new[closer]], dist[new[closer]] = point[closer], size[closer]
        return boundary, dist, torch.isfinite(dist)

    def _noise(self, u, like, k):
        """Random images like ``like`` [A, C, H, W] from uniforms ``u`` [A, C*H*W + 2]; try
        ``k`` [A] picks the kind: uniform noise, sparse noise (a random share of the pixels at
        one bound, the others at the other), or uniform noise constant on random square blocks."""
        a, c, h, w = like.shape
        low, high = self.bounds
        values, p, q = u[:, :-2].view_as(like), u[:, -2], u[:, -1]
        on = values < per_sample(0.02 + 0.3 * p, like)
        sparse = torch.where(per_sample(q < 0.5, like), on, ~on).to(like.dtype)
        side = 2 + (p * max(1, min(h, w) // 2 - 1)).long()
        rows = torch.arange(h, device=like.device) // side[:, None] * side[:, None]  # [A, H]
        cols = torch.arange(w, device=like.device) // side[:, None] * side[:, None]  # [A, W]
        flat = (rows[:, :, None] * w + cols[:, None, :]).view(a, 1, h * w).expand(a, c, h * w)
        blocky = values.reshape(a, c, h * w).gather(2, flat).view_as(like)
        kind = per_sample(k % 3, like)
        values = torch.where(kind == 0, values, torch.where(kind == 1, sparse, blocky))
        return (low + (high - low) * values).clamp(low, high)

    def _toward(self, x, x_far, frac):
        """Images between ``x`` (``frac`` 0) and ``x_far`` (``frac`` 1): on the segment (L2),
        or ``x_far`` clipped to the Linf ball around ``x`` of ``frac`` times its distance."""
        delta = x_far - x
        if isinstance(self.norm, Linf):
            radius = per_sample(frac * self.norm.size(delta), x)
            return x + torch.maximum(torch.minimum(delta, radius), -radius)
        return x + per_sample(frac, x) * delta

    def _bisect(self, x, y, x_adv, steps):
        """The boundary between ``x`` and the adversarial ``x_adv``, on its adversarial side."""
        low = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        high = torch.ones_like(low)
        for _ in range(steps):
            mid = (low + high) / 2
            hit = self._adversarial(self._toward(x, x_adv, mid), y)
            high, low = torch.where(hit, mid, high), torch.where(hit, low, mid)
        return self._toward(x, x_adv, high)

    def _estimate(self, current, y, delta, probes, drawn, generator):
        """The boundary's normal at ``current`` [A, ...] (unit L2), pointing to the goal, from
        the labels of ``probes`` [A] probes at radius ``delta``; ``drawn`` are drawn per
        sample whatever ``probes`` is, so that a sample's stream depends on itself only."""
        a, shape = len(current), current.shape[1:]
        delta = per_sample(torch.as_tensor(delta, dtype=current.dtype, device=current.device).expand(a), current)
        out = torch.empty_like(current)
        rows_per_chunk = max(1, _PROBE_ROWS // drawn)
        for i in range(0, a, rows_per_chunk):
            part = torch.arange(i, min(a, i + rows_per_chunk), device=current.device)
            draw = rng.randn if not isinstance(self.norm, Linf) else rng.rand
            u = draw((len(part), drawn, *shape), rng.subset(generator, part), device=current.device,
                     dtype=current.dtype)
            if isinstance(self.norm, Linf):
                u = 2 * u - 1
            u = u / u.flatten(2).norm(dim=2).clamp_min(TINY).view(len(part), drawn, *[1] * len(shape))
            here, radius = current[part, None], delta[part, None]
            probe = self.clip(here + radius * u)
            u = (probe - here) / radius  # what the probes moved, after the clip
            used = torch.arange(drawn, device=current.device) < probes[part, None]  # [P, drawn]
            labels = y[part, None].expand(len(part), drawn)
            sign = torch.zeros(len(part), drawn, dtype=current.dtype, device=current.device)
            sign[used] = torch.where(self._adversarial(probe[used], labels[used]), 1.0, -1.0).to(sign.dtype)
            count = used.sum(1).to(current.dtype)
            mean = sign.sum(1) / count
            # The baseline (the mean label) removes the bias of a boundary that is not flat;
            # when every probe agrees it would leave nothing: take the mean direction then.
            weight = torch.where(per_sample(mean.abs() == 1, sign), sign, (sign - mean[:, None]) * used)
            grad = (weight.view(len(part), drawn, *[1] * len(shape)) * u).sum(1) / per_sample(count, current[part])
            out[part] = grad / per_sample(grad.flatten(1).norm(dim=1).clamp_min(TINY), grad)
        return out

    def _step(self, current, y, direction, size, left, bisections):
        """Geometric step-size search: ``size`` [A], halved until ``current + size * direction``
        reaches the goal, at most ``bisections`` times and within ``left`` [A] queries.
        Returns ``(stepped, ok, spent)``."""
        a = len(current)
        stepped, ok = current.clone(), torch.zeros(a, dtype=torch.bool, device=current.device)
        spent = torch.zeros(a, dtype=torch.long, device=current.device)
        searching = torch.arange(a, device=current.device)
        size = size.clone()
        for _ in range(bisections + 1):
            searching = searching[spent[searching] < left[searching]]
            if not len(searching):
                break
            candidate = self.clip(current[searching] + per_sample(size[searching], current[searching])
                                  * direction[searching])
            hit = self._adversarial(candidate, y[searching])
            spent[searching] += 1
            stepped[searching[hit]], ok[searching[hit]] = candidate[hit], True
            size[searching] /= 2
            searching = searching[~hit]
        return stepped, ok, spent
