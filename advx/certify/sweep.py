"""Certification over a test set at several eps: ``certify_sweep`` (the margin bound of
every sample at every eps, what ``advx eval --certify`` computes before the attacks, with
``spot_checked``: the proved samples the attacks check anyway) and
``CertifyRun`` (``advx certify``'s result: the bounds with the clean predictions)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from advx.certify import Certifier
from advx.certify.verdicts import VERDICTS
from advx.norms import Norm

SPOT_CHECK = 64  # proved samples per eps that the first attack stage of advx eval checks anyway


@dataclass
class CertifyRun:
    """Certification over a test set: per eps the smallest margin bound of every sample
    (> 0: certified), the clean predictions, and the seconds each eps took."""

    eps: list[float]
    method: str
    norm: Norm
    y: torch.Tensor
    pred_clean: torch.Tensor
    lower: dict[float, torch.Tensor]  # eps -> [N] smallest margin bound
    seconds: dict[float, float]
    settings: dict = field(default_factory=dict)
    verdicts: dict[float, torch.Tensor] | None = None  # "bab": eps -> [N] index into VERDICTS
    verdict_seconds: dict[float, torch.Tensor] | None = None  # "bab": eps -> [N] seconds per sample

    @property
    def clean_acc(self) -> float:
        return (self.pred_clean == self.y).float().mean().item()

    def certified_acc(self, e: float) -> float:
        return (self.lower[e] > 0).float().mean().item()

    def counts(self, e: float) -> dict[str, int]:
        """"bab": how many samples are verified, falsified and unknown at ``e``."""
        return {v: int((self.verdicts[e] == k).sum()) for k, v in enumerate(VERDICTS)}

    def exact_acc(self, e: float) -> float | None:
        """"bab": the exact robust accuracy at ``e`` once no sample is unknown (else None):
        the share verified (falsified and misclassified samples are not robust)."""
        if self.verdicts is None or bool((self.verdicts[e] == VERDICTS.index("unknown")).any()):
            return None
        return self.certified_acc(e)


def certify_sweep(certifier: Certifier, x: torch.Tensor, y: torch.Tensor, eps: list[float], *,
                  only: torch.Tensor | None = None, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """The smallest margin bound of every sample at every eps, [len(eps), N] (CPU), by
    ``certifier`` on its model's device; samples outside the mask ``only`` are not bounded
    (``-inf``: not certified)."""
    lower = torch.full((len(eps), len(y)), float("-inf"))
    idx = torch.arange(len(y)) if only is None else only.nonzero().squeeze(1)
    if len(idx):
        for k, e in enumerate(eps):
            cert = certifier(x[idx], y[idx], eps=e, batch_size=batch_size, progress=progress)  # batch by batch
            lower[k, idx] = cert.lower
    return lower


def spot_checked(lower: torch.Tensor, count: int) -> torch.Tensor:
    """[len(eps), N]: per eps, the ``count`` proved samples (``lower`` > 0) with the smallest
    proved margin (ties: the lower index). The cascade's first stage attacks them anyway:
    a certifier that proves what an attack breaks stops the evaluation (``check_sandwich``)."""
    spot = torch.zeros_like(lower, dtype=torch.bool)
    for k, row in enumerate(lower):
        proved = (row > 0).nonzero().squeeze(1)
        order = torch.sort(row[proved], stable=True).indices[:count]
        spot[k, proved[order]] = True
    return spot

