"""Max-pooling: its own relaxation (with parameters α-CROWN can optimise), and the same
pooling written as ReLUs.

MaxPool2d (no padding, no dilation) is the one op of the chain besides ReLU that bound
propagation relaxes (``advx.certify.ops``: the other ops and the contract they share).
``split_pools`` writes it as fixed convolutions and ReLUs of its inputs' differences, which
CROWN bounds far tighter than the relaxation of the inputs' own bounds can (neighbouring
inputs move together) and which branch and bound can split; the ``Certifier`` uses that
form for CROWN, α-CROWN and branch and bound, and the relaxation for CROWN-IBP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advx.certify.ops import Conv, Linear, Op, ReLU


class MaxPool(Op):
    """MaxPool2d (no padding, no dilation). In a window of inputs x_1..x_K with bounds
    [l_i, u_i] the relaxation is, for any weights λ on the simplex and any t in
    [max l, max u]:

    - below: ``max x >= sum λ_i x_i`` (CROWN's default: λ one-hot at the largest l);
    - above: ``max x <= t + sum s_i (x_i - l_i)`` with ``s_i = clip((u_i - t)/(u_i - l_i), 0, 1)``.
      If the maximum x_m exceeds t, ``s_m (x_m - l_m) >= x_m - t`` (equality at u_m, and
      s_m <= 1); otherwise every term is >= 0. t = max u is the constant bound max u;
      t = max l is x_j plus chords of the others (exact when x_j dominates the window).
      The default is t = max(max l, second largest u): the bound that is smallest at the
      window's centre.

    α-CROWN optimises λ and t (``relax(l, u, param)``); each choice is sound."""

    name = "MaxPool2d"
    needs_bounds = True

    def __init__(self, kernel, stride, in_shape, out_shape) -> None:
        super().__init__(in_shape, out_shape)
        self.kernel, self.stride = kernel, stride

    @property
    def size(self) -> int:
        """K: the inputs of one window."""
        return self.kernel[0] * self.kernel[1]

    def forward(self, x):
        return F.max_pool2d(x, self.kernel, self.stride)

    def interval(self, l, u):
        return self.forward(l), self.forward(u)

    def windows(self, t):
        """[N, C, H, W] -> [N, C, Ho, Wo, K], the inputs of each output."""
        (kh, kw), (sh, sw) = self.kernel, self.stride
        return t.unfold(2, kh, sh).unfold(3, kw, sw).flatten(-2)

    def initial(self, l, u) -> torch.Tensor:
        """The default relaxation as one parameter [N, C, Ho, Wo, K + 1]: λ, then t."""
        return self._initial(self.windows(l), self.windows(u))

    def _initial(self, wl, wu) -> torch.Tensor:
        lam = F.one_hot(wl.argmax(-1), self.size).to(wl.dtype)
        second = wu.topk(min(2, self.size), -1).values[..., -1]
        return torch.cat([lam, torch.maximum(wl.max(-1).values, second).unsqueeze(-1)], -1)

    def relax(self, l, u, param: torch.Tensor | None = None):
        """``(lam, slope, const)`` for input bounds ``l, u`` [R, *in_shape] and ``param``
        [R, C, Ho, Wo, K + 1] (default ``initial``): lower ``lam . x``, upper ``slope . x +
        const``, per window. λ is projected onto the simplex and t into [max l, max u]
        (with the gradient of the raw parameter), so every parameter gives a sound bound."""
        wl, wu = self.windows(l), self.windows(u)
        if param is None:
            param = self._initial(wl, wu)
        lam = _straight(param[..., :-1], simplex(param[..., :-1]))
        t = param[..., -1]
        t = _straight(t, torch.minimum(torch.maximum(t, wl.max(-1).values), wu.max(-1).values))
        width = wu - wl
        slope = torch.where(width > 0, ((wu - t.unsqueeze(-1)) / width.clamp_min(1e-12)).clamp(0, 1),
                            torch.zeros_like(width))
        return lam, slope, t - (slope * wl).sum(-1)

    def set_bounds(self, l, u) -> None:
        self.relaxation = self.relax(l, u)

    def backward(self, A, owner, bias):
        lam, slope, const = (r[owner] for r in self.relaxation)
        return self.backward_with(A, bias, lam, slope, const)

    def backward_with(self, A, bias, lam, slope, const):
        """``backward`` with one relaxation per row of ``A``."""
        pos, neg = A.clamp_min(0), A.clamp_max(0)
        bias += (neg * const).flatten(1).sum(1)
        coef = pos.unsqueeze(-1) * lam + neg.unsqueeze(-1) * slope
        C, H, W = self.in_shape
        return self.spread(coef, A.new_zeros(A.shape[0], C, H, W))

    def spread(self, coef, out):
        """Add each window's coefficients [R, C, h, w, K] onto its inputs in ``out``
        [R, C, (h - 1) * stride + kernel (or more), ...]."""
        kw, (sh, sw) = self.kernel[1], self.stride
        h, w = coef.shape[2], coef.shape[3]
        for k in range(self.size):
            ky, kx = divmod(k, kw)
            out[:, :, ky:ky + (h - 1) * sh + 1:sh, kx:kx + (w - 1) * sw + 1:sw] += coef[..., k]
        return out


def simplex(p: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``p`` [..., K] onto the probability simplex."""
    top = p.sort(-1, descending=True).values
    cum = top.cumsum(-1) - 1
    k = torch.arange(1, p.shape[-1] + 1, device=p.device, dtype=p.dtype)
    count = (top - cum / k > 0).sum(-1, keepdim=True).clamp_min(1)
    theta = cum.gather(-1, count - 1) / count.to(p.dtype)
    return (p - theta).clamp_min(0)


def _straight(raw: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """``used``'s value with ``raw``'s gradient (projected gradient steps)."""
    return raw + (used - raw).detach()


def split_pools(chain: list[Op]) -> list[Op]:
    """``chain`` with each max-pooling written as ReLUs (``as_relus``): the same function,
    whose ReLUs branch and bound can split."""
    device = next((op.weight.device for op in chain if isinstance(op, (Linear, Conv))), "cpu")
    return [new for op in chain for new in (as_relus(op, device) if isinstance(op, MaxPool) else [op])]


def as_relus(pool: MaxPool, device="cpu") -> list[Op]:
    """The same max-pooling as a chain of fixed convolutions and ReLUs, whose differences
    CROWN bounds by back-substitution and branch and bound can split: a tournament in which
    each pair ``(p, q)`` of a window becomes ``max(p, q) = relu(p - q) + relu(q) - relu(-q)``
    (a lone input ``v`` passes as ``relu(v) - relu(-v)``). Splitting the ReLU of ``p - q``
    decides which of the two is larger; the others are stable where the inputs' sign is
    known (after a ReLU). Equal to ``pool`` at every input (up to float rounding)."""
    C = pool.in_shape[0]
    out_hw = pool.out_shape[1:]

    def conv(weight, in_shape, kernel, stride):  # the same combination in every channel
        rows = weight.shape[0]
        return Conv(weight.view(rows, -1, *kernel).repeat(C, 1, 1, 1).to(device), None, stride, (0, 0), (1, 1), C,
                    in_shape, (C * rows, *out_hw), name="MaxPool2d (as ReLUs)")

    # level 0 takes the K inputs of each window (the pooling's own kernel and stride); each
    # level halves the values per window, from the ReLUs of the level before (1x1 convolutions)
    values, mix = pool.size, torch.eye(pool.size)  # mix: the values from the level's inputs
    in_shape, kernel, stride = pool.in_shape, pool.kernel, pool.stride
    chain: list[Op] = []
    while values > 1:
        pre, after = _level(values)  # [rows, values] pre-activations, [next values, rows] after the ReLU
        rows = pre.shape[0]
        chain += [conv(pre @ mix, in_shape, kernel, stride), ReLU((C * rows, *out_hw), (C * rows, *out_hw))]
        values, mix = after.shape[0], after
        in_shape, kernel, stride = (C * rows, *out_hw), (1, 1), 1
    return chain + [conv(mix, in_shape, kernel, stride)]


def _level(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One round of the tournament on ``n`` values: the ReLUs' inputs [rows, n] and the
    next round's values from the ReLUs' outputs [ceil(n / 2), rows]."""
    pre, after = [], []
    for j in range(0, n, 2):
        if j + 1 < n:  # p - q, q, -q -> relu(p - q) + relu(q) - relu(-q)
            p, q = F.one_hot(torch.tensor(j), n).float(), F.one_hot(torch.tensor(j + 1), n).float()
            pre += [p - q, q, -q]
            after.append([1.0, 1.0, -1.0])
        else:  # v, -v -> relu(v) - relu(-v)
            v = F.one_hot(torch.tensor(j), n).float()
            pre += [v, -v]
            after.append([1.0, -1.0])
    rows = len(pre)
    out = torch.zeros(len(after), rows)
    r = 0
    for i, coef in enumerate(after):
        out[i, r:r + len(coef)] = torch.tensor(coef)
        r += len(coef)
    return torch.stack(pre), out
