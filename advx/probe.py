"""How robust is the model being trained? The held-out figures of adversarial training.

A weak probe can be fooled by the model it watches: a network that learns to defeat
fixed-step attacks (catastrophic overfitting, gradient masking) looks robust to FGSM and
PGD-20 while a stronger attack breaks it. So the per-epoch figure the best checkpoint is
chosen by is a cheaper cousin of ``--suite strong``: APGD-CE (step size adapted, no
fixed step to overfit to) and then the black-box Square attack on its survivors (it
reads no gradients, so masked gradients do not stop it). FGSM accuracy is kept beside
it: FGSM high while the probe falls is the signature of a collapse.

At the end of training the whole strong suite runs on the held-out images and its
figure is stored in the checkpoint (``metrics["final"]``), where ``advx eval`` shows it.
"""

from __future__ import annotations

import torch
from torch import nn

from advx.attacks import FGSM
from advx.attacks.registry import describe, suite
from advx.evaluate import evaluate
from advx.modes import accuracy

# Per epoch on the held-out slice: a few seconds on 2 CPU cores with a bf16 search.
PROBE = [("apgd", {"steps": 25}), ("square", {"queries": 100})]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def probe_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                  precision: str = "fp32", seed: int = 0) -> dict:
    """Clean, FGSM and probe accuracy (``PROBE``'s cascade: APGD-CE, then Square on its
    survivors) on a held-out slice; ``apgd_acc`` is the figure before Square. Every
    verdict is the fp32 model's (see ``advx.precision``)."""
    fgsm_x = FGSM(model, eps=eps)(x, y)
    ev = evaluate(model, x, y, attacks=PROBE, eps=[eps], seed=seed, precision=precision,
                  device=_device(model), progress=False, checks=False)
    return {"clean_acc_holdout": ev.clean_acc, "fgsm_acc": accuracy(model, fgsm_x, y),
            "apgd_acc": ev.robust_acc_by_attack[eps]["apgd"],
            "probe_acc": ev.robust_acc[eps]}


def final_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                  precision: str = "fp32", seed: int = 0, progress: bool = False) -> dict:
    """``--suite strong`` at ``eps`` on held-out images: the figure a trained model
    carries in its checkpoint."""
    ev = evaluate(model, x, y, attacks=suite("strong"), eps=[eps], seed=seed, precision=precision,
                  device=_device(model), progress=progress, checks=False)
    return {"suite": "strong", "attacks": describe(suite("strong")), "eps": eps, "n": len(y),
            "clean_acc": ev.clean_acc, "robust_acc": ev.robust_acc[eps],
            "robust_acc_by_attack": dict(ev.robust_acc_by_attack[eps]), "seconds": ev.seconds,
            "precision_used": dict(ev.settings.get("precision_used", {})),
            "images": "held-out training images"}


def catastrophic_overfitting(history: list[dict], *, key: str = "probe_acc", drop: float = 0.2,
                             kept: float = 0.2) -> bool:
    """The failure Wong et al. describe for FGSM training, seen with few-step PGD too: the
    model learns to beat the weak attack only. True for the last epoch of ``history`` when

    - ``key`` (the held-out probe) fell more than ``drop`` below its best so far while FGSM
      accuracy rose or stands more than ``drop`` above it (a collapse), or
    - FGSM leaves at least half of the held-out images standing and the probe keeps fewer
      than ``kept`` of them (masked from the start: nothing to fall from).

    A model that is simply weak (FGSM breaks most images too) does neither."""
    if not history:
        return False
    last = history[-1]
    masked = last["fgsm_acc"] >= 0.5 and last[key] < kept * last["fgsm_acc"]
    if masked or len(history) < 2:
        return masked
    best = max(r[key] for r in history[:-1])
    fell = last[key] < best - drop
    return fell and (last["fgsm_acc"] > history[-2]["fgsm_acc"] or last["fgsm_acc"] - last[key] > drop)
