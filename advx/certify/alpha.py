"""α-CROWN and β-CROWN: CROWN with optimised ReLU relaxations, on subdomains with split ReLUs.

CROWN bounds an unstable ReLU (l < 0 < u) from below by ``a z`` with a fixed slope ``a``;
*any* ``a`` in [0, 1] gives a sound bound. α-CROWN (Xu et al. 2021, "Fast and complete")
makes ``a`` a parameter per neuron and per bounded row and raises the bound by projected
gradient ascent. Branch and bound (``advx.certify.bab``) splits a ReLU into ``z >= 0`` and
``z <= 0``; β-CROWN (Wang et al. 2021) folds each split constraint ``s z >= 0`` (s = +1
active, -1 inactive) into the bound with a multiplier ``β >= 0``: on the subdomain
``A . h >= A . h - β s z``, so the relaxed minimum of the right side is still a lower
bound of the left, and β is optimised jointly with α.

Sound at every iterate: each bound is computed with α in [0, 1] and β >= 0, and the best
bound seen per row is kept. The start is CROWN's own slopes, so the result is never below
CROWN's final pass. The intermediate (pre-activation) bounds are CROWN's, computed once per
sample (``propagate.layer_boxes``) and clamped by each subdomain's splits.

Rows belong to subdomains (``dom``), subdomains to samples (``root``): one sample's
thousands of subdomains share its boxes and differ only in their splits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from advx.certify.ops import Op, ReLU
from advx.certify.pooling import MaxPool, simplex
from advx.certify.propagate import ROWS_BUDGET, Ball, backward, layer_boxes, margin_spec


@dataclass
class Domains:
    """D subdomains: ``root[d]`` is the sample (index into the ball and the boxes) domain d
    lies in; ``splits[i]`` (int8 [D, *shape], for ReLU ``chain[i]``) is +1 where the domain
    fixes the neuron active (z >= 0), -1 inactive (z <= 0), 0 free."""

    root: torch.Tensor
    splits: dict

    def __len__(self) -> int:
        return len(self.root)

    def take(self, index: torch.Tensor) -> "Domains":
        return Domains(self.root[index], {i: s[index] for i, s in self.splits.items()})


def domain_box(box, domains: Domains, i: int):
    """Bounds [D, *shape] of ReLU ``chain[i]``'s input in each domain: the sample's, with an
    active split raising the lower bound to 0 and an inactive one lowering the upper to 0."""
    l, u = box[0][domains.root], box[1][domains.root]
    split = domains.splits.get(i)
    if split is None:
        return l, u
    return torch.where(split > 0, l.clamp_min(0), l), torch.where(split < 0, u.clamp_max(0), u)


def crown_slopes(l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """CROWN's adaptive lower slope: 1 where u > -l, else 0."""
    return (u > -l).to(l.dtype)


@dataclass
class Bound:
    """One bound pass: ``lower`` [D, S]; ``inputs`` [D*S, *input]: each row's coefficients
    on the input (their minimiser over the box is a candidate counterexample); ``outputs``
    {i: [D*S, *shape]}: each row's coefficients on ReLU ``chain[i]``'s output (branching)."""

    lower: torch.Tensor
    inputs: torch.Tensor
    outputs: dict


