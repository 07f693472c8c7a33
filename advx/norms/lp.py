"""The Lp balls: Linf, L2 and L1."""

from __future__ import annotations

import math

import torch

from advx import rng
from advx.norms.base import TINY, Norm, _radius, per_sample, solve_piecewise
from advx.validate import InputError


class Linf(Norm):
    name, label, dual, ball_is_box = "inf", "Linf", 1.0, True

    def diameter(self, shape, bounds):
        return float(bounds[1] - bounds[0])

    def size(self, delta):
        return delta.flatten(1).abs().amax(1)

    def random_start(self, x, eps, generator):
        noise = rng.rand(x.shape, generator, device=x.device, dtype=x.dtype)
        return x + (2 * noise - 1) * eps

    def direction(self, grad):
        return grad.sign()

    def _project_ball(self, delta, eps):
        eps = per_sample(eps, delta)
        return torch.max(torch.min(delta, eps), -eps)

    def _to_hyperplane(self, w, c, cap):
        # |delta_i| = min(t, cap_i): the largest coordinate t as small as it can be
        t = solve_piecewise(w.abs(), torch.zeros_like(w), cap, c)
        return torch.minimum(t.to(w.dtype).unsqueeze(1), cap) * (w != 0)


class L2(Norm):
    name, label, dual = "2", "L2", 2.0
    exact_projection = False  # the ball's projection, then the box's (as every library does)

    def diameter(self, shape, bounds):
        return float(bounds[1] - bounds[0]) * math.sqrt(math.prod(shape))

    def size(self, delta):
        return delta.flatten(1).norm(p=2, dim=1)

    def random_start(self, x, eps, generator):
        # Uniform in the ball: a Gaussian direction, radius eps * U^(1/d).
        d = x[0].numel()
        direction = rng.randn(x.shape, generator, device=x.device, dtype=x.dtype)
        direction = direction / per_sample(direction.flatten(1).norm(dim=1).clamp_min(TINY), x)
        u = rng.rand((len(x),), generator, device=x.device, dtype=x.dtype)
        return x + direction * per_sample(eps * u.pow(1.0 / d), x)

    def direction(self, grad):
        return grad / per_sample(grad.flatten(1).norm(dim=1).clamp_min(TINY), grad)

    def _project_ball(self, delta, eps):
        norms = delta.flatten(1).norm(dim=1).clamp_min(TINY)
        return delta * per_sample(torch.clamp(eps / norms, max=1.0), delta)

    def _to_hyperplane(self, w, c, cap):
        # |delta_i| = min(s * |w_i|, cap_i) for the s that meets the hyperplane
        a = w.abs()
        s = solve_piecewise(a * a, torch.zeros_like(a), cap / a.clamp_min(TINY), c)
        return torch.minimum(s.to(w.dtype).unsqueeze(1) * a, cap)


class L1(Norm):
    """L1: sparse perturbations (a few pixels changed a lot). ``sparsity``: the share of the
    coordinates that ``direction`` moves (the largest gradients), after Tramer & Boneh (2019)."""

    name, label, dual, sparse = "1", "L1", math.inf, True

    def __init__(self, sparsity: float = 0.05) -> None:
        if not 0 < sparsity <= 1:
            raise InputError(f"sparsity must be in (0, 1], got {sparsity!r}")
        self.sparsity = float(sparsity)

    def __repr__(self) -> str:
        return f"L1(sparsity={self.sparsity:g})"

    def diameter(self, shape, bounds):
        return float(bounds[1] - bounds[0]) * math.prod(shape)

    def size(self, delta):
        return delta.flatten(1).abs().sum(1)

    def random_start(self, x, eps, generator):
        # Uniform in the ball: d + 1 exponential draws E, the point sign * E_i / sum(E) (Dirichlet).
        d = x[0].numel()
        e = -torch.log1p(-rng.rand((len(x), d + 1), generator, device=x.device, dtype=torch.float64))
        signs = 2 * (rng.rand((len(x), d), generator, device=x.device, dtype=x.dtype) > 0.5).to(x.dtype) - 1
        point = (e[:, :d] / e.sum(1, keepdim=True)).to(x.dtype) * signs
        return x + eps * point.view_as(x)

    def direction(self, grad, sparsity: torch.Tensor | float | None = None):
        """Sign of the gradient on the top ``sparsity`` share (default ``self.sparsity``, or [N]
        per sample) of its coordinates by magnitude, scaled to unit L1 norm."""
        flat = grad.flatten(1)
        d = flat.shape[1]
        share = _radius(self.sparsity if sparsity is None else sparsity, flat)
        k = (share * d).ceil().clamp(1, d).long()
        kth = flat.abs().sort(1, descending=True).values.gather(1, (k - 1).unsqueeze(1))
        top = (flat.abs() >= kth) & (flat != 0)
        step = flat.sign() * top
        return (step / step.abs().sum(1, keepdim=True).clamp_min(1)).view_as(grad)

    def direction_in_box(self, grad, x_adv, bounds, sparsity=None):
        # A pixel on the bound that the gradient pushes outwards would take a share of the
        # step that the box then clips away ("Mind the box", Croce & Hein 2021): leave it out.
        blocked = ((x_adv >= bounds[1]) & (grad > 0)) | ((x_adv <= bounds[0]) & (grad < 0))
        return self.direction(grad.masked_fill(blocked, 0), sparsity)

    def project(self, x_adv, x, eps, bounds=None):
        delta = (x_adv - x).flatten(1)
        a = delta.abs()
        if bounds is None:
            cap = torch.full_like(a, math.inf)
        else:  # how far each coordinate may move in its own direction within the box
            cap = torch.where(delta > 0, bounds[1] - x.flatten(1), x.flatten(1) - bounds[0]).clamp_min(0)
        a_cap = torch.minimum(a, cap)
        eps = _radius(eps, x)
        over = a_cap.sum(1) > eps
        if over.any():
            # |delta_i| = clamp(|delta_i| - lam, 0, cap_i), lam >= 0 with sum = eps: in u = -lam,
            # sum_i clamp(u, -a_i, cap_i - a_i) + a_i = eps, a non-decreasing piecewise linear sum.
            ao, co = a[over], a_cap[over]
            finite_cap = torch.minimum(co, ao)  # the same sums, with no infinite breakpoint
            u = solve_piecewise(torch.ones_like(ao), -ao, finite_cap - ao, eps[over])
            shrunk = (ao + u.to(ao.dtype).unsqueeze(1)).clamp_min(0)
            a_cap[over] = torch.minimum(shrunk, co)
        out = a_cap * delta.sign()
        # rounding: never leave the ball (scaling towards x stays in the box)
        out = x + (out * torch.clamp(eps / out.abs().sum(1).clamp_min(TINY), max=1.0).unsqueeze(1)).view_as(x)
        return out if bounds is None else out.clamp(*bounds)  # x + (high - x) may round past high

    def _to_hyperplane(self, w, c, cap):
        # Fractional knapsack: fill the coordinates with the largest |w_i| up to their caps.
        a = w.abs()
        a_sorted, order = a.sort(1, descending=True)
        reach = (a_sorted * cap.gather(1, order)).cumsum(1)  # w . delta with the first j filled
        before = torch.cat([torch.zeros_like(reach[:, :1]), reach[:, :-1]], 1)
        part = ((c.unsqueeze(1) - before) / a_sorted.clamp_min(TINY)).clamp_min(0)
        fill = torch.minimum(part, cap.gather(1, order)) * (a_sorted > 0)
        return torch.zeros_like(w).scatter(1, order, fill)
