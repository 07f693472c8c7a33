"""Dataset-level robustness.

``run_attack``: one attack over many images (``advx attack``).
``evaluate``:   the number that goes in a paper (``advx eval``): robust accuracy over
                a test set at several eps, per-sample worst case over a list of attacks.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from advx import rng, sanity
from advx.attacks.base import Attack, frozen
from advx.attacks.checks import check_model_ready, validate_logits
from advx.attacks.registry import AttackFactory, attack_class, check_options_apply, describe, stage_factory
from advx.norms import get_norm
from advx.validate import check_number, check_seed

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

    def summary(self) -> dict[str, float | int]:
        """Clean / robust accuracy, success rate on originally-correct samples, norms, speed.

        For a targeted run, samples whose true label already is the target are left out
        of the success rate.
        """
        correct = self.pred_clean == self.y
        robust = correct & (self.pred_adv == self.y)
        eligible = correct if self.target is None else correct & (self.target != self.y)
        n_eligible = int(eligible.sum())
        norms = self.distance[eligible]
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
) -> DatasetResult:
    """Attack every image of ``x`` [N, 1, 28, 28] (labels ``y`` [N]) batch by batch.

    For a targeted attack pass ``target`` [N]. One generator, seeded from the
    attack, runs through all batches, so the run is reproducible.
    """
    batch_size = check_number("batch_size", batch_size, minimum=1, integer=True)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if target is not None and not attack.targeted:
        raise ValueError("target was given but the attack is untargeted (targeted=False)")
    if attack.targeted and target is None:
        raise ValueError("the attack is targeted: pass target labels (target=...)")
    generator = attack.make_generator(device)
    goal = y if target is None else target
    pred_clean, pred_adv, success, distance, kept = [], [], [], [], []
    start = time.perf_counter()
    bar = tqdm(total=len(y), desc=type(attack).__name__, unit="img", disable=not progress)
    for first in range(0, len(y), batch_size):
        batch = slice(first, first + batch_size)
        xb, yb, gb = x[batch].to(device), y[batch].to(device), goal[batch].to(device)
        with torch.no_grad(), frozen(model):
            pred_clean.append(validate_logits(model(xb), len(xb)).argmax(1).cpu())
        result = attack.run(xb, gb, generator=generator)
        pred_adv.append(result.logits.argmax(1).cpu())
        success.append(result.success.cpu())
        distance.append(result.distance.cpu())
        if sum(len(k) for k in kept) < keep:
            kept.append(result.x_adv[:keep].cpu())
        bar.update(len(yb))
    bar.close()
    return DatasetResult(
        y=y.cpu(), target=None if target is None else target.cpu(),
        pred_clean=torch.cat(pred_clean), pred_adv=torch.cat(pred_adv),
        success=torch.cat(success), distance=torch.cat(distance),
        x_adv=torch.cat(kept)[:keep], seconds=time.perf_counter() - start,
    )


# ------------------------------------------------------------------------ evaluate
@dataclass
class Evaluation:
    """The result of ``evaluate``. Accuracies are fractions of all ``n`` samples.

    robust_acc[eps]:            worst case: correct and not broken by any attack.
    robust_acc_by_attack[eps]:  per attack. With ``cascade`` (default) the accuracy
                                after each stage of the cascade (cumulative, as AutoAttack
                                reports it); without, each attack on its own.
    records:                    per-sample columns (see ``per_sample_rows``).
    warnings:                   sanity-check name -> message, for the checks that fired.
    """

    eps: list[float]
    attacks: list[str]
    n: int
    clean_acc: float
    robust_acc: dict[float, float]
    robust_acc_by_attack: dict[float, dict[str, float]]
    records: dict[str, torch.Tensor]
    seconds: float
    settings: dict = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)

    def per_sample_rows(self) -> list[dict]:
        """One dict per sample: index, label, clean prediction, and for each eps whether it
        is robust, which attack broke it first (``-`` if none), at which step, and the
        perturbation norm. A sample broken at a smaller eps keeps that record."""
        r = {k: v.tolist() for k, v in self.records.items()}  # plain lists: fast to index
        rows = []
        for i in range(self.n):
            row = {"index": i, "label": r["y"][i], "pred_clean": r["pred_clean"][i]}
            for k, e in enumerate(self.eps):
                who = r["broken_by"][k][i]
                row[f"robust@{e:g}"] = int(r["robust"][k][i])
                row[f"attack@{e:g}"] = self.attacks[who] if who >= 0 else "-"
                row[f"step@{e:g}"] = r["step"][k][i] if who >= 0 else ""
                row[f"norm@{e:g}"] = f"{r['norm'][k][i]:.5f}" if who >= 0 else ""
            rows.append(row)
        return rows


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attacks: Sequence[str | tuple[str, dict] | AttackFactory] = ("fgsm", "pgd"),
    eps: Sequence[float] = (0.1, 0.3),
    norm: str = "inf",
    steps: int | None = None,
    alpha: float | None = None,
    restarts: int | None = None,
    cascade: bool = True,
    reuse_eps: bool = True,
    early_stop: bool = True,
    batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device = "cpu",
    checks: bool = True,
    progress: bool = True,
) -> Evaluation:
    """Robust accuracy of ``model`` on ``x`` [N, 1, 28, 28], ``y`` [N] at each ``eps``.

    A sample counts as robust at eps only if it is correctly classified and survives
    every attack. No work is wasted: only correctly classified samples are attacked;
    with ``cascade`` each attack runs only on the survivors of the ones before it
    (list cheap attacks first); with ``reuse_eps`` a sample broken at a smaller eps is
    counted as broken at every larger one (the eps-balls are nested, so its adversarial
    example still qualifies) and is not attacked again; with ``early_stop`` iterative
    attacks stop each sample as soon as it is fooled.

    ``attacks`` are names from ``advx.ATTACKS`` (built with ``norm``, ``steps``,
    ``alpha``, ``restarts`` where they apply), ``(name, options)`` pairs such as
    ``SUITES["strong"]`` holds (``steps``/``restarts`` given here win over those
    options), or factories ``f(model, eps) -> Attack``.

    Randomness: each (sample, attack, eps) has its own random stream, seeded from
    ``seed``, the sample's index and the attack's name and eps. The per-sample results
    therefore do not depend on the batch size or on which other samples are attacked
    alongside; only float rounding (results of batched convolutions differ in the last
    bits across batch sizes) can flip a sample that sits exactly at a decision boundary.

    Example:
        >>> ev = evaluate(model, test.x, test.y, attacks=["fgsm", "pgd"], eps=[0.1, 0.3])
        >>> ev.robust_acc        # {0.1: 0.93, 0.3: 0.0}
    """
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(y) == 0:
        raise ValueError("x must hold at least one image, got an empty set")
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must be a tensor of integer class labels, got "
                         f"{y.dtype if isinstance(y, torch.Tensor) else type(y).__name__}")
    y = y.long()
    if not attacks:
        raise ValueError("attacks must name at least one attack, got an empty list")
    if isinstance(eps, numbers.Real) or (isinstance(eps, torch.Tensor) and eps.dim() == 0):
        eps = [eps]  # one budget
    if isinstance(eps, (str, bytes)) or not len(eps):
        raise ValueError(f"eps must hold at least one value, got {eps!r}")
    eps = sorted(check_number("eps", e, minimum=0) for e in eps)
    repeated = sorted({e for e in eps if eps.count(e) > 1})
    if repeated:
        raise ValueError(f"eps must not repeat a value, got {', '.join(f'{e:g}' for e in repeated)} more than once")
    batch_size = check_number("batch_size", batch_size, minimum=1, integer=True)
    seed = check_seed("seed", seed)
    norm = get_norm(norm).name
    options = dict(norm=norm, steps=steps, alpha=alpha, restarts=restarts,
                   early_stop=early_stop or None, seed=seed)
    stages = [stage_factory(a, options) for a in attacks]
    names = [name for name, _ in stages]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"attacks must not repeat an attack, got {', '.join(map(repr, repeated))} more than "
                         f"once: each column of the report is one attack")
    check_options_apply(attacks, dict(steps=steps, alpha=alpha, restarts=restarts))
    n = len(y)
    start = time.perf_counter()

    check_model_ready(model, x[:1].to(device))
    pred_clean = torch.empty(n, dtype=torch.long)
    with torch.no_grad(), frozen(model):
        for first in range(0, n, batch_size):
            xb = x[first:first + batch_size].to(device)
            pred_clean[first:first + len(xb)] = validate_logits(model(xb), len(xb)).argmax(1).cpu()
    correct = pred_clean == y.cpu()

    k_eps = len(eps)
    broken_by = torch.full((k_eps, n), -1, dtype=torch.long)
    step = torch.zeros((k_eps, n), dtype=torch.long)
    size = torch.zeros((k_eps, n))
    robust = torch.zeros((k_eps, n), dtype=torch.bool)
    by_attack: dict[float, dict[str, float]] = {}

    total = k_eps * len(stages) * int(correct.sum())
    bar = tqdm(total=total, desc="advx eval", unit="sample-attack", disable=not progress)
    n_correct = int(correct.sum())
    # survivors: the worst case, correct and not broken by any attack (at any eps so far,
    # with reuse). alive[a]: not broken by attack a itself, so that without the cascade
    # each column is that attack on its own, exactly as if it had run alone.
    survivors = correct.clone()
    alive = [correct.clone() for _ in stages]
    for k, e in enumerate(eps):
        if k > 0 and reuse_eps:  # nested balls: broken at a smaller eps is broken here too
            broken_by[k], step[k], size[k] = broken_by[k - 1].clone(), step[k - 1].clone(), size[k - 1].clone()
        else:
            survivors = correct.clone()
            alive = [correct.clone() for _ in stages]
        by_attack[e] = {}
        for a, (name, make) in enumerate(stages):
            attack = make(model, e)
            idx = (survivors if cascade else alive[a]).nonzero().squeeze(1)
            bar.update(n_correct - len(idx))  # skipped work counts as done, so the ETA is honest
            for chunk in idx.split(batch_size) if len(idx) else ():
                gen = rng.SampleRNG.from_ids(seed, chunk, rng.salt_of(name, e))
                result = attack.run(x[chunk].to(device), y[chunk].to(device), generator=gen)
                success = result.success.cpu()
                hit = chunk[success]
                new = broken_by[k][hit] == -1  # the first attack (in list order) to break it
                broken_by[k][hit[new]] = a
                step[k][hit[new]] = result.steps.cpu()[success][new]
                size[k][hit[new]] = result.distance.cpu()[success][new]
                alive[a][hit] = False
                survivors[hit] = False
                bar.update(len(chunk))
            by_attack[e][name] = (survivors if cascade else alive[a]).float().mean().item()
        robust[k] = survivors
    bar.close()

    ev = Evaluation(
        eps=eps, attacks=names, n=n,
        clean_acc=correct.float().mean().item(),
        robust_acc={e: robust[k].float().mean().item() for k, e in enumerate(eps)},
        robust_acc_by_attack=by_attack,
        records={"y": y.cpu(), "pred_clean": pred_clean, "robust": robust,
                 "broken_by": broken_by, "step": step, "norm": size},
        seconds=time.perf_counter() - start,
        settings={"attacks": names, "stages": describe(attacks, options), "eps": eps, "norm": norm,
                  "steps": steps, "alpha": alpha,
                  "restarts": restarts, "cascade": cascade, "reuse_eps": reuse_eps,
                  "early_stop": early_stop, "batch_size": batch_size, "seed": seed,
                  "device": str(device), "n": n},
    )
    if checks:
        ev.warnings = sanity.run_checks(
            model, x, y, eps=eps, robust_acc=ev.robust_acc, pred_clean=pred_clean, broken_by=broken_by,
            black_box=[not callable(a) and attack_class(name).black_box for a, name in zip(attacks, names)],
            norm=norm, device=device, seed=seed)
    return ev
