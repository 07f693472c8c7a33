"""α-CROWN, branch and bound and their verdicts, held against exact answers.

The ground truth is an exact mixed-integer program (``tests/exact.py``, HiGHS through SciPy)
on tiny ReLU networks: α-CROWN's bound must lie between CROWN's and the true minimum, a
"verified" verdict must never meet a counterexample the MILP finds, and a "falsified" one
must come with a point inside the ball whose forward pass breaks the property. Bounds on
subdomains with split ReLUs are checked at sampled points of the subdomain. Mutants (a
slope outside [0, 1], a wrong sign of β, a split that keeps only one side) show that these
checks fail when the code is wrong.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advx
from advx.certify import Certifier, alpha, bab
from advx.certify.graph import read_model
from advx.certify.propagate import Ball, layer_boxes, lower_bounds, margin_spec

exact = pytest.importorskip("exact")

WIDTH = 6


def tiny(seed: int, hidden=(12, 12), classes: int = 3) -> nn.Sequential:
    """A random ReLU network with ~24 ReLUs and biases large enough to make many unstable."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sizes = (WIDTH, *hidden, classes)
        layers: list = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        net = nn.Sequential(*layers[:-1])
        for m in net.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=1.5 / m.in_features ** 0.5)
                nn.init.uniform_(m.bias, -0.3, 0.3)
        return net.eval()


def instance(seed: int):
    """(model, x [1, WIDTH], label, eps, exact smallest margin over the ball)."""
    model = tiny(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, WIDTH, generator=g)
    eps = float(torch.empty(1).uniform_(0.05, 0.45, generator=g))
    with torch.no_grad():
        label = int(model(x).argmax())
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    truth = min(exact.minimum(model, lo, hi, torch.eye(3)[label] - torch.eye(3)[j])[0] for j in range(3) if j != label)
    return model, x, label, eps, truth


INSTANCES = [instance(seed) for seed in range(40)]


def test_alpha_crown_lies_between_crown_and_the_exact_minimum():
    improved = 0
    for model, x, label, eps, truth in INSTANCES:
        y = torch.tensor([label])
        crown = advx.certify(model, x, y, eps=eps, method="crown", screen=False).lower
        found = advx.certify(model, x, y, eps=eps, method="alpha-crown", screen=False).lower
        assert crown - 1e-6 <= found <= truth + 1e-5, (crown, found, truth)
        improved += int(found > crown + 1e-4)
    assert improved >= 5, improved  # the optimisation does something


def verdicts(settings=bab.Settings(timeout=20), check=None, instances=INSTANCES):
    out = []
    for model, x, label, eps, truth in instances:
        chain = read_model(model, (WIDTH,))
        outcome = bab.branch_and_bound(chain, Ball(x, eps), bab.Property.robustness(label, 3), settings, check=check)
        out.append((model, x, label, eps, truth, outcome))
    return out


def test_every_verdict_agrees_with_the_exact_answer():
    decided = 0
    for model, x, label, eps, truth, outcome in verdicts():
        if outcome.verdict == "verified":
            assert truth > 0, (truth, outcome)
            assert outcome.lower > 0
        elif outcome.verdict == "falsified":
            point = outcome.counterexample.reshape(1, WIDTH)
            assert (point - x).abs().max() <= eps + 1e-6 and point.min() >= 0 and point.max() <= 1
            with torch.no_grad():
                z = model(point)[0]
            assert z.argmax() != label or (z[label] <= z.max()), z
            assert truth <= 1e-6
        decided += outcome.verdict != "unknown"
    assert (sum(t > 0 for *_, t in INSTANCES) >= 10) and (sum(t < 0 for *_, t in INSTANCES) >= 5)
    assert decided >= len(INSTANCES) - 2, decided  # complete in practice on networks this small


