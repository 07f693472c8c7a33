"""The threat model as an object (after Foolbox 3): one attack loop, norms fill in the geometry.

Each norm gives, per sample of a batch [N, C, H, W]:
- ``size(delta)``: the perturbation's norm, shape [N];
- ``random_start(x, eps, generator)``: a random point of the eps-ball around ``x``
  (``generator``: a ``torch.Generator`` or an ``advx.rng.SampleRNG``);
- ``direction(grad)``: the steepest-ascent direction of unit norm (sign for Linf, grad/||grad||_2 for L2,
  sign on the largest ``sparsity`` share of the coordinates for L1);
- ``project(x_adv, x, eps, bounds=None)``: the nearest point of the eps-ball around ``x``; with
  the pixel box ``bounds``, a point of both: the nearest one for Linf and L1 (for L1 that is
  what keeps a sparse attack inside the box, Croce & Hein 2021), the ball's then the box's
  for L2 (as every library does);
- ``to_hyperplane(w, c, lower, upper)``: the smallest ``delta`` with ``w . delta = c`` and
  ``lower <= delta <= upper`` (what FAB steps to), exact, by sorting;
and, for reports and for attacks that reason about the geometry:
- ``label``: how people write it ("Linf", "L2", "L1");
- ``dual``: the exponent q of the dual norm (1 for Linf, 2 for L2, inf for L1), and
  ``dual_size(w)``: ``||w||_q``, how much a linear function ``w . delta`` changes at most
  inside the unit ball; ``linear_minimum(A, x, eps)``: the minimum of ``A . h`` over the
  ball around ``x`` (what certification's bounds end with, as auto_LiRPA's perturbation
  objects answer it);
- ``ball_is_box``: the ball is the box ``[x - eps, x + eps]`` (Linf), so a bound over that
  box is exact; ``exact_projection``: ``project`` with ``bounds`` is the nearest point of
  ball and box (Linf, L1) rather than the ball's then the box's (L2);
- ``diameter(shape, bounds)``: the largest distance between two images of that shape in
  the pixel box, i.e. a budget that never binds.
Without ``bounds``, clipping to the pixel box is done by the attack. This is the only
module that knows a norm by its name.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

from advx import rng
from advx.validate import InputError

TINY = 1e-12  # guards every division by a norm or a spread that may be 0


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [N] tensor viewed as [N, 1, ..., 1], to broadcast over a batch ``like`` [N, ...]."""
    return values.view((-1,) + (1,) * (like.dim() - 1))


