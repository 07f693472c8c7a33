"""The layers bound propagation understands, each as one small object.

A model is read (``advx.certify.graph``) into a chain of these ops. Every op maps one
sample's tensor to the next and knows two things about itself:

- ``interval(l, u)``: elementwise bounds of its output when its input lies in the box
  ``[l, u]`` (IBP, Gowal et al. 2018);
- ``backward(A, owner, bias)``: given linear coefficients ``A`` [R, *out] on its *output*
  (row r belongs to sample ``owner[r]``), coefficients on its *input* that give a sound
  **lower** bound of ``A . output``, adding the constant part to ``bias`` [R] (CROWN,
  Zhang et al. 2018). An upper bound of ``c . z`` is minus the lower bound of ``-c . z``.

Affine ops (Linear, Conv2d, eval-mode BatchNorm, AvgPool2d) are exact in both; ReLU and
MaxPool (``advx.certify.pooling``) are relaxed with the pre-activation bounds
``set_bounds(l, u)`` gave them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pair(v) -> tuple:
    """A kernel size, stride or padding as a (height, width) pair."""
    return (v, v) if isinstance(v, int) else tuple(v)


class Op:
    """One step of the chain. ``in_shape``/``out_shape``: one sample's shape (no batch)."""

    name = "op"
    affine = False
    needs_bounds = False  # a nonlinearity: relaxed with its input's bounds

    def __init__(self, in_shape, out_shape) -> None:
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def interval(self, l: torch.Tensor, u: torch.Tensor):
        raise NotImplementedError

    def backward(self, A: torch.Tensor, owner: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.name}({self.in_shape} -> {self.out_shape})"


class Affine(Op):
    """``y = W x + b`` for some linear map W: Linear, Conv2d, BatchNorm (eval), AvgPool.
    Bounds are computed in fp32 whatever the model's precision: its weights are read as
    fp32 (exact from bf16/fp16; float64 ones are rounded to fp32)."""

    affine = True
    _weight: torch.Tensor
    _bias: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self._weight.float()

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self._bias is None else self._bias.float()

    def linear(self, x):          # W x
        raise NotImplementedError

    def linear_abs(self, r):      # |W| r (r >= 0)
        raise NotImplementedError

    def transpose(self, A):       # A W, rows of A [R, *out] -> [R, *in]
        raise NotImplementedError

    def bias_term(self) -> torch.Tensor | None:  # b broadcast to out_shape, or None
        return None

    def row_norms(self, q: float) -> torch.Tensor:
        """An upper bound of ``||W_i||_q`` for every output i, [*out_shape]: with q the dual
        exponent of a ball's norm, how far the ball moves output i (``propagate.first_layer``)."""
        raise NotImplementedError

    def forward(self, x):
        y = self.linear(x)
        b = self.bias_term()
        return y if b is None else y + b

    def interval(self, l, u):
        center, radius = (u + l) / 2, (u - l) / 2
        c = self.forward(center)
        r = self.linear_abs(radius)
        return c - r, c + r

    def backward(self, A, owner, bias):
        b = self.bias_term()
        if b is not None:
            bias += (A * b).flatten(1).sum(1)
        return self.transpose(A)


class Linear(Affine):
    name = "Linear"

    def __init__(self, weight, bias, in_shape, out_shape) -> None:
        super().__init__(in_shape, out_shape)
        self._weight, self._bias = weight, bias  # live: the bounds follow the model's weights

    def linear(self, x):
        return x @ self.weight.T

    def linear_abs(self, r):
        return r @ self.weight.abs().T

    def transpose(self, A):
        return A @ self.weight

    def bias_term(self):
        return self.bias

    def row_norms(self, q):
        return torch.linalg.vector_norm(self.weight, ord=q, dim=1)


