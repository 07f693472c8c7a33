"""Verdicts where the interval is open: branch and bound closes the band of ``advx eval``,
and answers a VNN-LIB property on an ONNX network (``advx verify``).

After the attacks (an upper bound per sample) and α-CROWN (a lower bound), a sample that is
neither broken nor certified at some eps is *unresolved*. ``close_band`` runs branch and
bound (``advx.certify.verdicts``) on exactly those: a verified sample becomes certified, a
falsified one becomes broken by the stage "bab" (its counterexample confirmed by the model
itself, inside the ball and the pixel box), and what the time allows no verdict stays
unresolved.
"""

from __future__ import annotations

import time

import torch

from advx.certify import Certificate, Certifier
from advx.certify.properties import Property
from advx.certify.propagate import Ball
from advx.certify.verdicts import branch_and_bound
from advx.modes import frozen
from advx.norms import Norm

STAGE = "bab"  # the name under which branch and bound's counterexamples break samples


def close_band(certifier: Certifier, x: torch.Tensor, y: torch.Tensor, eps: list[float], lower: torch.Tensor,
               records, norm: Norm, *, stage: int, progress: bool = False) -> dict[float, float]:
    """Decide the unresolved samples (``records.robust[k]`` and ``lower[k] <= 0``) at every
    eps, in place: ``lower`` [len(eps), N] gets the proved bounds of the verified ones,
    ``records`` (broken_by, step, distance, robust) the falsified ones, broken by attack
    index ``stage``; a sample falsified at one eps is broken at every larger one (its
    counterexample lies in the larger balls too). Returns the robust accuracy per eps after."""
    after = {}
    order = sorted(range(len(eps)), key=lambda k: eps[k])
    for rank, k in enumerate(order):
        open_ = records.robust[k] & (lower[k] <= 0)
        if open_.any():
            idx = open_.nonzero().squeeze(1)
            certificate = Certificate(lower[k][idx].unsqueeze(1).clone(), eps[k], "bab", norm)
            certifier.decide(x[idx], y[idx], certificate, progress=progress)
            for j, i in enumerate(idx.tolist()):
                verdict = certificate.verdicts[j]
                if verdict == "verified":
                    lower[k, i] = certificate.proved[j]
                elif verdict == "falsified":
                    distance = float(norm.size(certificate.counterexamples[j].reshape(1, -1)
                                               - x[i].reshape(1, -1).cpu().float()))
                    for later in order[rank:]:
                        if records.robust[later][i]:
                            records.robust[later][i] = False
                            records.broken_by[later][i] = stage
                            records.step[later][i] = 0
                            records.distance[later][i] = distance
        after[eps[k]] = records.robust[k].float().mean().item()
    return after


def verify_property(model, input_shape, prop, *, timeout: float = 60.0, milp: float = 0.0) -> tuple[str, tuple | None, float]:
    """VNN-COMP's question for ``model`` (a chain ``advx.certify`` reads; inputs of
    ``input_shape``) and a VNN-LIB ``prop`` (``advx.vnnlib.Property``): can an input in its
    box reach its unsafe region? Returns ``(result, counterexample, seconds)``: "unsat"
    (verified: no input can), "sat" with ``(x, y)`` (flat; the model's own output confirms
    it), or "timeout" / "unknown". ``milp``: the share of ``timeout`` kept for an exact MILP
    on what branch and bound leaves open (``advx.certify.milp``)."""
    start = time.perf_counter()
    lower, upper = prop.lower.reshape(1, *input_shape), prop.upper.reshape(1, *input_shape)
    centre, radius = (lower + upper) / 2, (upper - lower) / 2
    certifier = Certifier(model, tuple(input_shape), method="alpha-crown",
                          bounds=(float(lower.min()) - 1.0, float(upper.max()) + 1.0), timeout=timeout,
                          milp=milp)
    certifier.check(centre)
    rows = [(C, d, g) for g, (C, d) in enumerate(prop.disjuncts)]
    spec = Property(torch.cat([C for C, _, _ in rows]), torch.cat([d for _, d, _ in rows]),
                    torch.cat([torch.full((len(d),), g, dtype=torch.long) for _, d, g in rows]))
    # the box as a ball: the centre, the half-widths as a per-pixel radius, no pixel box beyond it
    ball = Ball(centre, radius, certifier.norm, float("-inf"), float("inf"))
    outcome = branch_and_bound(certifier, centre, None, 0.0, prop=spec, ball=ball)
    seconds = time.perf_counter() - start
    if outcome.verdict == "verified":
        return "unsat", None, seconds
    if outcome.verdict == "falsified":
        x = outcome.counterexample.reshape(1, *input_shape)
        with frozen(model), torch.no_grad():
            y = model(x).float()
        return "sat", (x.flatten(), y.flatten()), seconds
    return ("timeout" if "timeout" in outcome.notes else "unknown"), None, seconds
