"""``run_attack``: one attack over many images, batch by batch (``advx attack``); the
per-sample outcome in a ``DatasetResult``. ``advx.evaluate`` takes the worst case over
several attacks; ``advx.sharded.run_attack_sharded`` spreads this over ranks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from advx import rng
from advx.attacks.base import Attack
from advx.modes import predictions
from advx.progress import bar as progress_bar
from advx.validate import InputError, check_batch, check_number


@dataclass
class DatasetResult:
    """Per-sample record of one attack over a dataset (all tensors [N], on the CPU).

    y:         true labels.         target: target labels (targeted) or None.
    pred_clean / pred_adv: predictions on the clean and the attacked images.
    success:   the attack reached its goal on the sample.
    distance:  perturbation size in the attack's norm.
    x_adv:     the first ``keep`` adversarial images (for pictures).
    """

    y: torch.Tensor
    target: torch.Tensor | None
    pred_clean: torch.Tensor
    pred_adv: torch.Tensor
    success: torch.Tensor
    distance: torch.Tensor
    x_adv: torch.Tensor
    seconds: float


def run_attack(
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    target: torch.Tensor | None = None,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    keep: int = 8,
    progress: bool = True,
    sample_ids: torch.Tensor | None = None,
) -> DatasetResult:
    """Attack every image of ``x`` [N, C, H, W] (labels ``y`` [N]) batch by batch with
    ``attack`` (on the model it was built for); the images go to ``device`` one batch at a
    time, and only the first ``keep`` adversarial images are kept (for pictures).

    For a targeted attack pass ``target`` [N]. With a ``seed`` (and no ``generator``) the
    attack gives each sample its own random stream, seeded from the seed and the sample's
    id (its index, or ``sample_ids[i]``: a shard of a larger set passes its indices in that
    set), so a sample's result does not depend on the batch size or on the other samples:
    what ``advx.sharded`` relies on to shard the run. Otherwise one generator runs
    through all batches.
    """
    batch_size = check_number("batch_size", batch_size, minimum=1, integer=True)
    check_batch(x, y, attack.bounds)
    if target is not None and not attack.targeted:
        raise InputError("target was given but the attack is untargeted (targeted=False)")
    if attack.targeted and target is None:
        raise InputError("the attack is targeted: pass target labels (target=...)")
    if target is not None:
        check_batch(x, target, attack.bounds, what="target labels", name="target")
    ids = torch.arange(len(y)) if sample_ids is None else torch.as_tensor(sample_ids, dtype=torch.long).cpu()
    if ids.shape != (len(y),):
        raise InputError(f"sample_ids must hold one id per image ({len(y)}), got shape {list(ids.shape)}")
    per_sample = attack.generator is None and attack.seed is not None
    generator = None if per_sample else attack.make_generator(device)
    goal = y if target is None else target
    pred_clean, pred_adv, success, distance, kept = [], [], [], [], []
    start = time.perf_counter()
    bar = progress_bar(len(y), desc=type(attack).__name__, unit="img", enabled=progress)
    for first in range(0, len(y), batch_size):
        batch = slice(first, first + batch_size)
        xb, yb, goal_batch = x[batch].to(device), y[batch].to(device), goal[batch].to(device)
        pred_clean.append(predictions(attack.model, xb, batch_size=len(xb)))
        if per_sample:
            generator = rng.SampleRNG.from_ids(attack.seed, ids[batch], rng.salt_of(type(attack).__name__))
        result = attack.run(xb, goal_batch, generator=generator)
        pred_adv.append(result.logits.argmax(1).cpu())
        success.append(result.success.cpu())
        distance.append(result.distance.cpu())
        kept.append(result.x_adv[(ids[batch] < keep).to(result.x_adv.device)].cpu())  # the whole set's first
        bar.update(len(yb))
    bar.close()
    return DatasetResult(
        y=y.cpu(), target=None if target is None else target.cpu(),
        pred_clean=torch.cat(pred_clean), pred_adv=torch.cat(pred_adv),
        success=torch.cat(success), distance=torch.cat(distance),
        x_adv=torch.cat(kept) if kept else x[:0].cpu(), seconds=time.perf_counter() - start,
    )
