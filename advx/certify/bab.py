"""Branch and bound over ReLU splits (β-CROWN): a verdict per sample, verified or falsified.

Where α-CROWN's bound of a property stays <= 0, the input set is cut in two along one
unstable ReLU (``z >= 0`` and ``z <= 0``); each half is bounded again with the split
folded into the bound (``advx.certify.alpha``) and cut further while it stays open. The
property is **verified** when every half proves it, **falsified** when a point of the set
violates it (the minimiser of a half's bound, or a few projected-gradient steps from it,
checked by a forward pass), and **unknown** when the time runs out first.

A property is the rows ``C`` [S, K] with thresholds ``d`` [S] and groups ``group`` [S]:
it is violated at a point when, for some group, every row of the group has ``C z <= d``
(VNN-LIB's disjunction of conjunctions); a robustness property is one row
``e_y - e_j`` per other class j, each its own group, with d = 0.

Branching: the unstable neuron whose relaxation costs the open rows most (the intercept
of its upper line times the weight on it; BaBSR-like, Bunel et al. 2020). Many domains
are bounded in one batched pass; the ones with the lowest bounds go first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from advx.certify.alpha import Domains, bound, domain_box, optimise, primal_points, refined_boxes
from advx.certify.ops import Op, ReLU
from advx.certify.propagate import Ball


@dataclass
class Property:
    """Rows ``C`` [S, K], thresholds ``d`` [S] and ``group`` [S]: violated at output z when
    some group has ``C[r] z <= d[r]`` for all of its rows; proved on a set when every group
    has a row whose lower bound of ``C[r] z`` exceeds ``d[r]`` there."""

    C: torch.Tensor
    d: torch.Tensor
    group: torch.Tensor

    @classmethod
    def robustness(cls, label: int, classes: int, device=None) -> "Property":
        """z_label > z_j for every other class j."""
        others = [j for j in range(classes) if j != label]
        C = torch.zeros(len(others), classes, device=device)
        C[:, label] = 1.0
        C[torch.arange(len(others)), others] = -1.0
        return cls(C, torch.zeros(len(others), device=device), torch.arange(len(others), device=device))

    def proved(self, lower: torch.Tensor) -> torch.Tensor:
        """[D] True where every group has a row whose bound (``lower`` [D, S]) beats its d."""
        return self.worst(lower - self.d) > 0

    def violated(self, z: torch.Tensor) -> torch.Tensor:
        """[P] True where the outputs ``z`` [P, K] violate the property."""
        return self.value(z) <= 0

    def value(self, z: torch.Tensor) -> torch.Tensor:
        """[P]: the smallest over groups of the largest ``C z - d`` in the group (<= 0 where
        violated): what the falsifier descends."""
        return self.worst(z @ self.C.T - self.d)

    def worst(self, slack: torch.Tensor) -> torch.Tensor:
        """[P]: per row of ``slack`` [P, S], the min over groups of the max over the group's rows."""
        groups = int(self.group.max()) + 1
        worst = torch.full((len(slack), groups), float("-inf"), device=slack.device, dtype=slack.dtype)
        worst = worst.scatter_reduce(1, self.group.expand(len(slack), -1), slack, "amax")
        return worst.min(1).values


@dataclass
class Outcome:
    """One property's verdict: "verified", "falsified" or "unknown"; ``counterexample``
    [*input] where falsified; ``lower``: the smallest proved bound over the open domains
    (> 0 once verified); ``domains``: subdomains bounded; ``seconds``."""

    verdict: str
    counterexample: torch.Tensor | None = None
    lower: float = float("-inf")
    domains: int = 0
    seconds: float = 0.0
    notes: list = field(default_factory=list)


@dataclass
class Settings:
    timeout: float = 60.0
    batch: int = 64              # domains split per round (2x bounded)
    root_iterations: int = 50
    intermediate_iterations: int = 20  # α-CROWN for the root's intermediate bounds (0: CROWN's)
    intermediate_rows: int = 256       # ... for up to this many neurons per layer, layers begun
                                       # in the first quarter of the timeout
    iterations: int = 15
    max_domains: int = 20000
    falsify_steps: int = 20
    falsify_restarts: int = 8


def forward(chain: list[Op], x: torch.Tensor) -> torch.Tensor:
    for op in chain:
        x = op.forward(x)
    return x


def falsify(chain, ball: Ball, prop: Property, starts: torch.Tensor, steps: int, seed: int = 0):
    """Projected sign-gradient descent of ``prop.value`` from ``starts`` [P, *input] inside
    the ball of sample 0; returns the points met that violate the property (maybe none)."""
    l, u = ball.box()
    x = starts.clone()
    found = []
    for step in range(steps + 1):
        with torch.enable_grad():
            x.requires_grad_(True)
            value = prop.value(forward(chain, x))
            grad, = torch.autograd.grad(value.sum(), x)
        x = x.detach()
        hit = value.detach() <= 0
        if hit.any():
            found.append(x[hit])
            break
        if step == steps:
            break
        size = 0.25 * (u - l).amax().clamp_min(1e-12) * (1 - step / steps) + 1e-3 * (u - l).amax()
        x = x - size * ball.norm.direction(grad)
        x = _into(ball, x)
    return torch.cat(found) if found else starts[:0]


