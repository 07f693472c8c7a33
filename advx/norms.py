"""The threat model as an object (after Foolbox 3): one attack loop, norms fill in the geometry.

Each norm gives, per sample of a batch [N, C, H, W]:
- ``size(delta)``: the perturbation's norm, shape [N];
- ``random_start(x, eps, generator)``: a random point of the eps-ball around ``x``
  (``generator``: a ``torch.Generator`` or an ``advx.rng.SampleRNG``);
- ``direction(grad)``: the steepest-ascent direction of unit norm (sign for Linf, grad/||grad||_2 for L2);
- ``project(x_adv, x, eps)``: the nearest point of the eps-ball around ``x``;
and, for reports and for attacks that reason about the geometry:
- ``label``: how people write it ("Linf", "L2");
- ``dual``: the exponent q of the dual norm (1 for Linf, 2 for L2): a linear function
  ``w . delta`` changes by at most ``eps * ||w||_q`` inside the ball;
- ``diameter(shape, bounds)``: the largest distance between two images of that shape in
  the pixel box, i.e. a budget that never binds.
Clipping to the pixel bounds is done by the attack, not here. This is the only module
that knows a norm by its name.
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

    def project(self, x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Linf(Norm):
    name, label, dual = "inf", "Linf", 1.0

    def diameter(self, shape, bounds):
        return float(bounds[1] - bounds[0])

    def size(self, delta):
        return delta.flatten(1).abs().amax(1)

    def random_start(self, x, eps, generator):
        noise = rng.rand(x.shape, generator, device=x.device, dtype=x.dtype)
        return x + (2 * noise - 1) * eps

    def direction(self, grad):
        return grad.sign()

    def project(self, x_adv, x, eps):
        return torch.max(torch.min(x_adv, x + eps), x - eps)


class L2(Norm):
    name, label, dual = "2", "L2", 2.0

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

    def project(self, x_adv, x, eps):
        delta = x_adv - x
        norms = delta.flatten(1).norm(dim=1).clamp_min(TINY)
        return x + delta * per_sample(torch.clamp(eps / norms, max=1.0), delta)


NORMS = {"inf": Linf, "linf": Linf, "Linf": Linf, "2": L2, "l2": L2, "L2": L2}
NORM_NAMES = sorted({cls.name for cls in NORMS.values()})  # "2", "inf": what the CLI offers


def get_norm(norm: str | Norm) -> Norm:
    """``"inf"`` / ``"linf"`` -> ``Linf()``, ``"2"`` / ``"l2"`` -> ``L2()``; a ``Norm`` passes through."""
    if isinstance(norm, Norm):
        return norm
    given = norm
    if isinstance(norm, numbers.Real) and not isinstance(norm, bool):  # 2, 2.0, math.inf, numpy
        norm = {2.0: "2", math.inf: "inf"}.get(float(norm), given)
    if not isinstance(norm, str) or norm not in NORMS:
        raise InputError(f"norm must be one of 'inf', '2' (or a Norm object), got {given!r}")
    return NORMS[norm]()