def top_class_property(label: int, classes: int = 3) -> bab.Property:
    """Robustness written as VNN-LIB would: violated when some other class j is on top, i.e.
    every row ``z_k - z_j <= 0`` of j's group holds (groups of ``classes - 1`` rows)."""
    rows = [torch.eye(classes)[k] - torch.eye(classes)[j]
            for j in range(classes) if j != label for k in range(classes) if k != j]
    return bab.Property(torch.stack(rows), torch.zeros(len(rows)), torch.arange(len(rows)) // (classes - 1))


def test_groups_of_several_rows_agree_with_the_exact_answer():
    """Each group is searched on its own: a group's rows must stay together (a violation
    needs all of them), and every group must be proved for "verified". (BaBSR's choice of
    neuron alone here; the other tests use the default, the best of three candidates.)"""
    decided = 0
    for model, x, label, eps, truth in INSTANCES[:20]:
        chain = read_model(model, (WIDTH,))
        outcome = bab.branch_and_bound(chain, Ball(x, eps), top_class_property(label),
                                       bab.Settings(timeout=10, candidates=1))
        assert outcome.verdict != "verified" or truth > -1e-6, (truth, outcome)
        assert outcome.verdict != "falsified" or truth < 1e-6, (truth, outcome)
        if outcome.verdict == "falsified":
            with torch.no_grad():
                assert model(outcome.counterexample.reshape(1, WIDTH)).argmax() != label
        decided += outcome.verdict != "unknown"
    assert decided >= 18, decided


def split_domain_violations(seed: int = 3, samples: int = 40000, *, slope: float | None = None,
                            beta: float = 3.0) -> int:
    """Bounds of random subdomains (random splits of unstable ReLUs, random α and β) against
    the smallest margin at sampled points of each subdomain; and the subdomains' boxes
    against the sampled pre-activations. Returns how many bounds or boxes fail. ``slope``:
    every α this value (instead of random); ``beta``: the scale of the random β."""
    model, x, label, eps, _ = instance(seed)
    chain = read_model(model, (WIDTH,))
    ball = Ball(x, eps)
    boxes = layer_boxes(chain, ball, "crown")
    relus = [i for i, op in enumerate(chain) if isinstance(op, type(chain[2]))]
    g = torch.Generator().manual_seed(seed)
    D, C = 6, bab.Property.robustness(label, 3).C
    splits = {}
    for i in relus:
        l, u = boxes[i]
        unstable = ((l < 0) & (u > 0)).expand(D, -1)
        choice = torch.randint(-1, 2, unstable.shape, generator=g, dtype=torch.int8)
        splits[i] = torch.where(unstable & (torch.rand(unstable.shape, generator=g) < 0.4), choice,
                                torch.zeros_like(choice))
    domains = alpha.Domains(torch.zeros(D, dtype=torch.long), splits)
    rows = D * len(C)
    a = {i: torch.rand(rows, *boxes[i][0].shape[1:], generator=g) for i in relus}
    if slope is not None:
        a = {i: torch.full_like(t, slope) for i, t in a.items()}
    b = {i: beta * torch.rand(rows, *boxes[i][0].shape[1:], generator=g) for i in relus}
    found = alpha.bound(chain, ball, boxes, domains, C.expand(D, -1, -1), a, b).lower  # [D, S]
    points = ((x + (2 * torch.rand(samples, WIDTH, generator=g) - 1) * eps).clamp(0, 1))
    points = torch.cat([points, (x + eps * torch.randint(-1, 2, (samples, WIDTH), generator=g)).clamp(0, 1)])
    h, pre = points, {}
    for i, op in enumerate(chain):
        if i in splits:
            pre[i] = h
        h = op.forward(h)
    margins = h @ C.T  # [P, S]
    bad = 0
    for d in range(D):
        inside = torch.ones(len(points), dtype=torch.bool)
        for i in relus:
            s = splits[i][d]
            inside &= ((pre[i] * s) >= 0).all(1)
            l, u = alpha.domain_box(boxes[i], domains.take(torch.tensor([d])), i)
            ok = (pre[i] >= l - 1e-5) & (pre[i] <= u + 1e-5)
            bad += int((~ok.all(1) & inside).sum() > 0)
        if inside.any():
            bad += int((found[d] > margins[inside].min(0).values + 1e-5).sum())
    return bad


@pytest.mark.parametrize("slope, beta", [(None, 3.0), (1.0, 0.0), (None, 30.0), (0.0, 1.0)])
def test_bounds_of_split_subdomains_hold_at_sampled_points(slope, beta):
    assert split_domain_violations(slope=slope, beta=beta) == 0


def kink():
    """A network whose margin is ``relu(z) - 2 z`` with ``z = 2x - 1`` over x in [0, 1] (the
    second neuron is z + 10, always active): the exact minimum is -1, at x = 1. A lower
    slope above 1, or a split term of the wrong sign, bounds it above -1."""
    net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[2.0], [2.0]]))
        net[0].bias.copy_(torch.tensor([-1.0, 9.0]))
        net[2].weight.copy_(torch.tensor([[1.0, -2.0], [0.0, 0.0]]))
        net[2].bias.copy_(torch.tensor([20.0, 0.0]))
    chain = read_model(net.eval(), (1,))
    ball = Ball(torch.tensor([[0.5]]), 0.5)
    return chain, ball, layer_boxes(chain, ball, "crown"), bab.Property.robustness(0, 2).C[None]


@pytest.mark.parametrize("mutant", [None, "slope outside [0, 1]", "wrong sign of beta"])
def test_a_wrong_bound_is_caught(monkeypatch, mutant):
    chain, ball, boxes, C = kink()
    truth = -1.0
    if mutant == "slope outside [0, 1]":
        monkeypatch.setattr(alpha, "slopes", lambda a: 4 * a)
    elif mutant == "wrong sign of beta":
        monkeypatch.setattr(alpha, "split_term", lambda beta, split: beta.clamp_min(0) * split)
    found = []
    for a, b in ((0.5, 0.0), (1.0, 0.0), (0.5, 1.0), (1.0, 1.0)):
        split = torch.tensor([[1, 0]], dtype=torch.int8)  # the kink's neuron active: the same minimum, -1
        for domains in (alpha.Domains(torch.zeros(1, dtype=torch.long), {}),
                        alpha.Domains(torch.zeros(1, dtype=torch.long), {1: split})):
            lower = alpha.bound(chain, ball, boxes, domains, C, {1: torch.full((1, 2), a)},
                                {1: torch.full((1, 2), b)}).lower
            found.append(float(lower.detach()))
    if mutant is None:
        assert max(found) <= truth + 1e-6 and max(found) == pytest.approx(truth)  # sound, and tight
    else:
        assert max(found) > truth + 0.5, found
    # and the optimiser, given the chance, finds the exact bound (or the mutant's wrong one)
    best, *_ = alpha.optimise(chain, ball, boxes, alpha.Domains(torch.zeros(1, dtype=torch.long), {}), C,
                                torch.zeros(1, 1), iterations=30)
    assert (float(best) <= truth + 1e-6) == (mutant is None or mutant == "wrong sign of beta")


