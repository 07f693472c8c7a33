"""Branch and bound over ReLU splits (β-CROWN): a verdict per sample, verified or falsified.

Where α-CROWN's bound of a property stays <= 0, the input set is cut in two along one
unstable ReLU (``z >= 0`` and ``z <= 0``); each half is bounded again with the split
folded into the bound (``advx.certify.alpha``) and cut further while it stays open. The
property is **verified** when every half proves it, **falsified** when a point of the set
violates it (the minimiser of a half's bound, or a few projected-gradient steps from it,
checked by a forward pass), and **unknown** when the time runs out first.

A property (``advx.certify.properties``) holds when every group does, so each group still
open at the root is searched on its own, the worst first: its domains carry only its rows
(cheaper bounds), and the branching aims at it.

Max-pooling is branched on too: branch and bound works on the chain with each pooling
written as ReLUs (``advx.certify.pooling.split_pools``), so a split decides which of two
inputs of a window is the larger.

Branching (FSB-like, De Palma et al. 2021): the few unstable neurons whose relaxation costs
the open rows most (the intercept of its upper line times the weight on it; BaBSR's score,
Bunel et al. 2020) are candidates; each is tried with one cheap bound pass of both
children (the parent's slopes and multipliers), and the one that leaves the least of the
children's margins below zero is split. Many domains are bounded in one batched pass; the
ones with the lowest bounds go first.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from advx.certify import milp
from advx.certify.alpha import Domains, bound, domain_box, optimise, primal_points, refined_boxes
from advx.certify.falsify import falsify, forward, into
from advx.certify.ops import Op, ReLU
from advx.certify.pooling import split_pools
from advx.certify.properties import Property
from advx.certify.propagate import ROWS_BUDGET, Ball

__all__ = ["Outcome", "Property", "Settings", "branch_and_bound"]


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
    batch: int = 1024            # domains split per round (2x bounded); fewer where their slopes
                                 # would pass ROWS_BUDGET floats
    root_iterations: int = 50
    intermediate_iterations: int = 20  # α-CROWN for the root's intermediate bounds (0: CROWN's)
    intermediate_rows: int = 256       # ... for up to this many neurons per layer, layers begun
                                       # in the first quarter of the timeout
    iterations: int = 15
    candidates: int = 3          # neurons tried per split (1: BaBSR's choice alone)
    max_domains: int = 0         # open domains held at most (0: as many as 2**30 floats of
                                 # their slopes and multipliers allow)
    milp: float = 0.0            # the share of the timeout kept for an exact MILP (advx.certify.milp)
                                 # on a group branch and bound leaves open (0: none)
    falsify_steps: int = 20
    falsify_restarts: int = 8
    pool_splits: bool = True     # max-pooling as ReLUs that can be split (False: relaxed, never split)


def branch_and_bound(chain: list[Op], ball: Ball, prop: Property, settings: Settings = Settings(), *,
                     check=None, generator: torch.Generator | None = None) -> Outcome:
    """The verdict for ``prop`` on the set ``ball`` (one sample). ``check(points) -> [P]
    bool`` confirms candidate counterexamples (default: the chain's own forward pass)."""
    start = time.perf_counter()
    check = check or (lambda p, given=chain: prop.violated(forward(given, p)))  # the chain as given
    if settings.pool_splits:
        chain = split_pools(chain)
    boxes = refined_boxes(chain, ball, iterations=settings.intermediate_iterations,
                          max_rows=settings.intermediate_rows, deadline=start + settings.timeout / 4)

    def counterexample(points):
        points = into(ball, points)
        if len(points):
            hit = check(points)
            if hit.any():
                return points[hit.nonzero()[0, 0]]
        return None

    def outcome(verdict, point=None, lower=float("-inf"), domains=0, notes=()):
        return Outcome(verdict, point, lower, domains, time.perf_counter() - start, list(notes))

    # the set's centre, and random starts: the cheap search first
    g = generator or torch.Generator(device="cpu").manual_seed(0)
    l, u = ball.box()
    noise = torch.rand((settings.falsify_restarts, *ball.x.shape[1:]), generator=g).to(l)
    found = counterexample(falsify(chain, ball, prop, torch.cat([ball.x[:1], l + (u - l) * noise]),
                                   settings.falsify_steps))
    if found is not None:
        return outcome("falsified", found)
    root = Domains(torch.zeros(1, dtype=torch.long, device=ball.x.device), {})
    best, alpha, beta, last = optimise(chain, ball, boxes, root, prop.C.unsqueeze(0), prop.d.unsqueeze(0),
                                       iterations=settings.root_iterations)
    # the property holds when every group does: each group still open is searched on its own
    # (its rows only: cheaper bounds, and branching aimed at it), the worst first
    margins = prop.groups(best - prop.d)[0]
    count, order = 1, margins.argsort().tolist()
    exact = settings.milp > 0 and milp.available(chain)
    searched = start + settings.timeout * (1 - settings.milp if exact else 1)
    skipped = (["milp: not for this network (a layer too large)"]
               if settings.milp > 0 and not exact else [])
    for k, group in enumerate(order):
        if margins[group] > 0:
            break
        rows = (prop.group == group).nonzero().squeeze(1)
        part = Property(prop.C[rows], prop.d[rows], torch.zeros_like(rows))
        verdict, point, lower, domains, notes = _search(
            chain, ball, boxes, part, best[:, rows], {i: a[rows] for i, a in alpha.items()},
            _branch(chain, boxes, root, {i: w[rows] for i, w in last.outputs.items()}, part, best[:, rows],
                    settings.candidates), settings,
            searched, counterexample)
        count += domains
        if verdict == "unknown" and exact:  # the rest of the time: the group's exact MILP
            status, found, bound = milp.solve(chain, ball, boxes, part, 0, start + settings.timeout)
            notes = [*notes, f"milp: {status}"]
            hit = counterexample(found.unsqueeze(0)) if status == "point" else None
            if status == "proved":
                verdict, lower = "verified", bound
            elif hit is not None:
                verdict, point = "falsified", hit
        if verdict != "verified":  # the margin: this group's, or a later one's not yet searched
            return outcome(verdict, point, min([lower, *margins[order[k + 1:]].tolist()]), count, [*notes, *skipped])
        margins[group] = lower
    return outcome("verified", lower=float(margins.min()), domains=count)


def _search(chain, ball, boxes, prop: Property, lower, alpha, choice, settings: Settings, deadline, counterexample):
    """Branch and bound on one group's rows, from the root's bounds ``lower`` [1, S], slopes
    and branching ``choice``: ``(verdict, counterexample, lower, domains, notes)``."""
    S = len(prop.d)
    C, d = prop.C.unsqueeze(0), prop.d.unsqueeze(0)
    # open domains, held as one batch: splits, α, β, best bounds, the neuron each splits next
    domains = Domains(torch.zeros(1, dtype=torch.long, device=ball.x.device), {})
    beta, count, proved = {}, 0, float("inf")
    width = sum(a.shape[1:].numel() for a in alpha.values()) or 1
    batch = max(1, min(settings.batch, ROWS_BUDGET // (16 * S * width)))  # Adam, autograd: copies per row
    most = settings.max_domains or max(4 * batch, 2**30 // (2 * S * width))
    while len(domains):
        if time.perf_counter() > deadline:
            return "unknown", None, _margin(lower, prop), count, ["timeout"]
        if len(domains) > most:
            return "unknown", None, _margin(lower, prop), count, ["too many domains"]
        order = _group_margin(lower, prop).argsort()
        pick, rest = order[:batch], order[batch:]
        parents, parent_alpha, parent_beta = domains.take(pick), _take(alpha, pick, S), _take(beta, pick, S)
        if (choice[0][pick, 0] < 0).any():
            return "unknown", None, _margin(lower, prop), count, ["a domain with every ReLU split stays open"]
        twice = torch.arange(len(pick), device=pick.device).repeat(2)
        parent_alpha, parent_beta = _take(parent_alpha, twice, S), _take(parent_beta, twice, S)
        children = _smart(chain, ball, boxes, parents, prop, parent_alpha, parent_beta,
                          (choice[0][pick], choice[1][pick]))
        kid_best, kid_alpha, kid_beta, last = optimise(
            chain, ball, boxes, children, C.expand(len(children), -1, -1), d.expand(len(children), -1),
            alpha=parent_alpha, beta=parent_beta, iterations=settings.iterations, floor=lower[pick][twice])
        count += len(children)
        points = primal_points(ball, last.inputs, children.root.repeat_interleave(S))
        hit = counterexample(points)
        if hit is None:  # a few descent steps from the worst domains' minimisers
            worst = _group_margin(kid_best, prop).argsort()[:settings.falsify_restarts]
            rows = (worst.unsqueeze(1) * S + torch.arange(S, device=worst.device)).flatten()
            hit = counterexample(falsify(chain, ball, prop, points[rows], settings.falsify_steps // 4))
        if hit is not None:
            return "falsified", hit, float("-inf"), count, []
        closed = prop.proved(kid_best)
        keep = (~closed).nonzero().squeeze(1)
        proved = min([proved, *_group_margin(kid_best, prop)[closed].tolist()])
        kid_choice = _branch(chain, boxes, children.take(keep), _take(last.outputs, keep, S), prop, kid_best[keep],
                             settings.candidates)
        domains = _concat(domains.take(rest), children.take(keep))
        rows_a, rows_b = len(rest) * S, len(keep) * S
        beta = _cat(_take(beta, rest, S), rows_a, _take(kid_beta, keep, S), rows_b, alpha)
        alpha = _cat(_take(alpha, rest, S), rows_a, _take(kid_alpha, keep, S), rows_b, alpha)
        lower = torch.cat([lower[rest], kid_best[keep]])
        choice = tuple(torch.cat([c[rest], k]) for c, k in zip(choice, kid_choice))
    return "verified", None, proved, count, []


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


def _branch(chain, boxes, domains: Domains, outputs: dict, prop: Property, lower, k: int):
    """Per domain, ``(layers, positions)`` [D, k] of the ``k`` neurons with the largest
    ``-min(w, 0) * (-u l / (u - l))`` summed over the rows not yet proved (layer -1: no
    neuron left), ``w`` a row's coefficients on the ReLU's output (``outputs[i]`` [D*S, ...])."""
    S = lower.shape[1]
    open_rows = (lower <= prop.d).to(lower.dtype)  # [D, S]
    scores, layers = [], []
    for i, w in outputs.items():
        l, u = domain_box(boxes[i], domains, i)
        free = (l < 0) & (u > 0)
        if i in domains.splits:
            free &= domains.splits[i] == 0
        intercept = (-u * l / (u - l).clamp_min(1e-12)) * free
        weight = (-w.clamp_max(0)).view(len(domains), S, *w.shape[1:]) * open_rows.view(len(domains), S, *[1] * (w.dim() - 1))
        score = (weight.sum(1) * intercept + 1e-6 * (u - l) * free).flatten(1)
        scores.append(torch.where(free.flatten(1), score, torch.full_like(score, -1.0)))
        layers.append(torch.full((score.shape[1],), i, dtype=torch.long, device=score.device))
    if not scores:  # no ReLU to split (a chain whose only nonlinearity is relaxed)
        none = torch.full((len(domains), 1), -1, dtype=torch.long, device=lower.device)
        return none, torch.zeros_like(none)
    sizes = torch.tensor([0] + [len(x) for x in layers], device=lower.device).cumsum(0)
    value, index = torch.cat(scores, 1).topk(min(k, int(sizes[-1])), dim=1)
    layer = torch.where(value >= 0, torch.cat(layers)[index], -1)
    return layer, index - sizes[torch.searchsorted(sizes, index, right=True) - 1]


def _smart(chain, ball, boxes, parents: Domains, prop: Property, alpha, beta, candidates) -> Domains:
    """The children of the best of each parent's ``candidates`` ([D, k] layers, positions):
    the one whose two children leave the least margin below zero in one bound pass with the
    parent's own slopes and multipliers ``alpha``, ``beta`` (each already repeated for both
    children)."""
    layers, positions = candidates
    D = len(parents)
    if layers.shape[1] == 1:
        return _split(parents, (layers[:, 0], positions[:, 0]), chain, boxes)
    C = prop.C.unsqueeze(0).expand(2 * D, -1, -1)
    scores = []
    for j in range(layers.shape[1]):
        valid = layers[:, j] >= 0
        choice = (torch.where(valid, layers[:, j], layers[:, 0]), torch.where(valid, positions[:, j], positions[:, 0]))
        found = bound(chain, ball, boxes, _split(parents, choice, chain, boxes), C, alpha, beta).lower
        gap = _group_margin(found, prop).clamp_max(0).view(2, D).sum(0)
        scores.append(torch.where(valid, gap, float("-inf")))
    best = torch.stack(scores, 1).argmax(1, keepdim=True)
    return _split(parents, (layers.gather(1, best)[:, 0], positions.gather(1, best)[:, 0]), chain, boxes)


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
