"""The exact answer for tiny ReLU networks, by a mixed-integer program (HiGHS through SciPy):
the tests' ground truth for α-CROWN and branch and bound.

For ``nn.Sequential`` of Linear and ReLU layers (a Flatten first is fine) and an input box
``[lo, hi]``, ``minimum(model, lo, hi, c)`` is the exact ``min c . model(x)`` over the box,
and the point attaining it. Each unstable ReLU (l < 0 < u from interval bounds) gets a
binary ``a`` with ``h >= z, h >= 0, h <= u a, h <= z - l (1 - a)``: exact for any bounds
that hold."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

optimize = __import__("pytest").importorskip("scipy.optimize")
sparse = __import__("pytest").importorskip("scipy.sparse")


def layers_of(model: nn.Module):
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.ReLU))]
    assert all(isinstance(m, (nn.Linear, nn.ReLU, nn.Flatten, nn.Sequential)) for m in model.modules()), model
    return layers


def minimum(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, c: torch.Tensor):
    """``(value, x)``: the exact minimum of ``c . model(x)`` over ``lo <= x <= hi`` (flat)."""
    lo, hi = lo.flatten().double().numpy(), hi.flatten().double().numpy()
    n = len(lo)
    names = list(range(n))  # variable index of each current value
    lower, upper = list(lo), list(hi)
    integrality = [0] * n
    rows, rhs_lo, rhs_hi = [], [], []

    def new(lo_, hi_, integer=0):
        lower.append(lo_)
        upper.append(hi_)
        integrality.append(integer)
        return len(lower) - 1

    cur_lo, cur_hi = lo.copy(), hi.copy()
    for layer in layers_of(model):
        if isinstance(layer, nn.Linear):
            W, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
            pos, neg = np.clip(W, 0, None), np.clip(W, None, 0)
            out_lo = pos @ cur_lo + neg @ cur_hi + b
            out_hi = pos @ cur_hi + neg @ cur_lo + b
            out = []
            for k in range(len(b)):
                z = new(out_lo[k] - 1e-6, out_hi[k] + 1e-6)
                row = {z: -1.0}
                for j, v in enumerate(names):
                    row[v] = row.get(v, 0.0) + float(W[k, j])
                rows.append(row)
                rhs_lo.append(-b[k])
                rhs_hi.append(-b[k])
                out.append(z)
            names, cur_lo, cur_hi = out, out_lo, out_hi
        else:
            out = []
            for z, l, u in zip(names, cur_lo, cur_hi):
                if l >= 0:
                    out.append(z)
                    continue
                h = new(0.0, max(u, 0.0))
                if u <= 0:
                    out.append(h)
                    upper[h] = 0.0
                    continue
                a = new(0.0, 1.0, 1)
                rows.append({h: 1.0, z: -1.0}); rhs_lo.append(0.0); rhs_hi.append(np.inf)            # h >= z
                rows.append({h: 1.0, a: -u}); rhs_lo.append(-np.inf); rhs_hi.append(0.0)             # h <= u a
                rows.append({h: 1.0, z: -1.0, a: -l}); rhs_lo.append(-np.inf); rhs_hi.append(-l)     # h <= z - l (1 - a)
                out.append(h)
            names, cur_lo, cur_hi = out, np.clip(cur_lo, 0, None), np.clip(cur_hi, 0, None)
    cost = np.zeros(len(lower))
    for v, w in zip(names, c.double().numpy()):
        cost[v] += w
    A = sparse.lil_matrix((len(rows), len(lower)))
    for r, row in enumerate(rows):
        for v, w in row.items():
            A[r, v] = w
    result = optimize.milp(cost, constraints=optimize.LinearConstraint(A.tocsr(), rhs_lo, rhs_hi),
                           integrality=np.array(integrality), bounds=optimize.Bounds(lower, upper),
                           options=dict(mip_rel_gap=1e-9))
    assert result.status == 0, result.message
    return float(result.fun), torch.tensor(result.x[:n], dtype=torch.float32)
