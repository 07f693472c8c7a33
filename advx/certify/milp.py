"""The exact answer by a mixed-integer program: what branch and bound leaves open.

For a chain of affine ops and ReLUs (no max-pooling), the smallest value of one group of a
property (``advx.certify.properties``: the largest ``C[r] z - d[r]`` over its rows) over the
input box is a MILP. Each affine op is its own matrix (sparse: a convolution's is mostly
zeros); a ReLU stable on the sample's box is ``h = z`` or ``h = 0``; an unstable one
(``l < 0 < u``) gets a binary ``a`` with ``h >= z, h >= 0, h <= u a, h <= z - l (1 - a)``,
exact for any bounds that hold, and the tighter the bounds, the easier the program.

HiGHS (through SciPy, ``pip install advx[milp]``) solves it; it is a floating-point
solver, so nothing it says is taken on trust: a point it finds counts only once the
model's own forward pass confirms it (the caller's check), and a proof only when its dual
bound clears ``TOLERANCE``. Over an L2 or L1 ball the program is posed on the Linf box of the
same radius, a superset: its proofs hold, its points are projected into the ball and checked.
"""

from __future__ import annotations

import importlib.util
import math
import time

import numpy as np
import torch

from advx.certify.ops import Op, ReLU
from advx.certify.properties import Property
from advx.certify.propagate import Ball

TOLERANCE = 1e-4      # a proof needs the solver's dual bound above this (its tolerances are ~1e-7)
MAX_ENTRIES = 2**26   # the largest dense affine map read into the program (in x out)


def installed() -> bool:
    """Whether SciPy (whose ``optimize.milp`` is HiGHS) can be imported."""
    return importlib.util.find_spec("scipy") is not None


def available(chain: list[Op]) -> bool:
    """Whether SciPy's HiGHS is installed and ``chain`` has only affine ops, reshapes and ReLUs
    of a size this module reads (MNIST-sized convolutions and dense layers); branch and bound
    hands it max-pooling written as ReLUs (``advx.certify.pooling.split_pools``)."""
    return installed() and all(
        isinstance(op, ReLU) or op.name == "Reshape"
        or (op.affine and math.prod(op.in_shape) * math.prod(op.out_shape) <= MAX_ENTRIES) for op in chain)


def solve(chain: list[Op], ball: Ball, boxes: list, prop: Property, group: int, deadline: float):
    """``(status, point, bound)`` for ``group`` of ``prop`` over the set of ``ball`` (one sample),
    with the big-M bounds ``boxes`` (``propagate.layer_boxes``): "proved" with ``bound`` > 0
    the solver's lower bound of the group's value, "point" with a candidate [*input] (to be
    checked), or "open" (out of time, or the solver failed)."""
    from scipy import optimize

    seconds = deadline - time.perf_counter()
    if seconds <= 0:
        return "open", None, float("-inf")
    program = _Program()
    low, high = ball.box()
    current = program.variables(_flat(low), _flat(high))
    inputs = current
    for i, op in enumerate(chain):
        if op.name == "Reshape":
            continue
        if isinstance(op, ReLU):
            current = program.relu(current, _flat(boxes[i][0]), _flat(boxes[i][1]))
            continue
        W, b = _dense(op)
        if i == len(chain) - 1:  # the group's rows folded into the last layer, and t >= each row
            rows = (prop.group == group).nonzero().squeeze(1)
            C = prop.C[rows].double().numpy()
            t = program.variables(np.array([-np.inf]), np.array([np.inf]))[0]
            program.rows(C @ W, current, -np.ones(len(rows)), t, -np.inf, prop.d[rows].double().numpy() - C @ b)
            break
        z = program.variables(_flat(boxes[i + 1][0]), _flat(boxes[i + 1][1]))
        program.rows(W, current, -np.ones(len(z)), z, -b, -b)
        current = z
    else:
        raise ValueError("the chain must end with an affine op")
    objective = np.zeros(program.size)
    objective[t] = 1.0
    result = optimize.milp(objective, integrality=np.array(program.integer),
                           bounds=optimize.Bounds(program.lower, program.upper),
                           constraints=optimize.LinearConstraint(program.matrix(), program.row_lower,
                                                                 program.row_upper),
                           options={"time_limit": seconds, "disp": False})
    dual = getattr(result, "mip_dual_bound", None)
    if dual is not None and np.isfinite(dual) and dual > TOLERANCE:  # a lower bound, even out of time
        return "proved", None, float(dual)
    if result.x is not None and result.fun is not None and result.fun <= TOLERANCE:
        point = torch.tensor(result.x[inputs], dtype=ball.x.dtype).view(ball.x.shape[1:])
        return "point", point, float("-inf")
    return "open", None, float("-inf") if dual is None else float(dual)


