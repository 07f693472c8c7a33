"""``evaluate``: the number that goes in a paper (``advx eval``): robust accuracy over a test
set at several eps, the per-sample worst case over a list of attacks (one attack over a
dataset, for ``advx attack``, is ``advx.dataset_attack.run_attack``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import torch
from torch import nn

from advx import rng, sanity
from advx.attacks.base import Attack
from advx.attacks.budget import without_extra_runs
from advx.attacks.checks import check_labels, check_model_ready
from advx.attacks.eot import majority
from advx.attacks.registry import abilities, stage_name
from advx.adapt import Adaptation, adaptation_for
from advx.certify import Certifier
from advx.certify.sweep import SPOT_CHECK, certify_sweep, spot_checked
from advx.verify import STAGE, close_band
from advx.eval_config import EvalConfig
from advx.modes import frozen, predictions
from advx.norms import Linf, Norm
from advx.progress import bar as progress_bar
from advx.sanity import check_sandwich
from advx.validate import InputError, check_batch


@dataclass
class Evaluation:
    """The result of ``evaluate``. Accuracies are fractions of all ``n`` samples.

    robust_acc[eps]:            worst case: correct and not broken by any attack.
    robust_acc_by_attack[eps]:  per attack. With ``cascade`` (default) the accuracy
                                after each stage of the cascade (cumulative, as AutoAttack
                                reports it); without, each attack on its own.
    records:                    per-sample columns (``report.per_sample_rows`` lays them out).
    warnings:                   sanity-check name -> message, for the checks that fired.
    seconds_by_stage:           wall time per stage over every eps, the certifier's first.
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
    certified_acc: dict[float, float] | None = None  # with certify: the proved lower bounds
    seconds_by_stage: dict[str, float] = field(default_factory=dict)
    norm: Norm = field(default_factory=Linf)  # the threat model


class _Records:
    """Per-sample records of a sweep, [len(eps), N] each: the first attack (in cascade
    order) that broke the sample at that eps (-1: none), at which step, how far it moved
    (``distance``: the perturbation's size in the threat model's norm)."""

    def __init__(self, k_eps: int, n: int) -> None:
        self.broken_by = torch.full((k_eps, n), -1, dtype=torch.long)
        self.step = torch.zeros((k_eps, n), dtype=torch.long)
        self.distance = torch.zeros((k_eps, n))
        self.robust = torch.zeros((k_eps, n), dtype=torch.bool)

    def carry(self, k: int) -> None:
        """Nested balls: what broke a sample at eps k-1 broke it at eps k too."""
        for t in (self.broken_by, self.step, self.distance):
            t[k] = t[k - 1]

    def add(self, k: int, a: int, chunk: torch.Tensor, result) -> torch.Tensor:
        """Record what attack ``a`` broke among the samples ``chunk``; return their indices."""
        success = result.success.cpu()
        hit = chunk[success]
        new = self.broken_by[k][hit] == -1  # the first attack (in list order) to break it
        self.broken_by[k][hit[new]] = a
        self.step[k][hit[new]] = result.steps.cpu()[success][new]
        self.distance[k][hit[new]] = result.distance.cpu()[success][new]
        return hit


class _Distances:
    """What a minimum-norm attack found per sample, each sample attacked once: a sample is
    broken at eps iff its adversarial example is at distance <= eps, so one run answers
    every eps (its random stream does not depend on eps either)."""

    def __init__(self, n: int) -> None:
        self.done = torch.zeros(n, dtype=torch.bool)
        self.success = torch.zeros(n, dtype=torch.bool)
        self.distance = torch.full((n,), math.inf)
        self.steps = torch.zeros(n, dtype=torch.long)

    def run(self, attack: Attack, name: str, x, y, idx: torch.Tensor, config: EvalConfig, ids: torch.Tensor,
            store=None) -> None:
        """Attack the samples of ``idx`` not attacked yet (``ids``: their random streams' ids)."""
        todo = idx[~self.done[idx]]
        for chunk in todo.split(config.batch_size) if len(todo) else ():
            result = _run_chunk(attack, (name, "minimum-norm"), x, y, chunk, config, ids, store)
            self.success[chunk], self.distance[chunk] = result.success.cpu(), result.distance.cpu()
            self.steps[chunk], self.done[chunk] = result.steps.cpu(), True

    def at(self, idx: torch.Tensor, eps: float) -> SimpleNamespace:
        """The samples of ``idx`` as a result at ``eps`` (what ``_Records.add`` reads)."""
        return SimpleNamespace(success=self.success[idx] & (self.distance[idx] <= eps),
                               steps=self.steps[idx], distance=self.distance[idx])


