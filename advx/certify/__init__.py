"""Certification: *proved* lower bounds on robust accuracy, next to the attacks' upper bounds.

An attack that fails proves nothing; a certificate does. ``certify`` bounds, for every
image and every other class j, the margin ``z_y - z_j`` over the whole eps-ball (within
the pixel box). If every such lower bound is positive, no input in the ball changes the
answer: the sample is **certified** at that eps.

    >>> import advx
    >>> cert = advx.certify(model, x, y, eps=0.1, method="crown")
    >>> cert.certified.float().mean()     # certified accuracy: a lower bound

Methods: "ibp" (fast, loose on normally trained models), "crown-ibp", "crown"
(``advx.certify.propagate``), "alpha-crown" (CROWN with its ReLU slopes optimised,
``advx.certify.alpha``) and "bab" (branch and bound with split constraints,
``advx.certify.bab``: a *verdict* per sample, verified / falsified with a counterexample
the model itself confirms / unknown when ``timeout`` seconds run out). The model is read with ``torch.fx``
(``advx.certify.graph``); bounds are computed in fp32 whatever the model's precision
(a bf16 or fp16 model is certified as the network its weights define, computed exactly:
its own rounding of activations is not part of the certificate). Images and labels are
checked as the attacks check them (``advx.validate.check_batch``).

``advx.certify`` is this package, and calling it calls ``certify``: ``advx.certify(model,
...)`` and ``import advx.certify.propagate`` both work, with no name shadowing the other.
"""

from __future__ import annotations

import inspect
import sys
import types
from dataclasses import dataclass, field

import torch
from torch import nn

from advx.certify import alpha, verdicts
from advx.certify.graph import SUPPORTED, UnsupportedModel, read_model
from advx.certify.milp import installed as milp_installed
from advx.certify.pooling import split_pools
from advx.certify.propagate import METHODS, Ball, lower_bounds, margin_spec
from advx.modes import check_not_lazy, checked_logits, device_of, frozen, weight_dtype
from advx.norms import Norm, get_norm
from advx.progress import bar as progress_bar
from advx.validate import AdvxError, InputError, check_batch, check_images, check_number

INTERMEDIATE_ROWS = 32  # "alpha-crown": intermediate neurons per layer and sample given optimised slopes

__all__ = ["Certificate", "Certifier", "certify", "METHODS", "SUPPORTED", "UnsupportedModel"]