@pytest.mark.slow
def test_nothing_unsafe_is_verified_when_counterexamples_go_unconfirmed():
    """With no counterexample ever confirmed, every unsafe instance must end unknown. This
    catches a search that stops after the first open group it proves (on one of these
    instances the worst group at the root is a safe one, the unsafe group comes second)."""
    never = lambda points: torch.zeros(len(points), dtype=torch.bool)  # noqa: E731
    unsafe = [i for i in INSTANCES if i[4] < 0]
    found = [o.verdict for *_, o in verdicts(bab.Settings(timeout=0.3), check=never, instances=unsafe)]
    assert found == ["unknown"] * len(unsafe), found


@pytest.mark.slow
def test_a_split_that_keeps_one_side_is_caught(monkeypatch):
    """Mutant: both children of a split take the active side, so half the set is never bounded.
    With no counterexample ever confirmed, the exact answers catch its "verified"."""
    real = bab._split

    def one_side(parents, choice, chain, boxes):
        children = real(parents, choice, chain, boxes)
        children.splits = {i: s.abs() for i, s in children.splits.items()}
        return children

    never = lambda points: torch.zeros(len(points), dtype=torch.bool)  # noqa: E731
    broken = [i for i in INSTANCES if i[4] < 0][:10]
    honest = verdicts(bab.Settings(timeout=0.3), check=never, instances=broken)
    assert all(o.verdict == "unknown" for *_, o in honest)
    monkeypatch.setattr(bab, "_split", one_side)
    wrong = [t for *_, t, o in verdicts(bab.Settings(timeout=0.3), check=never, instances=broken)
             if o.verdict == "verified"]
    assert wrong, "the mutant went unnoticed"


def test_certify_bab_gives_verdicts_with_confirmed_counterexamples():
    models = [(model, x, label, eps) for model, x, label, eps, _ in INSTANCES[:12]]
    for model, x, label, eps in models:
        y = torch.tensor([label])
        cert = advx.certify(model, x, y, eps=eps, method="bab", timeout=10)
        crown = advx.certify(model, x, y, eps=eps, method="crown")
        assert cert.verdicts[0] in ("verified", "falsified", "unknown")
        assert bool(cert.certified[0]) == (cert.verdicts[0] == "verified")
        assert bool(cert.certified[0]) or not bool(crown.certified[0])  # never fewer than CROWN
        if cert.verdicts[0] == "falsified":
            point = cert.counterexamples[0].reshape(1, WIDTH)
            assert (point - x).abs().max() <= eps + 1e-6
            with torch.no_grad():
                assert model(point).argmax() != label or model(point)[0].topk(2).values.diff().abs() == 0


def test_out_of_time_is_unknown():
    model, x, label, eps, truth = next(i for i in INSTANCES
                                      if i[4] > 0 and lower_bounds(read_model(i[0], (WIDTH,)), Ball(i[1], i[3]),
                                                                   "crown", margin_spec(torch.tensor([i[2]]), 3)
                                                                   ).min() < -0.05)
    cert = Certifier(model, (WIDTH,), method="bab", timeout=1e-9, iterations=0)
    outcome = cert.decide(x, torch.tensor([label]), advx.certify(model, x, torch.tensor([label]), eps=eps,
                                                                 method="crown"))
    assert outcome.verdicts == ["unknown"] and not outcome.certified[0]


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan")])
def test_a_timeout_must_be_positive(timeout):
    with pytest.raises(ValueError, match="timeout must be (> 0|a finite number)"):
        Certifier(tiny(0), (WIDTH,), method="bab", timeout=timeout)


def test_evaluate_with_bab_leaves_nothing_unresolved():
    model = tiny(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 2, WIDTH // 2, generator=g)  # images: the network flattens them
    with torch.no_grad():
        y = model(x).argmax(1)
    ev = advx.evaluate(model, x, y, attacks=["fgsm"], eps=[0.1, 0.3], certify="bab", certify_timeout=10,
                       progress=False, checks=False)
    for k, e in enumerate(ev.eps):
        assert ev.certified_acc[e] == pytest.approx(ev.robust_acc[e]), (e, ev.certified_acc, ev.robust_acc)
    assert "bab" in ev.attacks