def _into(ball: Ball, x: torch.Tensor) -> torch.Tensor:
    l, u = ball.box()
    x = torch.max(torch.min(x, u[:1]), l[:1])
    if not ball.norm.ball_is_box:
        x = ball.norm.project(x, ball.x[:1].expand_as(x), ball.eps, (ball.lower, ball.upper))
    return x


def branch_and_bound(chain: list[Op], ball: Ball, prop: Property, settings: Settings = Settings(), *,
                     check=None, generator: torch.Generator | None = None) -> Outcome:
    """The verdict for ``prop`` on the set ``ball`` (one sample). ``check(points) -> [P]
    bool`` confirms candidate counterexamples (default: the chain's own forward pass)."""
    start = time.perf_counter()
    check = check or (lambda p: prop.violated(forward(chain, p)))
    boxes = refined_boxes(chain, ball, iterations=settings.intermediate_iterations,
                          max_rows=settings.intermediate_rows, deadline=start + settings.timeout / 4)
    S = len(prop.d)
    C, d = prop.C.unsqueeze(0), prop.d.unsqueeze(0)
    root = Domains(torch.zeros(1, dtype=torch.long, device=ball.x.device), {})

    def counterexample(points):
        points = _into(ball, points)
        if len(points):
            hit = check(points)
            if hit.any():
                return points[hit.nonzero()[0, 0]]
        return None

    # the set's centre, and random starts: the cheap search first
    g = generator or torch.Generator(device="cpu").manual_seed(0)
    l, u = ball.box()
    noise = torch.rand((settings.falsify_restarts, *ball.x.shape[1:]), generator=g).to(l)
    starts = torch.cat([ball.x[:1], l + (u - l) * noise])
    found = counterexample(falsify(chain, ball, prop, starts, settings.falsify_steps))
    if found is not None:
        return Outcome("falsified", found, seconds=time.perf_counter() - start)
    best, alpha, beta = optimise(chain, ball, boxes, root, C, d, iterations=settings.root_iterations)
    count = 1
    if prop.proved(best).all():
        return Outcome("verified", lower=_margin(best, prop), domains=1, seconds=time.perf_counter() - start)
    # open domains, held as one batch: splits, α, β, best bounds
    domains, lower, proved = root, best, float("inf")
    while len(domains):
        if time.perf_counter() - start > settings.timeout:
            return Outcome("unknown", lower=_margin(lower, prop), domains=count,
                           seconds=time.perf_counter() - start, notes=["timeout"])
        if len(domains) > settings.max_domains:
            return Outcome("unknown", lower=_margin(lower, prop), domains=count,
                           seconds=time.perf_counter() - start, notes=["too many domains"])
        order = _group_margin(lower, prop).argsort()
        pick, rest = order[:settings.batch], order[settings.batch:]
        parents, parent_alpha, parent_beta = domains.take(pick), _take(alpha, pick, S), _take(beta, pick, S)
        found = bound(chain, ball, boxes, parents, C.expand(len(parents), -1, -1), parent_alpha, parent_beta)
        choice = _branch(chain, boxes, parents, found, prop, lower[pick])
        if choice is None:
            return Outcome("unknown", lower=_margin(lower, prop), domains=count,
                           seconds=time.perf_counter() - start, notes=["a domain with every ReLU split stays open"])
        children = _split(parents, choice, chain, boxes)
        twice = torch.arange(len(pick), device=pick.device).repeat(2)
        kid_alpha, kid_beta = _take(parent_alpha, twice, S), _take(parent_beta, twice, S)
        kid_best, kid_alpha, kid_beta = optimise(chain, ball, boxes, children, C.expand(len(children), -1, -1),
                                                 d.expand(len(children), -1), alpha=kid_alpha, beta=kid_beta,
                                                 iterations=settings.iterations, floor=lower[pick][twice])
        count += len(children)
        final = bound(chain, ball, boxes, children, C.expand(len(children), -1, -1), kid_alpha, kid_beta)
        points = primal_points(ball, final.inputs, children.root.repeat_interleave(S))
        hit = counterexample(points)
        if hit is None:  # a few descent steps from the worst domains' minimisers
            worst = _group_margin(kid_best, prop).argsort()[:settings.falsify_restarts]
            rows = (worst.unsqueeze(1) * S + torch.arange(S, device=worst.device)).flatten()
            hit = counterexample(falsify(chain, ball, prop, points[rows], settings.falsify_steps // 4))
        if hit is not None:
            return Outcome("falsified", hit, domains=count, seconds=time.perf_counter() - start)
        keep = (~prop.proved(kid_best)).nonzero().squeeze(1)
        domains = _concat(domains.take(rest), children.take(keep))
        closed = _group_margin(kid_best, prop)[prop.proved(kid_best)]
        proved = min([proved, *closed.tolist()])
        rows_a, rows_b = len(rest) * S, len(keep) * S
        beta = _cat(_take(beta, rest, S), rows_a, _take(kid_beta, keep, S), rows_b, alpha)
        alpha = _cat(_take(alpha, rest, S), rows_a, _take(kid_alpha, keep, S), rows_b, alpha)
        lower = torch.cat([lower[rest], kid_best[keep]])
    return Outcome("verified", lower=proved, domains=count, seconds=time.perf_counter() - start)


def _margin(lower: torch.Tensor, prop: Property) -> float:
    """The smallest over domains of the property's proved margin."""
    return float(_group_margin(lower.detach(), prop).min()) if len(lower) else float("inf")


def _group_margin(lower: torch.Tensor, prop: Property) -> torch.Tensor:
    """[D]: per domain, the property's proved margin (> 0: proved)."""
    return prop.worst(lower - prop.d)


def _take(params: dict, pick: torch.Tensor, S: int) -> dict:
    """The rows of the domains ``pick`` (each domain owns S consecutive rows)."""
    rows = (pick.unsqueeze(1) * S + torch.arange(S, device=pick.device)).flatten()
    return {i: p[rows] for i, p in params.items()}


def _cat(a: dict, rows_a: int, b: dict, rows_b: int, like: dict) -> dict:
    """``rows_a`` rows of ``a`` then ``rows_b`` of ``b``; a layer one lacks is zeros there."""
    out = {}
    for i in set(a) | set(b):
        shape, dtype, device = like[i].shape[1:], like[i].dtype, like[i].device
        pa = a[i] if i in a else torch.zeros(rows_a, *shape, dtype=dtype, device=device)
        pb = b[i] if i in b else torch.zeros(rows_b, *shape, dtype=dtype, device=device)
        out[i] = torch.cat([pa, pb])
    return out


def _branch(chain, boxes, parents: Domains, found, prop: Property, lower):
    """Per domain, the (ReLU index, flat position) of the neuron to split: the largest
    ``-min(w, 0) * (-u l / (u - l))`` summed over the rows not yet proved."""
    S = lower.shape[1]
    open_rows = (lower <= prop.d).to(lower.dtype)  # [D, S]
    best_score = torch.full((len(parents),), -1.0, device=lower.device)
    best_layer = torch.full((len(parents),), -1, dtype=torch.long, device=lower.device)
    best_pos = torch.zeros(len(parents), dtype=torch.long, device=lower.device)
    for i, w in found.outputs.items():
        l, u = domain_box(boxes[i], parents, i)
        free = (l < 0) & (u > 0)
        if i in parents.splits:
            free &= parents.splits[i] == 0
        intercept = (-u * l / (u - l).clamp_min(1e-12)) * free
        weight = (-w.clamp_max(0)).view(len(parents), S, *w.shape[1:]) * open_rows.view(len(parents), S, *[1] * (w.dim() - 1))
        score = (weight.sum(1) * intercept + 1e-6 * (u - l) * free).flatten(1)
        score = torch.where(free.flatten(1), score, torch.full_like(score, -1.0))
        value, pos = score.max(1)
        better = value > best_score
        best_score, best_layer, best_pos = (torch.where(better, value, best_score),
                                            torch.where(better, i, best_layer), torch.where(better, pos, best_pos))
    if (best_layer < 0).any():
        return None
    return best_layer, best_pos


def _split(parents: Domains, choice, chain, boxes) -> Domains:
    """Two children per parent: the chosen neuron active (first half), inactive (second)."""
    layers, positions = choice
    D = len(parents)
    splits = {}
    for i, op in enumerate(chain):
        if not isinstance(op, ReLU):
            continue
        if i in parents.splits:
            s = parents.splits[i]
        elif (layers == i).any():
            s = torch.zeros((D, *boxes[i][0].shape[1:]), dtype=torch.int8, device=layers.device)
        else:
            continue
        s = torch.cat([s, s]).flatten(1).clone()
        mine = (layers == i).nonzero().squeeze(1)
        s[mine, positions[mine]] = 1
        s[mine + D, positions[mine]] = -1
        splits[i] = s.view(2 * D, *boxes[i][0].shape[1:])
    return Domains(torch.cat([parents.root, parents.root]), splits)


def _concat(a: Domains, b: Domains) -> Domains:
    splits = {}
    for i in set(a.splits) | set(b.splits):
        like = a.splits.get(i, b.splits.get(i))
        sa = a.splits.get(i, torch.zeros((len(a), *like.shape[1:]), dtype=torch.int8, device=like.device))
        sb = b.splits.get(i, torch.zeros((len(b), *like.shape[1:]), dtype=torch.int8, device=like.device))
        splits[i] = torch.cat([sa, sb])
    return Domains(torch.cat([a.root, b.root]), splits)
