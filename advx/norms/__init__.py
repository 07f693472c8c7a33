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
- ``label``: how people write it ("Linf", "L2", "L1", "L0");
- ``dual``: the exponent q of the dual norm (1 for Linf, 2 for L2, inf for L1), and
  ``dual_size(w)``: ``||w||_q``, how much a linear function ``w . delta`` changes at most
  inside the unit ball; ``linear_minimum(A, x, eps)``: the minimum of ``A . h`` over the
  ball around ``x`` (what certification's bounds end with, as auto_LiRPA's perturbation
  objects answer it);
- ``ball_is_box``: the ball is the box ``[x - eps, x + eps]`` (Linf), so a bound over that
  box is exact; ``exact_projection``: ``project`` with ``bounds`` is the nearest point of
  ball and box (Linf, L1) rather than the ball's then the box's (L2);
- ``diameter(shape, bounds)``: the largest distance between two images of that shape in
  the pixel box, i.e. a budget that never binds; ``budget(eps)``: ``eps`` checked for the
  norm (L0's is a whole number of pixels).
Without ``bounds``, clipping to the pixel box is done by the attack.

L0 (``advx.norms.l0``) counts changed pixels (patches, ``advx.norms.patch``, and frames,
``advx.norms.frame``, are its kin): it has ``size``, ``random_start``, ``project``
and ``diameter``, but no dual norm, steepest direction or hyperplane step (those raise), and
``certifiable`` is False: no bound propagation covers it. The Lp balls are in
``advx.norms.lp``, the contract in ``advx.norms.base``. This package is the only place that
knows a norm by its name.
"""

from __future__ import annotations

import math
import numbers

from advx.norms.base import TINY, Norm, per_sample, solve_piecewise
from advx.norms.frame import Frame
from advx.norms.l0 import L0
from advx.norms.patch import Patch
from advx.norms.lp import L1, L2, Linf
from advx.validate import InputError

__all__ = ["TINY", "Norm", "per_sample", "solve_piecewise", "Linf", "L2", "L1", "L0", "Patch", "Frame", "NORMS",
           "NORM_NAMES", "get_norm"]

NORMS = {"inf": Linf, "linf": Linf, "Linf": Linf, "2": L2, "l2": L2, "L2": L2, "1": L1, "l1": L1, "L1": L1,
         "0": L0, "l0": L0, "L0": L0, "patch": Patch, "frame": Frame}
NORM_NAMES = ["inf", "2", "1", "0", "patch", "frame"]  # what the CLI offers


def get_norm(norm: str | Norm) -> Norm:
    """``"inf"`` / ``"linf"`` -> ``Linf()``, ``"2"`` / ``"l2"`` -> ``L2()``, ``"1"`` / ``"l1"`` -> ``L1()``,
    ``"0"`` / ``"l0"`` -> ``L0()``, ``"patch"`` -> ``Patch()``, ``"frame"`` -> ``Frame()``; a ``Norm``
    passes through."""
    if isinstance(norm, Norm):
        return norm
    given = norm
    if isinstance(norm, numbers.Real) and not isinstance(norm, bool):  # 2, 2.0, math.inf, numpy
        norm = {0.0: "0", 1.0: "1", 2.0: "2", math.inf: "inf"}.get(float(norm), given)
    if not isinstance(norm, str) or norm not in NORMS:
        raise InputError(f"norm must be one of 'inf', '2', '1', '0', 'patch', 'frame' (or a Norm object), "
                         f"got {given!r}")
    return NORMS[norm]()