def bound(chain: list[Op], ball: Ball, boxes: list, domains: Domains, C: torch.Tensor,
          alpha: dict, beta: dict) -> Bound:
    """Lower bounds of ``C[d] @ output`` [D, S] over every domain d, with lower slopes
    ``alpha[i]`` [D*S, *shape] (used where the neuron is unstable, clamped into [0, 1]),
    for a MaxPool ``chain[i]`` its relaxation's parameters ``alpha[i]`` (``MaxPool.relax``),
    and split multipliers ``beta[i]`` [D*S, *shape] (>= 0; used where the neuron is split)."""
    D, S = C.shape[:2]
    dom = torch.arange(D, device=C.device).repeat_interleave(S)
    owner = domains.root[dom]  # row -> sample
    A = C.reshape(D * S, *C.shape[2:]).to(ball.x.dtype)
    bias = torch.zeros(D * S, dtype=A.dtype, device=A.device)
    outputs = {}
    for i in reversed(range(len(chain))):
        op = chain[i]
        if isinstance(op, MaxPool) and i in alpha:
            l, u = boxes[i]
            A = op.backward_with(A, bias, *op.relax(l[owner], u[owner], alpha[i]))
            continue
        if not isinstance(op, ReLU):
            A = op.backward(A, owner, bias)
            continue
        outputs[i] = A
        l, u = domain_box(boxes[i], domains, i)
        unstable, active = (l < 0) & (u > 0), (l >= 0).to(l.dtype)
        chord = torch.where(unstable, u / (u - l).clamp_min(1e-12), active)
        offset = torch.where(unstable, -chord * l, torch.zeros_like(l))
        slope = torch.where(unstable[dom], slopes(alpha[i]), active[dom])
        pos, neg = A.clamp_min(0), A.clamp_max(0)
        bias = bias + (neg * offset[dom]).flatten(1).sum(1)
        A = pos * slope + neg * chord[dom]
        split = domains.splits.get(i)
        if split is not None and i in beta:
            A = A + split_term(beta[i], split[dom].to(A.dtype))
    lower = bias + ball.minimum(A, owner)
    return Bound(lower.view(D, S), A, outputs)


def slopes(alpha: torch.Tensor) -> torch.Tensor:
    """The lower slopes the bound uses: α projected into [0, 1] (any such slope is sound)."""
    return _clamped(alpha, 0, 1)


def split_term(beta: torch.Tensor, split: torch.Tensor) -> torch.Tensor:
    """The split constraints' coefficients on z: ``-β s`` with β >= 0, so that the added
    term ``-β s z`` is <= 0 on every point of the domain (there ``s z >= 0``)."""
    return -_clamped(beta, 0, None) * split


def _clamped(p: torch.Tensor, low, high) -> torch.Tensor:
    """``p`` clamped (the value the bound uses: always sound), with the gradient of ``p``
    itself (torch's clamp has none at the ends, where CROWN's slopes 0 and 1 start)."""
    return p + (p.clamp(low, high) - p).detach()


def ibp_fold(chain: list[Op], ball: Ball, boxes: list, domains: Domains, C: torch.Tensor) -> torch.Tensor:
    """IBP's bound of ``C @ output`` [D, S] (the spec folded into the last affine op), from
    the sample's boxes: sound on every domain of the sample."""
    D, S = C.shape[:2]
    if not chain or not chain[-1].affine:
        return torch.full((D, S), float("-inf"), device=C.device)
    owner = domains.root.repeat_interleave(S)
    A = C.reshape(D * S, *C.shape[2:]).to(ball.x.dtype)
    return backward(chain, len(chain), len(chain) - 1, A, owner, ball, boxes).view(D, S)


def initial_alpha(chain: list[Op], boxes: list, domains: Domains, S: int) -> dict:
    """CROWN's slopes for every ReLU and CROWN's relaxation of every MaxPool, one row per
    bounded row."""
    dom = torch.arange(len(domains), device=domains.root.device).repeat_interleave(S)
    alpha = {}
    for i, op in enumerate(chain):
        if isinstance(op, ReLU):
            l, u = domain_box(boxes[i], domains, i)
            alpha[i] = crown_slopes(l, u)[dom].clone()
        elif isinstance(op, MaxPool):
            l, u = boxes[i]
            alpha[i] = op.initial(l, u).detach()[domains.root[dom]]
    return alpha


def project(chain: list[Op], alpha: dict) -> None:
    """Put every parameter back into its feasible set, in place: a ReLU's slopes into
    [0, 1], a MaxPool's weights λ onto the simplex (its t is clipped where it is used)."""
    for i, a in alpha.items():
        if isinstance(chain[i], MaxPool):
            a[..., :-1] = simplex(a[..., :-1])
        else:
            a.clamp_(0, 1)