def _run_chunk(attack: Attack, salt: tuple, x, y, chunk: torch.Tensor, config: EvalConfig, ids: torch.Tensor, store):
    """``attack.run`` on the samples ``chunk``, each with its own random stream; from the
    ``store`` (``advx.resume``) when an earlier, killed run got that far. With ``votes`` the
    verdict on each adversarial image is the majority over that many draws of the model."""
    def run():
        gen = rng.SampleRNG.from_ids(config.seed, ids[chunk], rng.salt_of(*salt))
        result = attack.run(x[chunk].to(config.device), y[chunk].to(config.device), generator=gen)
        if config.votes is not None:
            pred = majority(attack.model, result.x_adv, votes=config.votes, batch_size=config.batch_size,
                            device=config.device)
            result.success = (pred != y[chunk].cpu()).to(result.success.device)
        return result
    return run() if store is None else store.run("-".join(map(str, salt)), ids[chunk], run)


def _stage_results(attack: Attack, name: str, eps: float, x, y, idx: torch.Tensor, config: EvalConfig,
                   distances: _Distances | None, ids: torch.Tensor, store=None):
    """``(chunk, result)`` for the samples ``idx`` at ``eps``: batch by batch, each sample with
    its own random stream (seeded by its id in ``ids``); for a minimum-norm attack
    (``distances``) from its one run."""
    if distances is not None:
        distances.run(attack, name, x, y, idx, config, ids, store)
        yield idx, distances.at(idx, eps)
        return
    for chunk in idx.split(config.batch_size) if len(idx) else ():
        yield chunk, _run_chunk(attack, (name, eps), x, y, chunk, config, ids, store)


