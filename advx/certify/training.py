"""Certified training: the weight step minimises a loss on the *bounds*, not on an attack.

The trainer's ``loss_fn`` (see ``advx.train``) for ``advx train --adv ibp|crown-ibp``:

    loss = kappa * CE(z(x), y) + (1 - kappa) * CE(-m(x, eps), y)

where ``m`` are the lower bounds of the margins ``z_y - z_j`` over the eps-ball
(``-m`` are the worst-case logits, 0 for the true class). Gowal et al. (2018): eps ramps
up from 0 and kappa from 1 down to ``kappa_end`` over the ramp. CROWN-IBP (Zhang et al.,
2020) mixes ``beta * m_crown-ibp + (1 - beta) * m_ibp`` with beta going from 1 to 0 over
the ramp. The bounds of training may run in low precision; certificates never do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advx.certify import Certifier
from advx.validate import InputError, check_number

CERTIFIED_KINDS = ("ibp", "crown-ibp")


class CertifiedLoss:
    """``loss_fn(model, x, y, *, epoch)`` of certified training (see the module docstring)."""

    def __init__(self, kind: str, *, eps: float, ramp_start: float = 0.0, ramp_epochs: float = 1.0,
                 kappa_end: float = 0.5, input_shape=(1, 28, 28)) -> None:
        if kind not in CERTIFIED_KINDS:
            raise InputError(f"kind must be one of {list(CERTIFIED_KINDS)} for certified training, got {kind!r}")
        self.kind = kind
        self.eps = check_number("eps", eps, minimum=0)
        self.ramp_start = check_number("ramp_start", ramp_start, minimum=0)
        self.ramp_epochs = check_number("ramp_epochs", ramp_epochs, minimum=0)
        self.kappa_end = check_number("kappa_end", kappa_end, minimum=0, maximum=1)
        self.input_shape = tuple(input_shape)
        self._certifiers: dict = {}

    def progress(self, epoch: float) -> float:
        """0 before the ramp, 1 after it, linear in between."""
        if self.ramp_epochs == 0:
            return float(epoch >= self.ramp_start)
        return min(1.0, max(0.0, (epoch - self.ramp_start) / self.ramp_epochs))

    def eps_at(self, epoch: float) -> float:
        return self.eps * self.progress(epoch)

    def kappa_at(self, epoch: float) -> float:
        return 1.0 - (1.0 - self.kappa_end) * self.progress(epoch)

    def _certifier(self, model: nn.Module, method: str) -> Certifier:
        key = (id(model), method)
        if key not in self._certifiers:
            self._certifiers[key] = Certifier(model, self.input_shape, method=method)
        return self._certifiers[key]

    def margins(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: float) -> torch.Tensor:
        eps = self.eps_at(epoch)
        ibp = self._certifier(model, "ibp").margins(x, y, eps)
        if self.kind == "ibp":
            return ibp
        beta = 1.0 - self.progress(epoch)
        if beta == 0:
            return ibp
        crown_ibp = self._certifier(model, "crown-ibp").margins(x, y, eps)
        return beta * crown_ibp + (1 - beta) * ibp

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if self.eps_at(epoch) == 0:
            return loss, logits
        kappa = self.kappa_at(epoch)
        worst = -self.margins(model, x, y, epoch)  # the worst-case logits, 0 for class y
        worst = worst.masked_fill(F.one_hot(y, worst.shape[1]).bool(), 0.0)
        return kappa * loss + (1 - kappa) * F.cross_entropy(worst, y), logits