def optimise(chain: list[Op], ball: Ball, boxes: list, domains: Domains, C: torch.Tensor,
             threshold: torch.Tensor, *, alpha: dict | None = None, beta: dict | None = None,
             iterations: int = 20, lr_alpha: float = 0.1, lr_beta: float = 0.05,
             floor: torch.Tensor | None = None, stop=None):
    """Raise the lower bounds of ``C @ output`` by projected Adam on α (and β on split
    neurons) for at most ``iterations`` steps; a domain stops counting once every row's
    bound exceeds ``threshold`` [D, S] (all stop: early exit). Returns ``(best, alpha, beta,
    last)``: ``best`` [D, S] the largest bound seen per row (each one sound), at least
    ``floor``; ``last`` the last pass's ``Bound``, detached (its coefficients: branching and
    candidate counterexamples)."""
    D, S = C.shape[:2]
    alpha = initial_alpha(chain, boxes, domains, S) if alpha is None else {i: a.clone() for i, a in alpha.items()}
    beta = {} if beta is None else {i: b.clone() for i, b in beta.items()}
    for i in domains.splits:
        beta.setdefault(i, torch.zeros_like(alpha[i]))
    best = ibp_fold(chain, ball, boxes, domains, C).detach()
    if floor is not None:
        best = torch.maximum(best, floor)
    params = list(alpha.values()) + list(beta.values())
    if not params:  # no ReLU: CROWN's pass is exact
        last = bound(chain, ball, boxes, domains, C, alpha, beta)
        return torch.maximum(best, last.lower.detach()), alpha, beta, last
    rates = [lr_alpha] * len(alpha) + [lr_beta] * len(beta)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    for step in range(iterations + 1):
        settled = (best > threshold).all(1) if stop is None else stop(best, threshold)
        open_rows = ~settled.view(D, 1).expand(D, S)
        if step and not open_rows.any():  # the first pass always runs: never below CROWN
            break
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            last = bound(chain, ball, boxes, domains, C, alpha, beta)
            found = last.lower
            best = torch.maximum(best, found.detach())
            if step == iterations:
                break
            objective = found[open_rows].sum() if open_rows.any() else found.sum()
            grads = torch.autograd.grad(objective, params, allow_unused=True)
        with torch.no_grad():
            for p, g, rate, (m, v) in zip(params, grads, rates, moments):
                if g is None:
                    continue
                m.mul_(0.9).add_(g, alpha=0.1)
                v.mul_(0.999).addcmul_(g, g, value=0.001)
                t = step + 1
                p.add_(rate * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8))  # ascent
        for p in params:
            p.requires_grad_(False)
        project(chain, alpha)
        for b in beta.values():
            b.clamp_(min=0)
    for p in params:
        p.requires_grad_(False)
    last = Bound(last.lower.detach(), last.inputs.detach(), {i: w.detach() for i, w in last.outputs.items()})
    return best, alpha, beta, last


