"""Dataset-level robustness: run an attack over many images and summarise it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from advx.attacks.base import Attack, frozen
from advx.data import iterate_batches


@dataclass
class AttackRun:
    """Per-sample record of one attack over a dataset (all tensors [N], on the CPU).

    y:         true labels.         target: target labels (targeted) or None.
    pred_clean / pred_adv: predictions on the clean and the attacked images.
    success:   the attack reached its goal on the sample.
    norm:      perturbation size in the attack's norm.
    x_adv:     the first ``keep`` adversarial images (for pictures).
    """

    y: torch.Tensor
    target: torch.Tensor | None
    pred_clean: torch.Tensor
    pred_adv: torch.Tensor
    success: torch.Tensor
    norm: torch.Tensor
    x_adv: torch.Tensor
    seconds: float

    def summary(self) -> dict[str, float | int]:
        """Clean / robust accuracy, success rate on originally-correct samples, norms, speed.

        For a targeted run, samples whose true label already is the target are left out
        of the success rate.
        """
        correct = self.pred_clean == self.y
        robust = correct & (self.pred_adv == self.y)
        eligible = correct if self.target is None else correct & (self.target != self.y)
        n_eligible = int(eligible.sum())
        norms = self.norm[eligible]
        return {
            "n": len(self.y),
            "clean_acc": correct.float().mean().item(),
            "robust_acc": robust.float().mean().item(),
            "attacked": n_eligible,
            "success_rate": self.success[eligible].float().mean().item() if n_eligible else float("nan"),
            "mean_norm": norms.mean().item() if n_eligible else float("nan"),
            "max_norm": norms.max().item() if n_eligible else float("nan"),
            "seconds": self.seconds,
            "images_per_s": len(self.y) / self.seconds if self.seconds > 0 else float("inf"),
        }


def run_attack(
    model: nn.Module,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    target: torch.Tensor | None = None,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    keep: int = 8,
    progress: bool = True,
) -> AttackRun:
    """Attack every image of ``x`` [N, 1, 28, 28] (labels ``y`` [N]) batch by batch.

    For a targeted attack pass ``target`` [N]. One generator, seeded from the
    attack, runs through all batches, so the run is reproducible.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if target is not None and not attack.targeted:
        raise ValueError("target was given but the attack is untargeted (targeted=False)")
    if attack.targeted and target is None:
        raise ValueError("the attack is targeted: pass target labels (target=...)")
    generator = attack.make_generator(device)
    goal = y if target is None else target
    pred_clean, pred_adv, success, norm, kept = [], [], [], [], []
    start = time.perf_counter()
    bar = tqdm(total=len(y), desc=type(attack).__name__, unit="img", disable=not progress)
    for (xb, yb), (_, gb) in zip(iterate_batches(x, y, batch_size), iterate_batches(x, goal, batch_size)):
        xb, yb, gb = xb.to(device), yb.to(device), gb.to(device)
        with torch.no_grad(), frozen(model):
            pred_clean.append(model(xb).argmax(1).cpu())
        result = attack.run(xb, gb, generator=generator)
        pred_adv.append(result.logits.argmax(1).cpu())
        success.append(result.success.cpu())
        norm.append(result.norm.cpu())
        if sum(len(k) for k in kept) < keep:
            kept.append(result.x_adv[:keep].cpu())
        bar.update(len(yb))
    bar.close()
    return AttackRun(
        y=y.cpu(), target=None if target is None else target.cpu(),
        pred_clean=torch.cat(pred_clean), pred_adv=torch.cat(pred_adv),
        success=torch.cat(success), norm=torch.cat(norm),
        x_adv=torch.cat(kept)[:keep], seconds=time.perf_counter() - start,
    )