class Conv(Affine):
    """Conv2d, and AvgPool2d as a depthwise convolution with weights 1/k^2."""

    name = "Conv2d"

    def __init__(self, weight, bias, stride, padding, dilation, groups, in_shape, out_shape, name=None) -> None:
        super().__init__(in_shape, out_shape)
        self._weight, self._bias = weight, bias  # live: the bounds follow the model's weights
        self.kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        self.name = name or self.name
        # conv_transpose2d may need output_padding to give back the input's exact size
        back = F.conv_transpose2d(torch.zeros(1, *self.out_shape, device=self.weight.device), self.weight, **self.kw)
        self.output_padding = (in_shape[1] - back.shape[2], in_shape[2] - back.shape[3])

    def linear(self, x):
        return F.conv2d(x, self.weight, **self.kw)

    def linear_abs(self, r):
        return F.conv2d(r, self.weight.abs(), **self.kw)

    def transpose(self, A):
        R = A.shape[0]
        out = F.conv_transpose2d(A.reshape(R, *self.out_shape), self.weight,
                                 output_padding=self.output_padding, **self.kw)
        return out

    def bias_term(self):
        return None if self.bias is None else self.bias.view(-1, 1, 1)

    def row_norms(self, q):
        per_channel = torch.linalg.vector_norm(self.weight.flatten(1), ord=q, dim=1)  # padding only removes terms
        return per_channel.view(-1, 1, 1).expand(self.out_shape)


class Scale(Affine):
    """Per-channel ``y = s x + t``: BatchNorm with its running statistics (eval mode), or an
    input normalization (``advx.models.InputNormalization``: its ``affine()`` gives ``s`` and ``t``).
    Certified training sets ``statistics`` to a clean batch's ``(mean, var)`` for the bound
    pass of a model in train mode (``advx.certified``), and clears it after."""

    def __init__(self, module, in_shape) -> None:
        super().__init__(in_shape, in_shape)
        self.module, self.view = module, (-1,) + (1,) * (len(in_shape) - 1)
        self.name = "BatchNorm" if isinstance(module, nn.modules.batchnorm._BatchNorm) else "Normalized"
        self.statistics = None

    def _affine(self):
        """``(s, t)`` flat per channel, read afresh (so the op follows weight steps)."""
        m = self.module
        if self.name == "Normalized":
            s, t = m.affine()
            return s.float(), t.float()
        mean, var = (m.running_mean, m.running_var) if self.statistics is None else self.statistics
        s = torch.rsqrt(var.float() + m.eps)
        s = s if m.weight is None else m.weight.float() * s
        return s, -mean.float() * s + (0 if m.bias is None else m.bias.float())

    @property
    def scale(self):
        return self._affine()[0].view(self.view)

    @property
    def shift(self):
        return self._affine()[1].view(self.view)

    def linear(self, x):
        return x * self.scale

    def linear_abs(self, r):
        return r * self.scale.abs()

    def transpose(self, A):
        return A * self.scale

    def bias_term(self):
        return self.shift

    def row_norms(self, q):
        return self.scale.abs().expand(self.out_shape)


class Reshape(Op):
    """Flatten, view, reshape: the values move, nothing else."""

    name = "Reshape"

    def forward(self, x):
        return x.reshape(x.shape[0], *self.out_shape)

    def interval(self, l, u):
        return self.forward(l), self.forward(u)

    def backward(self, A, owner, bias):
        return A.reshape(A.shape[0], *self.in_shape)


class ReLU(Op):
    """CROWN's relaxation of an unstable ReLU (l < 0 < u): above by the chord
    ``u (x - l) / (u - l)``, below by ``a x`` with the adaptive slope a = 1 if u > -l else 0."""

    name = "ReLU"
    needs_bounds = True

    def forward(self, x):
        return torch.relu(x)

    def interval(self, l, u):
        return torch.relu(l), torch.relu(u)

    def set_bounds(self, l, u) -> None:
        """Pre-activation bounds of every sample, [N, *in_shape]: fixes the relaxation."""
        unstable = (l < 0) & (u > 0)
        chord = torch.where(unstable, u / (u - l).clamp_min(1e-12), (l >= 0).to(l.dtype))
        self.upper_slope = chord
        self.upper_offset = torch.where(unstable, -chord * l, torch.zeros_like(l))
        self.lower_slope = torch.where(unstable, (u > -l).to(l.dtype), (l >= 0).to(l.dtype))

    def backward(self, A, owner, bias):
        pos, neg = A.clamp_min(0), A.clamp_max(0)
        bias += (neg * self.upper_offset[owner]).flatten(1).sum(1)
        return pos * self.lower_slope[owner] + neg * self.upper_slope[owner]