def primal_points(ball: Ball, inputs: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Each row's minimiser of ``inputs[r] . x`` over the box of sample ``owner[r]``,
    projected into the ball: candidate counterexamples (checked, never trusted)."""
    l, u = ball.box()
    point = torch.where(inputs > 0, l[owner], u[owner])
    if not ball.norm.ball_is_box:
        point = ball.norm.project(point, ball.x[owner], ball.eps, (ball.lower, ball.upper))
    return point


def margins(chain: list[Op], ball: Ball, y: torch.Tensor, classes: int, *, iterations: int = 20,
            intermediate: int = 0) -> torch.Tensor:
    """α-CROWN's lower bounds [N, K] of ``z_y - z_j`` (``+inf`` at j = y) for every sample
    of ``ball``: CROWN's intermediate bounds, the final pass's slopes optimised per margin
    (samples in chunks of about ``ROWS_BUDGET`` floats of slopes); with ``intermediate`` > 0,
    α-CROWN's intermediate bounds too, for up to that many neurons per layer and sample."""
    width = sum(_numel(op.in_shape) for op in chain if isinstance(op, ReLU)) or 1
    chunk = max(1, ROWS_BUDGET // (width * (classes - 1)))
    parts = []
    for s in range(0, len(y), chunk):
        part = Ball(ball.x[s:s + chunk], ball.eps, ball.norm, ball.lower, ball.upper)
        parts.append(_margins(chain, part, y[s:s + chunk], classes, iterations, intermediate))
    return torch.cat(parts) if parts else torch.zeros(0, classes)


def refined_boxes(chain: list[Op], ball: Ball, *, iterations: int = 20, max_rows: int = 256,
                  deadline: float = float("inf")) -> list:
    """``propagate.layer_boxes`` with α-CROWN's intermediate bounds: the unstable inputs of
    a ReLU that has a ReLU below it are bounded by ``optimise`` on the chain below it (its own
    slopes per bound), layer by layer, each layer's boxes feeding the next. Per sample and
    layer at most ``max_rows`` neurons, those whose relaxation is widest (-l u / (u - l)):
    the cost stays bounded on wide convolutional layers; the others keep CROWN's bounds, as do
    the layers reached after ``deadline`` (a ``time.perf_counter()`` value)."""
    def refine(i, l, u, boxes):
        if (not any(isinstance(op, ReLU) for op in chain[:i]) or not iterations or not max_rows
                or time.perf_counter() > deadline):
            return l, u
        flat_l, flat_u = l.flatten(1).clone(), u.flatten(1).clone()
        width = torch.where((flat_l < 0) & (flat_u > 0), -flat_l * flat_u / (flat_u - flat_l).clamp_min(1e-12),
                            torch.zeros_like(flat_l))
        top = width.topk(min(max_rows, width.shape[1]), dim=1)
        keep = top.values > 0
        sample = torch.arange(len(flat_l), device=l.device).unsqueeze(1).expand_as(keep)[keep]
        position = top.indices[keep]
        size = sum(_numel(op.in_shape) for op in chain[:i] if isinstance(op, ReLU)) + flat_l.shape[1]
        chunk = max(1, ROWS_BUDGET // (8 * size))  # Adam's moments and autograd: a few copies per row
        for s in range(0, len(sample), chunk):
            rows_s, rows_p = sample[s:s + chunk], position[s:s + chunk]
            R = len(rows_s)
            C = torch.zeros(R, 2, flat_l.shape[1], dtype=l.dtype, device=l.device)
            C[torch.arange(R), 0, rows_p] = 1.0   # lower bound of z_p
            C[torch.arange(R), 1, rows_p] = -1.0  # lower bound of -z_p: minus an upper bound
            C = C.view(R, 2, *l.shape[1:])
            known = torch.stack([flat_l[rows_s, rows_p], -flat_u[rows_s, rows_p]], 1)
            best, *_ = optimise(chain[:i], ball, boxes, Domains(rows_s, {}), C, torch.zeros_like(known),
                                  iterations=iterations, floor=known, stop=_crossed)
            flat_l[rows_s, rows_p] = best[:, 0]
            flat_u[rows_s, rows_p] = -best[:, 1]
        return flat_l.view_as(l), flat_u.view_as(u)

    return layer_boxes(chain, ball, "crown", refine=refine)


def _crossed(best: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """[D] an intermediate neuron is settled once either bound crosses 0 (it is stable)."""
    return (best > threshold).any(1)


def _margins(chain, ball, y, classes, iterations, intermediate):
    N = len(y)
    boxes = (refined_boxes(chain, ball, iterations=iterations, max_rows=intermediate) if intermediate
             else layer_boxes(chain, ball, "crown"))
    others = torch.ones(N, classes, dtype=torch.bool, device=y.device)
    others[torch.arange(N), y] = False
    C = margin_spec(y, classes)[others].view(N, classes - 1, classes)
    domains = Domains(torch.arange(N, device=y.device), {})
    best, *_ = optimise(chain, ball, boxes, domains, C, torch.zeros(N, classes - 1, device=y.device),
                          iterations=iterations)
    found = torch.full((N, classes), float("inf"), device=y.device)
    found[others] = best.flatten()
    return found


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
