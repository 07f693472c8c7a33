"""Certification over a test set at several eps, and the sandwich check of ``advx eval --certify``:

    certified accuracy  <=  true robust accuracy  <=  attack robust accuracy

A sample both certified (proved robust) and broken (an attack found an adversarial
example) at the same eps means one of the two is wrong: that is never a quiet number.
"""

from __future__ import annotations

import torch
from torch import nn

from advx.bounds import Certifier
from advx.validate import AdvxError


class SoundnessError(AdvxError, RuntimeError):
    """A sample is both certified and broken (or certified though misclassified): a bug
    in the bounds or in the attack, named with the sample, the eps and the attack."""


def certify_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: list[float], *,
                  method: str, norm: str = "inf", only: torch.Tensor | None = None,
                  batch_size: int = 256, device="cpu", progress: bool = False) -> torch.Tensor:
    """The smallest margin bound of every sample at every eps, [len(eps), N] (CPU);
    samples outside the mask ``only`` are not bounded (``-inf``: not certified)."""
    certifier = Certifier(model, tuple(x.shape[1:]), method=method, norm=norm)
    lower = torch.full((len(eps), len(y)), float("-inf"))
    idx = torch.arange(len(y)) if only is None else only.nonzero().squeeze(1)
    if len(idx):
        for k, e in enumerate(eps):
            cert = certifier(x[idx], y[idx], eps=e, batch_size=batch_size, progress=progress)  # batch by batch
            lower[k, idx] = cert.lower
    return lower


def check_sandwich(certified: torch.Tensor, broken_by: torch.Tensor, correct: torch.Tensor,
                   eps: list[float], attacks: list[str]) -> None:
    """Raise ``SoundnessError`` if a sample is certified but broken or misclassified.
    ``certified``, ``broken_by`` (-1: not broken): [len(eps), N]; ``correct``: [N]."""
    for k, e in enumerate(eps):
        wrong = certified[k] & ~correct
        if wrong.any():
            i = int(wrong.nonzero()[0])
            raise SoundnessError(f"sample {i} is certified at eps={e:g} but the model misclassifies it "
                                 f"(the bounds are wrong); {int(wrong.sum())} such samples")
        clash = certified[k] & (broken_by[k] >= 0)
        if clash.any():
            i = int(clash.nonzero()[0])
            raise SoundnessError(f"sample {i} is certified at eps={e:g} and broken by "
                                 f"{attacks[int(broken_by[k, i])]} at the same eps: the certificate or the "
                                 f"attack is wrong; {int(clash.sum())} such samples")