def _checked(model: nn.Module, x: torch.Tensor, y, config: EvalConfig) -> tuple[torch.Tensor, Certifier | None]:
    """Everything knowable before the attacks, checked before them: the images and labels
    (``check_batch``, as every attack checks them), the model's readiness and classes, and
    with ``certify`` that the model can be certified (read, and its chain run on a batch).
    Returns the labels as int64 and the certifier."""
    y = check_batch(x, y)
    first = x[:1].to(config.device)
    check_model_ready(model, first)
    with frozen(model):
        check_labels(model, first, y)
    certifier = None
    if config.certify:
        method = "alpha-crown" if config.certify == "bab" else config.certify  # bab: on what stays open
        certifier = Certifier(model, tuple(x.shape[1:]), method=method, norm=config.norm,
                              timeout=config.certify_timeout)
        certifier.check(x[:min(config.batch_size, 256)].to(config.device))
    return y, certifier


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: EvalConfig | None = None, *,
             sample_ids: torch.Tensor | None = None, store=None, adaptation: Adaptation | None = None,
             **options) -> Evaluation:
    """Robust accuracy of ``model`` on ``x`` [N, C, H, W], ``y`` [N] at each eps.

    Settings come as an ``EvalConfig`` or as its fields by keyword (``attacks``, ``eps``,
    ``norm``, ``steps``, ``alpha``, ``restarts``, ``cascade``, ``reuse_eps``,
    ``early_stop``, ``batch_size``, ``seed``, ``device``, ``checks``, ``progress``,
    ``precision``, ``certify``).

    A sample counts as robust at eps only if it is correctly classified and survives every
    attack. No work is wasted: only correct samples are attacked; with ``cascade`` each
    attack runs only on the survivors of the ones before it; with ``reuse_eps`` a sample
    broken at a smaller eps counts as broken at every larger one (the balls are nested) and
    is not attacked again; with ``early_stop`` iterative attacks stop each sample as soon
    as it is fooled. A minimum-norm attack (FAB, FMN, CW, DeepFool) runs once per sample,
    with no budget: the sample is broken at every eps at least as large as the distance of
    the adversarial example it found.

    With ``adapt`` (the default), ``advx.adapt`` first looks at the input gradients of the
    first images: if they are masked, the attacks run through BPDA with a black-box stage
    added; ``settings["adaptations"]`` says why (``adaptation``: one decided for a shard).

    On a randomized model (two forward passes differ) ``adapt`` draws its randomness from
    streams seeded by ``seed`` and the images (``advx.attacks.eot.Seeded``), the gradient
    attacks average ``eot`` draws per gradient, and every verdict (clean and adversarial) is
    the majority of ``votes`` draws; ``settings["verdict"]`` states the rule.

    With ``certify`` (a method of ``advx.certify``), every correct sample is first bounded
    at every eps: ``certified_acc`` <= true robust accuracy <= ``robust_acc``. A sample
    proved at an eps cannot be broken there, so the attacks skip it, except the
    ``SPOT_CHECK`` proved samples with the smallest proved margins, which the first stage
    attacks anyway, without extra runs near the boundary (``settings["spot_checked"]``:
    how many, per eps). A sample both certified and broken raises
    ``advx.sanity.SoundnessError`` naming it.

    Randomness: each (sample, attack, eps) has its own random stream, seeded from ``seed``,
    the sample's id (its index, or ``sample_ids[i]`` in a shard) and the attack's name and
    eps: per-sample results do not depend on the batch (only float rounding can flip a
    sample exactly at a decision boundary). ``store`` (``advx.resume.ChunkStore``) keeps
    every chunk's results as it completes, and replays them on ``--resume``.

    Example:
        >>> ev = evaluate(model, test.x, test.y, attacks=["fgsm", "pgd"], eps=[0.1, 0.3])
        >>> ev.robust_acc        # {0.1: 0.93, 0.3: 0.0}
    """
    if config is not None and options:
        raise InputError(f"give evaluate either config or options, got both ({', '.join(options)})")
    config = config if config is not None else EvalConfig(**options)
    y, certifier = _checked(model, x, y, config)
    if adaptation is None:
        adaptation = adaptation_for(model, x, y, config)
    config = replace(config, attacks=adaptation.attacks, eot=adaptation.eot, votes=adaptation.votes)
    target = adaptation.model  # what the attacks and checks run on (its outputs are the model's own)
    stages, eps, n = config.stages(), list(config.eps), len(y)
    ids = torch.arange(n) if sample_ids is None else torch.as_tensor(sample_ids, dtype=torch.long).cpu()
    if ids.shape != (n,):
        raise InputError(f"sample_ids must hold one id per image ({n}), got shape {list(ids.shape)}")
    start = time.perf_counter()
    if config.votes is None:
        pred_clean = predictions(model, x, batch_size=config.batch_size, device=config.device)
    else:  # the class that wins the majority of the draws (-1: none does)
        pred_clean = majority(target, x, votes=config.votes, batch_size=config.batch_size, device=config.device)
    correct = pred_clean == y.cpu()
    n_correct, records, by_attack = int(correct.sum()), _Records(len(eps), n), {}
    bar = progress_bar(len(eps) * len(stages) * n_correct, desc="advx eval", unit="sample-attack",
                       enabled=config.progress)
    # survivors: the worst case, correct and not broken by any attack (at any eps so far,
    # with reuse). alive[a]: not broken by attack a itself, so that without the cascade
    # each column is that attack on its own, exactly as if it had run alone.
    survivors, alive = correct.clone(), [correct.clone() for _ in stages]
    precision_used, seconds_by_stage, lower, spot = {}, {}, None, None
    if config.certify:  # certify first: a proved sample leaves the cascade, bar a spot check
        began = time.perf_counter()
        lower = certify_sweep(certifier, x, y, eps, only=correct, batch_size=min(config.batch_size, 256),
                              progress=config.progress)
        spot = spot_checked(lower, SPOT_CHECK)
        seconds_by_stage[config.certify] = time.perf_counter() - began
    # minimum-norm attacks run once per sample, whatever the number of eps
    once = {a: _Distances(n) for a, stage in enumerate(config.attacks)
            if not callable(stage) and abilities(stage_name(stage)).minimum_norm}
    for k, e in enumerate(eps):
        if k > 0 and config.reuse_eps:
            records.carry(k)
        else:
            survivors, alive = correct.clone(), [correct.clone() for _ in stages]
        by_attack[e] = {}
        for a, (name, make) in enumerate(stages):
            began = time.perf_counter()
            attack = make(target, None if a in once else e)
            precision_used[name] = attack.resolved_precision(config.device)
            todo = survivors if config.cascade else alive[a]
            if lower is not None:  # not proved, or (first stage only) spot-checked
                todo = todo & ((lower[k] <= 0) | spot[k] if a == 0 else lower[k] <= 0)
            idx = todo.nonzero().squeeze(1)
            bar.update(n_correct - len(idx))  # skipped work counts as done, so the ETA is honest
            proved = torch.zeros(len(idx), dtype=torch.bool) if lower is None else lower[k][idx] > 0
            for group, atk in ((idx[~proved], attack), (idx[proved], without_extra_runs(attack))):
                for chunk, result in _stage_results(atk, name, e, x, y, group, config, once.get(a), ids, store):
                    hit = records.add(k, a, chunk, result)
                    alive[a][hit] = False
                    survivors[hit] = False
                    bar.update(len(chunk))
            by_attack[e][name] = (survivors if config.cascade else alive[a]).float().mean().item()
            seconds_by_stage[name] = seconds_by_stage.get(name, 0.0) + time.perf_counter() - began
        records.robust[k] = survivors
    bar.close()

    names = [name for name, _ in stages]
    extra, certified_acc = {}, None
    if config.certify:  # the lower bounds, checked against the attacks' upper bounds
        check_sandwich(lower > 0, records.broken_by, correct, eps, names)
        if config.certify == "bab":  # the unresolved samples decided: the band closes
            began = time.perf_counter()
            after = close_band(certifier, x, y, eps, lower, records, config.norm, stage=len(names),
                               progress=config.progress)
            names.append(STAGE)
            seconds_by_stage[STAGE] = time.perf_counter() - began
            for e in eps:
                by_attack[e][STAGE] = after[e]
        extra = {"certified": lower > 0, "margin_lb": lower}
        certified_acc = {e: (lower[k] > 0).float().mean().item() for k, e in enumerate(eps)}
    ev = Evaluation(
        eps=eps, attacks=names, n=n, clean_acc=correct.float().mean().item(),
        robust_acc={e: records.robust[k].float().mean().item() for k, e in enumerate(eps)},
        robust_acc_by_attack=by_attack,
        records={"y": y.cpu(), "pred_clean": pred_clean, "robust": records.robust,
                 "broken_by": records.broken_by, "step": records.step, "distance": records.distance, **extra},
        seconds=time.perf_counter() - start,
        settings={**config.settings(names, n), "precision_used": precision_used,
                  "adaptations": dict(adaptation.reasons),
                  **({"spot_checked": [int(s.sum()) for s in spot]} if config.certify else {})},
        certified_acc=certified_acc, norm=config.norm, seconds_by_stage=seconds_by_stage,
    )
    if config.checks:
        ev.warnings = sanity_warnings(target, x, y, ev, config)
    return ev


def sanity_warnings(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ev: Evaluation,
                    config: EvalConfig) -> dict[str, str]:
    """``advx.sanity``'s checks on the evaluation ``ev`` of ``x``, ``y`` (the whole set: a
    sharded run calls this on rank 0 once the shards are merged)."""
    return sanity.run_checks(
        model, x, y, eps=ev.eps, robust_acc=ev.robust_acc, pred_clean=ev.records["pred_clean"],
        broken_by=ev.records["broken_by"],
        black_box=[not callable(s) and abilities(name).black_box for s, name in zip(config.attacks, ev.attacks)],
        names=ev.attacks,
        norm=config.norm, device=config.device, seed=config.seed)