class Norm:
    name: str = ""
    label: str = ""
    dual: float = 0.0
    sparse: bool = False    # steps move a share of the coordinates (``direction_in_box``)
    ball_is_box: bool = False       # the ball is the box [x - eps, x + eps]
    exact_projection: bool = True   # project(..., bounds) is the nearest point of ball and box

    def dual_size(self, w: torch.Tensor) -> torch.Tensor:
        """``||w||_q`` over the last dimension of ``w`` (q the dual exponent), e.g. [R, D] -> [R]:
        ``w . delta`` changes by at most ``eps * ||w||_q`` inside the ball of radius eps."""
        return torch.linalg.vector_norm(w, ord=self.dual, dim=-1)

    def linear_minimum(self, A: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        """Per row r of ``A`` [R, ...]: the minimum of ``A[r] . h`` over the ball of radius
        ``eps`` around ``x[r]``, ``A[r] . x[r] - eps * ||A[r]||_q`` (exact, without the pixel box)."""
        return (A * x).flatten(1).sum(1) - eps * self.dual_size(A.flatten(1))

    def diameter(self, shape: Sequence[int], bounds: tuple[float, float]) -> float:
        """The largest distance between two images of ``shape`` (one sample, e.g. [1, 28, 28])
        with pixels in ``bounds``."""
        raise NotImplementedError

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def random_start(self, x: torch.Tensor, eps: float, generator: rng.Generator) -> torch.Tensor:
        raise NotImplementedError

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def direction_in_box(self, grad: torch.Tensor, x_adv: torch.Tensor, bounds: tuple[float, float],
                         sparsity=None) -> torch.Tensor:
        """``direction``, for a step from ``x_adv`` that the box ``bounds`` will clip; a sparse
        norm leaves out the coordinates the box would clip away (and takes ``sparsity``)."""
        return self.direction(grad)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps, bounds=None) -> torch.Tensor:
        """The nearest point to ``x_adv`` of the ball of radius ``eps`` (a number, or [N] per
        sample) around ``x``, and of the box ``bounds`` when given."""
        eps = _radius(eps, x)
        out = self._project_ball(x_adv - x, eps) + x
        return out if bounds is None else out.clamp(*bounds)

    def _project_ball(self, delta, eps):
        raise NotImplementedError

    def to_hyperplane(self, w: torch.Tensor, c: torch.Tensor, lower: torch.Tensor,
                      upper: torch.Tensor) -> torch.Tensor:
        """Per row of ``w`` [R, D]: the ``delta`` of smallest norm with ``w . delta = c[r]`` and
        ``lower <= delta <= upper`` (``lower <= 0 <= upper``). Where the box cannot reach the
        hyperplane, the point of the box that comes closest (every coordinate at its cap)."""
        sign = torch.where(c < 0, -1.0, 1.0).to(w.dtype).unsqueeze(1)
        w, c = w * sign, c.abs()  # now c >= 0: move along +w
        cap = torch.where(w > 0, upper, -lower).clamp_min(0)  # how far each coordinate may go along sign(w)
        delta = self._to_hyperplane(w, c, cap)  # the same delta: (sign w) . delta = |c| <=> w . delta = c
        return delta * torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    def _to_hyperplane(self, w, c, cap):
        """``|delta|`` per coordinate for ``c >= 0``; the sign of ``w`` is applied by the caller."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:  # the same threat model: the same class and settings
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self), tuple(sorted(vars(self).items()))))


def _radius(eps, x: torch.Tensor) -> torch.Tensor:
    """``eps`` (a number or [N]) as [N] on ``x``'s device and dtype."""
    eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    return eps.expand(len(x)) if eps.dim() == 0 else eps


def solve_piecewise(m: torch.Tensor, p: torch.Tensor, q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row r, a ``t`` with ``H(t) = sum_i m_i * (clamp(t, p_i, q_i) - p_i) = target[r]``
    (``m >= 0``, ``p <= q``), exactly, by sorting the 2D breakpoints: ``H`` is piecewise linear
    and non-decreasing from 0 (``t <= min p``) to ``sum m (q - p)``, reached at ``max q``; a
    target beyond that gives ``max q``. Computed in float64."""
    m, p, q, target = m.double(), p.double(), q.double(), target.double()
    points = torch.cat([p, q], 1)
    change = torch.cat([m, -m], 1)  # slope change at each breakpoint
    points, order = points.sort(1)
    slope = change.gather(1, order).cumsum(1)  # slope of H on [points_j, points_j+1]
    values = torch.cat([torch.zeros_like(points[:, :1]), (slope[:, :-1] * points.diff(dim=1)).cumsum(1)], 1)
    j = (values <= target.unsqueeze(1)).sum(1).clamp_min(1) - 1  # the last breakpoint with H <= target
    at, base, rate = (t.gather(1, j.unsqueeze(1)).squeeze(1) for t in (points, values, slope))
    t = torch.where(rate > 0, at + (target - base) / rate.clamp_min(TINY), at)
    return torch.minimum(t, points[:, -1])


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


NORMS = {"inf": Linf, "linf": Linf, "Linf": Linf, "2": L2, "l2": L2, "L2": L2, "1": L1, "l1": L1, "L1": L1}
NORM_NAMES = ["inf", "2", "1"]  # what the CLI offers


def get_norm(norm: str | Norm) -> Norm:
    """``"inf"`` / ``"linf"`` -> ``Linf()``, ``"2"`` / ``"l2"`` -> ``L2()``, ``"1"`` / ``"l1"`` -> ``L1()``;
    a ``Norm`` passes through."""
    if isinstance(norm, Norm):
        return norm
    given = norm
    if isinstance(norm, numbers.Real) and not isinstance(norm, bool):  # 2, 2.0, math.inf, numpy
        norm = {1.0: "1", 2.0: "2", math.inf: "inf"}.get(float(norm), given)
    if not isinstance(norm, str) or norm not in NORMS:
        raise InputError(f"norm must be one of 'inf', '2', '1' (or a Norm object), got {given!r}")
    return NORMS[norm]()
