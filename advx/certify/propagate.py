"""Bound propagation over a chain of ops: IBP, CROWN-IBP and CROWN.

The input set is the eps-ball around each image (an ``advx.norms.Norm``: Linf, L2 or L1)
intersected with the pixel box. The quantity bounded is the *margin* ``z_y - z_j`` for every class j: the
specification is folded into the last affine layer (for IBP as well), which is much
tighter than bounding the logits one by one.

- ``"ibp"``: intervals layer by layer; the last layer's margins from the folded weights.
- ``"crown-ibp"``: IBP for the intermediate layers, one CROWN backward pass for the margins.
- ``"crown"``: every intermediate bound an unstable ReLU needs is also a CROWN backward
  pass (from that layer down to the input), intersected with IBP's; then the margins.

CROWN is not always tighter than IBP (on IBP-trained models it can be looser), so both
CROWN methods return, per margin, the larger of their bound and the IBP-style bound of
the same boxes: a sample IBP certifies, CROWN certifies too.

Everything here is sound: each bound holds for every point of the input set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from advx.certify import patches
from advx.certify.ops import Op, ReLU
from advx.norms import Linf, Norm
from advx.validate import InputError

BOUNDS = ("ibp", "crown-ibp", "crown")  # computed here
METHODS = BOUNDS + ("alpha-crown", "bab")  # advx.certify.alpha, advx.certify.bab
ROWS_BUDGET = 2**25  # floats in one CROWN chunk of rows (about 128 MB)


@dataclass
class Ball:
    """The eps-ball in ``norm`` around ``x`` [N, ...] within the pixel box."""

    x: torch.Tensor
    eps: float
    norm: Norm = field(default_factory=Linf)
    lower: float = 0.0
    upper: float = 1.0

    def box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A box holding the set (for L2 and L1: the Linf box of the same eps, a superset)."""
        return (self.x - self.eps).clamp(self.lower, self.upper), (self.x + self.eps).clamp(self.lower, self.upper)

    def minimum(self, A: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """A lower bound, tight for Linf, of ``A[r] . x`` over the set of sample ``owner[r]``."""
        l, u = self.box()
        best = box_minimum(A, l[owner], u[owner])
        if not self.norm.ball_is_box:  # the ball alone, without the pixel box: also sound, take the better
            best = torch.maximum(best, self.norm.linear_minimum(A, self.x[owner], self.eps))
        return best


def box_minimum(A: torch.Tensor, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """min of ``A[r] . h`` over ``l[r] <= h <= u[r]`` (attained at a corner)."""
    center, radius = (u + l) / 2, (u - l) / 2
    return ((A * center) - A.abs() * radius).flatten(1).sum(1)


def first_layer(prefix: list[Op], op: Op, ball: Ball, l, u):
    """Bounds after ``op`` whose input has the box ``[l, u]``; for a ball that is not a box
    (L2, L1), when only reshapes come before it (they keep the norm), the exact bound of an
    affine op over the ball too: ``W x +- eps ||W_i||_q``, intersected with the box's."""
    l, u = op.interval(l, u)
    if not ball.norm.ball_is_box and op.affine and all(p.name == "Reshape" for p in prefix):
        x = ball.x
        for p in prefix:
            x = p.forward(x)
        center, radius = op.forward(x), ball.eps * op.row_norms(ball.norm.dual)
        l, u = torch.maximum(l, center - radius), torch.minimum(u, center + radius)
    return l, u


def margin_spec(y: torch.Tensor, classes: int) -> torch.Tensor:
    """C [N, K, K] with row j = e_y - e_j: ``C @ z`` are the margins (row y is 0)."""
    eye = torch.eye(classes, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def backward(chain: list[Op], start: int, stop: int, A: torch.Tensor, owner: torch.Tensor,
             ball: Ball, boxes: list) -> torch.Tensor:
    """Lower bounds of ``A[r] . (output of chain[start-1])`` by walking back to the input of
    ``chain[stop]``, then taking the minimum over that input's set: the ball for stop 0,
    otherwise the box ``boxes[stop]``."""
    bias = torch.zeros(A.shape[0], dtype=A.dtype, device=A.device)
    for op in reversed(chain[stop:start]):
        A = op.backward(A, owner, bias)
    if stop == 0:
        return bias + ball.minimum(A, owner)
    l, u = boxes[stop]
    return bias + box_minimum(A, l[owner], u[owner])


def lower_bounds(chain: list[Op], ball: Ball, method: str, spec: torch.Tensor) -> torch.Tensor:
    """Lower bounds of ``spec @ output`` [N, S] for every sample of ``ball``."""
    if method not in BOUNDS:
        raise InputError(f"method must be one of {list(BOUNDS)}, got {method!r}")
    N = ball.x.shape[0]
    boxes = layer_boxes(chain, ball, method)
    S = spec.shape[1]
    A = spec.reshape(N * S, *spec.shape[2:]).to(ball.x.dtype)
    owner = torch.arange(N, device=A.device).repeat_interleave(S)
    # IBP: the spec folded into the last affine op, then the box of its input
    fold = len(chain) - 1 if chain and chain[-1].affine else len(chain)
    found = backward(chain, len(chain), fold, A, owner, ball, boxes)
    if method != "ibp":  # CROWN's margins, or IBP's where those are tighter (both are sound)
        found = torch.maximum(found, backward(chain, len(chain), 0, A, owner, ball, boxes))
    return found.view(N, S)


def layer_boxes(chain: list[Op], ball: Ball, method: str = "crown", refine=None) -> list:
    """``boxes[i]``: elementwise bounds ``(l, u)`` [N, *in_shape] of ``chain[i]``'s input
    over the ball (``boxes[len(chain)]``: of the output), by IBP, tightened by CROWN for
    every unstable ReLU with ``method="crown"``, then by ``refine(i, l, u, boxes)`` if given
    (α-CROWN's); each relaxed op is left set to its box."""
    boxes: list = [ball.box()]
    for i, op in enumerate(chain):
        l, u = boxes[i]
        if op.needs_bounds:
            if method == "crown" and _has_relaxation(chain[:i]) and isinstance(op, ReLU):
                l, u = _refine(chain, i, l, u, ball, boxes)
                if refine is not None:
                    l, u = refine(i, l, u, boxes)
                boxes[i] = (l, u)
            op.set_bounds(l, u)
        boxes.append(first_layer(chain[:i], op, ball, l, u))
    return boxes


def _has_relaxation(chain: list[Op]) -> bool:
    return any(op.needs_bounds for op in chain)


def _refine(chain, i, l, u, ball, boxes):
    """CROWN bounds for the unstable inputs of the ReLU chain[i], intersected with IBP's."""
    unstable = ((l < 0) & (u > 0)).flatten(1)
    sample, position = unstable.nonzero(as_tuple=True)
    if not len(sample):
        return l, u
    l, u = l.flatten(1).clone(), u.flatten(1).clone()
    width = max(_numel(op.in_shape) for op in chain[:i + 1])
    chunk = max(1, ROWS_BUDGET // (2 * width))
    for s in range(0, len(sample), chunk):
        rows_s, rows_p = sample[s:s + chunk], position[s:s + chunk]
        R = len(rows_s)
        owner = torch.cat([rows_s, rows_s])
        if patches.spatial(chain[i - 1]):  # a convolution's neurons: walk their receptive fields
            found = _patch_rows(chain, i, rows_p.repeat(2), owner, R, ball, boxes, l.dtype)
        else:
            A = torch.zeros(2 * R, l.shape[1], dtype=l.dtype, device=l.device)
            A[torch.arange(R), rows_p] = 1.0          # lower bound of h_p
            A[torch.arange(R, 2 * R), rows_p] = -1.0  # lower bound of -h_p: minus an upper bound
            found = backward(chain, i, 0, A.view(2 * R, *chain[i].in_shape), owner, ball, boxes)
        l[rows_s, rows_p] = torch.maximum(l[rows_s, rows_p], found[:R])
        u[rows_s, rows_p] = torch.minimum(u[rows_s, rows_p], -found[R:])
    shape = (l.shape[0], *chain[i].in_shape)
    return l.view(shape), u.view(shape)


def _patch_rows(chain, i, position, owner, R, ball, boxes, dtype) -> torch.Tensor:
    """``backward`` for rows +-e_p at the input of chain[i], a convolution's output."""
    C, H, W = chain[i].in_shape
    A = torch.zeros(2 * R, C, 1, 1, dtype=dtype, device=position.device)
    sign = torch.cat([torch.ones(R), -torch.ones(R)]).to(A)
    A[torch.arange(2 * R), position // (H * W), 0, 0] = sign
    oy, ox = (position // W) % H, position % W
    bias = torch.zeros(2 * R, dtype=dtype, device=A.device)
    j, A, oy, ox = patches.walk(chain, i, A, owner, oy, ox, bias)
    if j == 0:
        return bias + patches.input_minimum(ball, A, owner, oy, ox)
    whole = patches.dense(A, oy, ox, chain[j].in_shape)
    return bias + backward(chain, j, 0, whole, owner, ball, boxes)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
