"""CROWN's intermediate bounds for convolutional layers, computed on receptive fields.

Bounding one neuron of a convolution's output by walking back to the input only ever
touches its receptive field: a 4x4 window one layer down, 10x10 two layers down. Dense
back-substitution (``propagate.backward``) would carry whole images of zeros for every
neuron. Here each row of coefficients is a window ``A`` [R, C, h, w] with its top-left
corner ``(oy, ox)`` in the current layer (it may hang over the border: those entries
stand for the zero padding, a constant 0, and are cleared). Conv2d, BatchNorm and ReLU
are walked this way; at any other op the windows are written into whole images and the
walk continues densely.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advx.certify.ops import Conv, ReLU, Scale, pair
from advx.certify.pooling import MaxPool


def spatial(op) -> bool:
    return isinstance(op, (Conv, Scale, ReLU, MaxPool)) and len(op.in_shape) == 3 and len(op.out_shape) == 3


def windows(t: torch.Tensor, owner, oy, ox, h: int, w: int) -> torch.Tensor:
    """The windows [R, C, h, w] of the per-sample tensor ``t`` [N, C, H, W] at corners
    ``(oy, ox)`` of samples ``owner``; zero where a window leaves the image."""
    pad, iy, ix = _index(oy, ox, h, w, t.shape[2], t.shape[3])
    if pad:
        t = F.pad(t, (pad, pad, pad, pad))
    got = t[owner.view(-1, 1, 1), :, iy, ix]  # [R, h, w, C]
    return got.permute(0, 3, 1, 2)


def _index(oy, ox, h: int, w: int, H: int, W: int):
    """How far an H x W image must be padded to hold every window, and the row [R, h, 1] and
    column [R, 1, w] indices of the windows in the padded image."""
    pad = max(0, int(-oy.min()), int(-ox.min()), int((oy + h - H).max()), int((ox + w - W).max()))
    iy = (oy + pad).unsqueeze(1) + torch.arange(h, device=oy.device)
    ix = (ox + pad).unsqueeze(1) + torch.arange(w, device=ox.device)
    return pad, iy.unsqueeze(2), ix.unsqueeze(1)


def _inside(oy, ox, h: int, w: int, H: int, W: int) -> torch.Tensor:
    """[R, 1, h, w]: which window entries lie inside an H x W image."""
    ys = oy.unsqueeze(1) + torch.arange(h, device=oy.device)
    xs = ox.unsqueeze(1) + torch.arange(w, device=ox.device)
    return (((ys >= 0) & (ys < H)).unsqueeze(2) & ((xs >= 0) & (xs < W)).unsqueeze(1)).unsqueeze(1)


def dense(A, oy, ox, shape) -> torch.Tensor:
    """The windows written into whole [R, *shape] images (entries outside dropped)."""
    C, H, W = shape
    pad, iy, ix = _index(oy, ox, A.shape[2], A.shape[3], H, W)
    out = torch.zeros(A.shape[0], C, H + 2 * pad, W + 2 * pad, dtype=A.dtype, device=A.device)
    rows = torch.arange(A.shape[0], device=A.device).view(-1, 1, 1)
    out[rows, :, iy, ix] = A.permute(0, 2, 3, 1)
    return out[:, :, pad:pad + H, pad:pad + W]


def walk(chain, start: int, A, owner, oy, ox, bias):
    """Walk the windows back through the spatial ops ``chain[j:start]`` (from the top) as
    far as they go; returns ``(j, A, oy, ox)``: the windows now sit at ``chain[j]``'s input."""
    j = start
    while j > 0 and spatial(chain[j - 1]):
        op = chain[j - 1]
        h, w = A.shape[2], A.shape[3]
        if isinstance(op, Conv):
            b = op.bias_term()
            if b is not None:
                bias += (A * b.view(1, -1, 1, 1)).flatten(1).sum(1)
            (sy, sx), (py, px) = pair(op.kw["stride"]), pair(op.kw["padding"])
            A = F.conv_transpose2d(A, op.weight, stride=(sy, sx), dilation=op.kw["dilation"],
                                   groups=op.kw["groups"])
            oy, ox = oy * sy - py, ox * sx - px
            _, H, W = op.in_shape
            A = A * _inside(oy, ox, A.shape[2], A.shape[3], H, W)  # padding is a constant 0
        elif isinstance(op, Scale):
            bias += (A * op.shift).flatten(1).sum(1)
            A = A * op.scale
        elif isinstance(op, MaxPool):
            A, oy, ox = _maxpool(op, A, owner, oy, ox, bias)
        else:  # ReLU with its relaxation, read off the same windows
            pos, neg = A.clamp_min(0), A.clamp_max(0)
            bias += (neg * windows(op.upper_offset, owner, oy, ox, h, w)).flatten(1).sum(1)
            A = pos * windows(op.lower_slope, owner, oy, ox, h, w) + neg * windows(op.upper_slope, owner, oy, ox, h, w)
        j -= 1
    return j, A, oy, ox


def _maxpool(op: MaxPool, A, owner, oy, ox, bias):
    """``MaxPool.backward`` on windows: each output's coefficients go to its inputs, inside
    the input window under the output window."""
    (kh, kw), (sh, sw) = op.kernel, op.stride
    R, C, h, w = A.shape
    K = op.size
    lam, slope, const = op.relaxation
    lam, slope = (windows(r.movedim(-1, 1).flatten(1, 2), owner, oy, ox, h, w).view(R, K, C, h, w).movedim(1, -1)
                  for r in (lam, slope))
    const = windows(const, owner, oy, ox, h, w)
    pos, neg = A.clamp_min(0), A.clamp_max(0)
    bias += (neg * const).flatten(1).sum(1)
    coef = pos.unsqueeze(-1) * lam + neg.unsqueeze(-1) * slope
    out = A.new_zeros(R, C, (h - 1) * sh + kh, (w - 1) * sw + kw)
    return op.spread(coef, out), oy * sh, ox * sw


def input_minimum(ball, A, owner, oy, ox) -> torch.Tensor:
    """Lower bound of the windows' ``A . x`` over the input set (as ``Ball.minimum``)."""
    h, w = A.shape[2], A.shape[3]
    l, u = ball.box()
    cl, cu = windows(l, owner, oy, ox, h, w), windows(u, owner, oy, ox, h, w)
    best = ((A * (cu + cl) / 2) - A.abs() * (cu - cl) / 2).flatten(1).sum(1)
    if not ball.norm.ball_is_box:
        best = torch.maximum(best, ball.norm.linear_minimum(A, windows(ball.x, owner, oy, ox, h, w), ball.eps))
    return best

