"""Branch and bound over a test set: a verdict per sample, verified / falsified / unknown.

``decide`` runs ``advx.certify.bab`` on every sample a certificate (α-CROWN's) has not
proved, one sample at a time, and fills the certificate's verdicts, counterexamples,
seconds and proved bounds. A counterexample counts only once the model itself (fp32, eval
mode) confirms it inside the ball and the pixel box. With a ``store``
(``advx.resume.ChunkStore``) each verdict is written as it is decided, so a killed run
resumed later redoes nothing already decided.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from advx.certify import bab
from advx.certify.propagate import Ball
from advx.modes import checked_logits, device_of, frozen, weight_dtype
from advx.progress import bar as progress_bar

VERDICTS = ("verified", "falsified", "unknown")
FIELDS = ("verdict", "lower", "seconds", "domains", "counterexample")


def decide(certifier, x: torch.Tensor, y: torch.Tensor, certificate, *, only: torch.Tensor | None = None,
           store=None, ids: torch.Tensor | None = None, progress: bool = False):
    """Fill ``certificate`` (of ``x``, ``y``) with BaB's verdicts for the samples it does not
    prove (within the mask ``only``, if given); the others are "verified" (if proved) or
    "unknown". ``ids``: the samples' ids in ``store``."""
    n, eps, device = len(y), certificate.eps, device_of(certifier.model)
    ids = torch.arange(n) if ids is None else ids
    lower = certificate.margins.min(1).values
    found = ["verified" if v > 0 else "unknown" for v in lower.tolist()]
    proved, seconds = lower.clone(), torch.zeros(n)
    todo = (lower <= 0) if only is None else (lower <= 0) & only.cpu()
    bar = progress_bar(int(todo.sum()), desc=f"bab eps={eps:g}", unit="sample", enabled=progress, leave=False)
    counts = dict.fromkeys(VERDICTS, 0)
    for i in todo.nonzero().flatten().tolist():
        def run(i=i):
            return _packed(branch_and_bound(certifier, x[i:i + 1].to(device), int(y[i]), eps), x.shape[1:])
        outcome = run() if store is None else store.run(f"bab-{eps:g}", ids[i:i + 1], run, fields=FIELDS)
        verdict = VERDICTS[int(outcome.verdict)]
        found[i], seconds[i] = verdict, float(outcome.seconds)
        proved[i] = float(outcome.lower) if verdict == "verified" else min(float(lower[i]), 0.0)
        if verdict == "falsified":
            certificate.counterexamples[i] = outcome.counterexample.cpu()
        counts[verdict] += 1
        bar.set_postfix(counts, refresh=False)
        bar.update(1)
    bar.close()
    certificate.verdicts, certificate.seconds, certificate.proved = found, seconds, proved
    return certificate


def _packed(outcome: bab.Outcome, shape) -> SimpleNamespace:
    """An outcome as the tensors a ``ChunkStore`` keeps."""
    example = outcome.counterexample if outcome.counterexample is not None else torch.zeros(shape)
    return SimpleNamespace(verdict=torch.tensor(VERDICTS.index(outcome.verdict)),
                           lower=torch.tensor(outcome.lower), seconds=torch.tensor(outcome.seconds),
                           domains=torch.tensor(outcome.domains), counterexample=example.reshape(shape).cpu())


def branch_and_bound(certifier, x: torch.Tensor, label: int | None, eps: float, prop: bab.Property | None = None,
                     ball: Ball | None = None) -> bab.Outcome:
    """The verdict on one input ``x`` [1, ...]: ``prop`` (default: the class ``label`` wins)
    over ``ball`` (default: the eps-ball in the certifier's pixel box). A counterexample is
    returned only if the model itself (fp32, eval mode) confirms it, inside the set."""
    norm = certifier.norm
    ball = ball or Ball(x.float(), float(eps), norm, *certifier.bounds)
    prop = prop or bab.Property.robustness(label, certifier.num_classes, device=x.device)
    low, high = ball.box()
    model = certifier.model

    def confirm(points):
        inside = ((points >= low) & (points <= high)).flatten(1).all(1)
        if not norm.ball_is_box:
            inside &= norm.size(points - ball.x) <= float(ball.eps) * (1 + 1e-6)
        with frozen(model), torch.autocast(points.device.type, enabled=False):
            z = checked_logits(model(points.to(weight_dtype(model))), len(points)).float()
        return inside & prop.violated(z)

    settings = bab.Settings(timeout=certifier.timeout, root_iterations=max(certifier.iterations, 1) * 2,
                            milp=certifier.milp)
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        return bab.branch_and_bound(certifier.split_chain, ball, prop, settings, check=confirm)