@dataclass
class Certificate:
    """Per-sample margin lower bounds. ``margins[n, j]`` <= ``z_y - z_j`` everywhere in the
    ball around sample n (``+inf`` at j = y)."""

    margins: torch.Tensor
    eps: float
    method: str
    norm: Norm
    verdicts: list[str] | None = None  # "bab": verified / falsified / unknown per sample
    counterexamples: dict[int, torch.Tensor] = field(default_factory=dict)  # "bab": sample -> input
    seconds: torch.Tensor | None = None  # "bab": the seconds each sample's verdict took
    proved: torch.Tensor | None = None   # "bab": the smallest proved margin bound per sample

    @property
    def lower(self) -> torch.Tensor:
        """The smallest margin bound per sample [N]: > 0 means certified."""
        return self.margins.min(1).values if self.proved is None else self.proved

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
                 bounds: tuple[float, float] = (0.0, 1.0), screen: bool = True, timeout: float = 60.0,
                 iterations: int = 20, milp: float = 0.0) -> None:
        if method not in METHODS:
            raise InputError(f"method must be one of {list(METHODS)}, got {method!r}")
        self.model, self.method, self.norm = model, method, get_norm(norm)
        if not self.norm.certifiable:
            raise InputError(f"norm {self.norm.label} cannot be certified by bound propagation (no bound over its "
                             f"ball is computed): certify in Linf, L2 or L1, or attack it")
        self.bounds = _checked_bounds(bounds)
        if not isinstance(input_shape, (tuple, list, torch.Size)) or not input_shape or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape):
            raise InputError(f"input_shape must be one input's shape, e.g. (1, 28, 28), got {input_shape!r}")
        self.input_shape = tuple(input_shape)
        check_not_lazy(model)
        self.chain = read_model(model, self.input_shape)
        # CROWN and what builds on it bound each max-pooling as ReLUs of its inputs'
        # differences, which they bound far tighter than the inputs themselves (correlated
        # neighbours); IBP keeps the pooling's own interval, the tighter one for intervals
        self.split_chain = split_pools(self.chain)
        out = self.chain[-1].out_shape if self.chain else self.input_shape
        if len(out) != 1 or out[0] < 2:
            raise UnsupportedModel(f"cannot certify this model: it must return logits [N, K] for K >= 2 classes, "
                                   f"got [N, {', '.join(map(str, out))}] per input of shape {list(self.input_shape)}")
        self.screen, self.checked = bool(screen), False
        timeout = check_number("timeout", timeout)
        if not timeout > 0:
            raise InputError(f"timeout must be > 0 seconds (per sample), got {timeout:g}")
        self.timeout, self.iterations = timeout, check_number("iterations", iterations, minimum=0, integer=True)
        self.milp = check_number("milp", milp)
        if not 0 <= self.milp < 1:
            raise InputError(f"milp must be a share of the timeout in [0, 1), got {self.milp:g}")
        if self.milp > 0 and not milp_installed():
            raise InputError("milp > 0 needs SciPy's MILP solver (HiGHS), which is not installed: "
                             "pip install 'advx[milp]'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The chain's output: the model's logits in eval mode."""
        for op in self.chain:
            x = op.forward(x)
        return x

    @property
    def num_classes(self) -> int:
        return self.chain[-1].out_shape[-1]

    def margins(self, x: torch.Tensor, y: torch.Tensor, eps: float, method: str | None = None) -> torch.Tensor:
        """Lower bounds [N, K] of ``z_y - z_j`` (``+inf`` at y) by ``method`` (default: the
        certifier's) for every sample; differentiable in the weights."""
        ball = Ball(x.float(), float(eps), self.norm, *self.bounds)
        classes, y, method = self.num_classes, y.long(), method or self.method
        if method in ("alpha-crown", "bab"):  # bab: branch and bound refines its root's own bounds
            found = alpha.margins(self.split_chain, ball, y, classes, iterations=self.iterations)
            todo = found.min(1).values <= 0
            if method == "alpha-crown" and INTERMEDIATE_ROWS and todo.any():  # then, where that fails, the
                part = Ball(x[todo].float(), float(eps), self.norm, *self.bounds)  # intermediate bounds too
                found[todo] = torch.maximum(found[todo], alpha.margins(
                    self.split_chain, part, y[todo], classes, iterations=self.iterations, intermediate=INTERMEDIATE_ROWS))
            return found
        chain = self.split_chain if method == "crown" else self.chain
        found = lower_bounds(chain, ball, method, margin_spec(y, classes))
        return found.masked_fill(torch.nn.functional.one_hot(y, classes).bool(), float("inf"))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, eps: float, batch_size: int = 256,
                 progress: bool = False) -> Certificate:
        eps = check_number("eps", eps, minimum=0)
        batch_size = check_number("batch_size", batch_size, minimum=1, integer=True)
        y = check_batch(x, y, self.bounds, num_classes=self.num_classes, shape=self.input_shape)
        device = device_of(self.model)
        if not self.checked:
            self.check(x[:batch_size].to(device))
        parts = []
        with torch.autocast(device.type, enabled=False):
            bar = progress_bar(-(-len(x) // batch_size), desc=f"certify {self.method} eps={eps:g}", unit="batch",
                               enabled=progress, leave=False)
            for start in range(0, len(x), batch_size):
                xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
                parts.append(self._screened(xb, yb, eps).cpu())
                bar.update(1)
            bar.close()
        margins = torch.cat(parts)
        certificate = Certificate(margins, eps, self.method, self.norm)
        if self.method == "bab":
            self.decide(x, y, certificate, progress=progress)
        return certificate

    def decide(self, x: torch.Tensor, y: torch.Tensor, certificate: Certificate, **options) -> Certificate:
        """Branch and bound where ``certificate`` is not yet proved (``advx.certify.verdicts.decide``)."""
        return verdicts.decide(self, x, y, certificate, **options)

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

    @torch.no_grad()
    def check(self, x: torch.Tensor) -> None:
        """The chain must compute the model (eval mode) on the images ``x``: a guard against
        a misread graph, run once before the first bounds (and before any long work that
        needs them: ``advx.evaluate`` calls it before its attacks). A model in bf16 or fp16
        is compared with its own rounding allowed for."""
        check_images(x, self.bounds, shape=self.input_shape)
        dtype = weight_dtype(self.model)
        tolerance = 1e-4 if torch.finfo(dtype).bits >= 32 else 3e-2
        with frozen(self.model), torch.autocast(x.device.type, enabled=False):
            expected = checked_logits(self.model(x.to(dtype)), len(x)).float()
            got = self.forward(x.float())
        scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
        if expected.shape != got.shape or not torch.allclose(expected, got, rtol=tolerance, atol=tolerance * scale):
            raise ChainMismatch("cannot certify this model: the layers read from it by torch.fx do not "
                                "reproduce its output (an operation outside forward's graph?)")
        self.checked = True


def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, method: str = "crown",
            norm: str | Norm = "inf", bounds: tuple[float, float] = (0.0, 1.0), batch_size: int = 256,
            screen: bool = True, timeout: float = 60.0, milp: float = 0.0, progress: bool = False) -> Certificate:
    """Certify ``model`` on ``x`` [N, C, H, W] with labels ``y`` [N] at radius ``eps``:
    per-sample lower bounds of every margin ``z_y - z_j`` over the ball (see ``Certificate``;
    ``screen``: see ``Certifier``); with ``method="bab"``, a verdict per sample too
    (``timeout``: seconds per sample; ``milp``: the share of it kept for an exact MILP on what
    branch and bound leaves open, ``advx.certify.milp``)."""
    shape = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) and x.dim() > 1 else None  # images, or any inputs
    check_batch(x, y, _checked_bounds(bounds), shape=shape)  # before reading the model (the Certifier: the classes)
    return Certifier(model, tuple(x.shape[1:]), method=method, norm=norm, bounds=bounds, screen=screen,
                     timeout=timeout, milp=milp)(
        x, y, eps=eps, batch_size=batch_size, progress=progress)


def _checked_bounds(bounds) -> tuple[float, float]:
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise InputError(f"bounds must be a pair (low, high), got {bounds!r}")
    low, high = (check_number("bounds", b) for b in bounds)
    if low >= high:
        raise InputError(f"bounds must be (lower, upper) with lower < upper, got {tuple(bounds)}")
    return low, high


class _CallablePackage(types.ModuleType):
    """The package ``advx.certify``, which ``advx.certify(...)`` calls as the function ``certify``."""

    def __call__(self, *args, **kwargs) -> Certificate:
        return certify(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
__signature__ = inspect.signature(certify)
