"""Certification: *proved* lower bounds on robust accuracy, next to the attacks' upper bounds.

An attack that fails proves nothing; a certificate does. ``certify`` bounds, for every
image and every other class j, the margin ``z_y - z_j`` over the whole eps-ball (within
the pixel box). If every such lower bound is positive, no input in the ball changes the
answer: the sample is **certified** at that eps.

    >>> import advx
    >>> cert = advx.certify(model, x, y, eps=0.1, method="crown")
    >>> cert.certified.float().mean()     # certified accuracy: a lower bound

Methods (``advx.certify.propagate``): "ibp" (fast, loose on normally trained models),
"crown-ibp", "crown" (tightest, slowest). The model is read with ``torch.fx``
(``advx.certify.graph``); bounds are computed in fp32 whatever the model's precision.

``advx.certify`` is this package, and calling it calls ``certify``: ``advx.certify(model,
...)`` and ``import advx.certify.propagate`` both work, with no name shadowing the other.
"""

from __future__ import annotations

import inspect
import sys
import types
from dataclasses import dataclass

import torch
from torch import nn

from advx.certify.graph import SUPPORTED, UnsupportedModel, read_model
from advx.certify.propagate import METHODS, Ball, lower_bounds, margin_spec
from advx.modes import device_of, frozen
from advx.norms import Norm, get_norm
from advx.progress import bar as progress_bar
from advx.validate import AdvxError, InputError, check_number

__all__ = ["Certificate", "Certifier", "certify", "METHODS", "SUPPORTED", "UnsupportedModel"]


@dataclass
class Certificate:
    """Per-sample margin lower bounds. ``margins[n, j]`` <= ``z_y - z_j`` everywhere in the
    ball around sample n (``+inf`` at j = y)."""

    margins: torch.Tensor
    eps: float
    method: str
    norm: Norm

    @property
    def lower(self) -> torch.Tensor:
        """The smallest margin bound per sample [N]: > 0 means certified."""
        return self.margins.min(1).values

    @property
    def certified(self) -> torch.Tensor:
        return self.lower > 0


class ChainMismatch(AdvxError, RuntimeError):
    """The chain read from the model does not compute what the model computes."""


class Certifier:
    """A model read once, then certified at any eps: ``Certifier(model)(x, y, eps=0.1)``.

    ``screen`` (default): the CROWN methods run only on the samples that IBP, far cheaper,
    does not already certify; the others keep IBP's margin bounds (they certify them too).
    ``screen=False`` gives every sample the CROWN bounds."""

    def __init__(self, model: nn.Module, input_shape=(1, 28, 28), *, method: str = "crown", norm: str | Norm = "inf",
                 bounds: tuple[float, float] = (0.0, 1.0), screen: bool = True) -> None:
        if method not in METHODS:
            raise InputError(f"method must be one of {list(METHODS)}, got {method!r}")
        self.model, self.method, self.norm = model, method, get_norm(norm)
        low, high = (check_number("bounds", b) for b in bounds)
        if low >= high:
            raise InputError(f"bounds must be (lower, upper) with lower < upper, got {tuple(bounds)}")
        self.bounds = (low, high)
        self.chain = read_model(model, tuple(input_shape))
        self.screen, self.checked = bool(screen), False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The chain's output: the model's logits in eval mode."""
        for op in self.chain:
            x = op.forward(x)
        return x

    def margins(self, x: torch.Tensor, y: torch.Tensor, eps: float, method: str | None = None) -> torch.Tensor:
        """Lower bounds [N, K] of ``z_y - z_j`` (``+inf`` at y) by ``method`` (default: the
        certifier's) for every sample; differentiable in the weights."""
        ball = Ball(x.float(), float(eps), self.norm, *self.bounds)
        classes = self.chain[-1].out_shape[-1]
        found = lower_bounds(self.chain, ball, method or self.method, margin_spec(y, classes))
        return found.masked_fill(torch.nn.functional.one_hot(y, classes).bool(), float("inf"))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, eps: float, batch_size: int = 256,
                 progress: bool = False) -> Certificate:
        eps = check_number("eps", eps, minimum=0)
        batch_size = check_number("batch_size", batch_size, minimum=1, integer=True)
        _check_inputs(x, y, self.bounds, self.chain[0].in_shape if self.chain else None)
        device = device_of(self.model)
        if not self.checked:
            self._check_chain(x[:batch_size].to(device))
        parts = []
        with torch.autocast(device.type, enabled=False):
            bar = progress_bar(-(-len(x) // batch_size), desc=f"certify {self.method} eps={eps:g}", unit="batch",
                               enabled=progress, leave=False)
            for start in range(0, len(x), batch_size):
                xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
                parts.append(self._screened(xb, yb, eps).cpu())
                bar.update(1)
            bar.close()
        margins = torch.cat(parts) if parts else torch.zeros(0, 0)
        return Certificate(margins, eps, self.method, self.norm)

    def _screened(self, x, y, eps) -> torch.Tensor:
        """``margins``, but CROWN only where IBP (cheap) did not already certify the sample:
        those keep IBP's bounds, which certify them as well."""
        if self.method == "ibp" or not self.screen:
            return self.margins(x, y, eps)
        found = self.margins(x, y, eps, method="ibp")
        todo = found.min(1).values <= 0
        if todo.any():
            found[todo] = self.margins(x[todo], y[todo], eps)
        return found

    def _check_chain(self, x: torch.Tensor) -> None:
        """The chain must compute the model (eval mode): a guard against a misread graph."""
        with frozen(self.model), torch.autocast(x.device.type, enabled=False):
            expected, got = self.model(x.float()).float(), self.forward(x.float())
        if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-4):
            raise ChainMismatch("cannot certify this model: the layers read from it by torch.fx do not "
                                "reproduce its output (an operation outside forward's graph?)")
        self.checked = True


def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, method: str = "crown",
            norm: str | Norm = "inf", bounds: tuple[float, float] = (0.0, 1.0), batch_size: int = 256,
            screen: bool = True, progress: bool = False) -> Certificate:
    """Certify ``model`` on ``x`` [N, C, H, W] with labels ``y`` [N] at radius ``eps``:
    per-sample lower bounds of every margin ``z_y - z_j`` over the ball (see ``Certificate``;
    ``screen``: see ``Certifier``)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise InputError(f"x must be a tensor [N, ...] of images, got {type(x).__name__}")
    return Certifier(model, tuple(x.shape[1:]), method=method, norm=norm, bounds=bounds, screen=screen)(
        x, y, eps=eps, batch_size=batch_size, progress=progress)


def _check_inputs(x, y, bounds, shape) -> None:
    if not isinstance(x, torch.Tensor) or (shape is not None and tuple(x.shape[1:]) != tuple(shape)):
        raise InputError(f"x must be a tensor [N, {', '.join(map(str, shape or ()))}] (the shape the model was "
                         f"read with), got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or len(y) != len(x):
        raise InputError(f"y must be a tensor of {len(x)} labels, got "
                         f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    if len(x) and (x.min() < bounds[0] or x.max() > bounds[1]):
        raise InputError(f"x must lie in the pixel bounds {list(bounds)}, got values in "
                         f"[{x.min().item():g}, {x.max().item():g}]")


class _CallablePackage(types.ModuleType):
    """The package ``advx.certify``, which ``advx.certify(...)`` calls as the function ``certify``."""

    def __call__(self, *args, **kwargs) -> Certificate:
        return certify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
__signature__ = inspect.signature(certify)