class _Program:
    """Variables with bounds (some binary) and sparse rows ``row_lower <= A v <= row_upper``."""

    def __init__(self) -> None:
        self.lower, self.upper, self.integer = [], [], []
        self.entries, self.row_lower, self.row_upper = [], [], []
        self.count = 0

    @property
    def size(self) -> int:
        return len(self.lower)

    def variables(self, lower, upper, integer: int = 0) -> np.ndarray:
        start = self.size
        self.lower.extend(lower.tolist())
        self.upper.extend(upper.tolist())
        self.integer.extend([integer] * len(lower))
        return np.arange(start, self.size)

    def rows(self, W, columns, extra, extra_column, lower, upper) -> None:
        """Rows ``W @ v[columns] + extra * v[extra_column] in [lower, upper]`` (one per row of W)."""
        from scipy import sparse

        W = sparse.coo_matrix(W)
        n = W.shape[0]
        extra_columns = np.broadcast_to(np.asarray(extra_column), (n,))
        self.entries.append((W.row + self.count, columns[W.col], W.data))
        self.entries.append((np.arange(n) + self.count, extra_columns, np.asarray(extra, dtype=float)))
        self.row_lower.extend(np.broadcast_to(lower, (n,)).tolist())
        self.row_upper.extend(np.broadcast_to(upper, (n,)).tolist())
        self.count += n

    def relu(self, z: np.ndarray, l: np.ndarray, u: np.ndarray) -> np.ndarray:
        h = self.variables(np.maximum(l, 0), np.maximum(u, 0))
        active = np.nonzero(l >= 0)[0]
        self._pairs(h[active], z[active], 0.0, 0.0)  # h = z
        unstable = np.nonzero((l < 0) & (u > 0))[0]
        if len(unstable):
            hu, zu, lu, uu = h[unstable], z[unstable], l[unstable], u[unstable]
            a = self.variables(np.zeros(len(unstable)), np.ones(len(unstable)), integer=1)
            self._pairs(hu, zu, 0.0, np.inf)                                   # h - z >= 0
            self._pairs(hu, a, -np.inf, 0.0, -uu)                              # h - u a <= 0
            n = len(unstable)
            rows = np.arange(n) + self.count
            self.entries.append((np.concatenate([rows, rows, rows]), np.concatenate([hu, zu, a]),
                                 np.concatenate([np.ones(n), -np.ones(n), -lu])))
            self.row_lower.extend([-np.inf] * n)
            self.row_upper.extend((-lu).tolist())                              # h - z - l a <= -l
            self.count += n
        return h

    def _pairs(self, first, second, lower, upper, weight=-1.0) -> None:
        """Rows ``first - weight' * second`` (``weight`` the second's coefficient)."""
        n = len(first)
        rows = np.arange(n) + self.count
        self.entries.append((np.concatenate([rows, rows]), np.concatenate([first, second]),
                             np.concatenate([np.ones(n), np.broadcast_to(weight, (n,)).astype(float)])))
        self.row_lower.extend([lower] * n)
        self.row_upper.extend([upper] * n)
        self.count += n

    def matrix(self):
        from scipy import sparse

        rows, columns, values = (np.concatenate(part) for part in zip(*self.entries))
        return sparse.csr_matrix((values, (rows, columns)), shape=(self.count, self.size))


def _dense(op: Op):
    """``(W, b)`` in float64: the affine op's matrix [out, in] and offset [out]."""
    n = math.prod(op.in_shape)
    with torch.no_grad():
        columns = [op.linear(torch.eye(n)[s:s + 1024].view(-1, *op.in_shape)).flatten(1) for s in range(0, n, 1024)]
        W = torch.cat(columns).T.double().numpy()
        bias = op.bias_term()
        b = np.zeros(W.shape[0]) if bias is None else bias.expand(op.out_shape).flatten().double().numpy()
    return W, b


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().flatten().double().cpu().numpy()
