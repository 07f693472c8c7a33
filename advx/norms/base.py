"""The threat model's contract (``Norm``) and the helpers its norms share; ``advx.norms``
describes it."""

from __future__ import annotations

from typing import Sequence

import torch

from advx import rng

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
    certifiable: bool = True        # bounds over the ball exist (``dual_size``, ``linear_minimum``)

    def budget(self, eps: float) -> float:
        """``eps`` (a number >= 0) checked as a budget of this norm: any for an Lp ball."""
        return eps

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
