"""The exact MILP that decides what branch and bound leaves open (``advx.certify.milp``),
held against the independent exact program of ``tests/exact.py``: its proofs must be the
true minimum (never above it), its points must break the property in the model's own forward
pass, and mutants (a big-M row dropped, big-M bounds that do not hold) must be caught."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from advx.certify import Certifier, bab, milp
from advx.certify.graph import read_model
from advx.certify.ops import ReLU
from advx.certify.pooling import split_pools
from advx.certify.propagate import Ball, layer_boxes
from advx.cli import main
from test_bab import INSTANCES, WIDTH, top_class_property

exact = pytest.importorskip("exact")


def group_minima(model, x, label, eps) -> list[float]:
    """The exact smallest ``z_label - z_j`` over the ball, per other class j (one group each)."""
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    return [exact.minimum(model, lo, hi, torch.eye(3)[label] - torch.eye(3)[j])[0] for j in range(3) if j != label]


TRUTHS = [group_minima(model, x, label, eps) for model, x, label, eps, _ in INSTANCES[:20]]


def mismatches(shrink: float = 1.0) -> list:
    """Every group of the first 20 instances solved by the MILP and held against its exact
    minimum; ``shrink`` scales the unstable neurons' big-M bounds toward 0 (< 1: a mutant)."""
    wrong = []
    for (model, x, label, eps, _), truths in zip(INSTANCES[:20], TRUTHS):
        chain = read_model(model, (WIDTH,))
        ball = Ball(x, eps)
        boxes = [(l * shrink, u * shrink) if i < len(chain) and isinstance(chain[i], ReLU) else (l, u)
                 for i, (l, u) in enumerate(layer_boxes(chain, ball, "crown"))]
        prop = bab.Property.robustness(label, 3)
        for group, truth in enumerate(truths):
            status, point, bound = milp.solve(chain, ball, boxes, prop, group, time.perf_counter() + 20)
            if status == "proved" and not (0 < bound <= truth + 1e-6 and bound >= truth - 1e-3):
                wrong.append(("proved", truth, bound))
            elif status == "point":
                inside = (bool((point - x[0]).abs().max() <= eps + 1e-6)
                          and 0 <= float(point.min()) <= float(point.max()) <= 1)
                with torch.no_grad():
                    value = float(prop.C[group] @ model(point.view(1, -1))[0])
                if not (inside and value <= 1e-5 and abs(value - truth) <= 1e-3):
                    wrong.append(("point", truth, value, inside))
            elif status == "open":
                wrong.append(("open", truth))
    return wrong


def test_the_program_attains_the_exact_minimum():
    assert sum(t > 0 for ts in TRUTHS for t in ts) >= 10 and sum(t < 0 for ts in TRUTHS for t in ts) >= 10
    assert mismatches() == []


@pytest.mark.parametrize("mutant", ["a big-M row dropped", "big-M bounds that do not hold"])
def test_a_wrong_program_is_caught(monkeypatch, mutant):
    if mutant == "a big-M row dropped":  # h <= u a: an inactive ReLU may then output up to z - l
        real = milp._Program._pairs

        def dropped(self, first, second, lower, upper, weight=-1.0):
            if not (lower == -np.inf and np.ndim(weight)):
                real(self, first, second, lower, upper, weight)

        monkeypatch.setattr(milp._Program, "_pairs", dropped)
        assert mismatches()
    else:
        assert mismatches(shrink=0.3)


@pytest.mark.slow
def test_multi_row_groups_are_decided_exactly():
    """VNN-LIB's form: a group is violated only where all of its rows are (class j on top)."""
    for (model, x, label, eps, truth), truths in zip(INSTANCES[:20], TRUTHS):
        chain = read_model(model, (WIDTH,))
        ball = Ball(x, eps)
        boxes = layer_boxes(chain, ball, "crown")
        prop = top_class_property(label)
        found = [milp.solve(chain, ball, boxes, prop, g, time.perf_counter() + 20) for g in range(2)]
        assert [s for s, *_ in found] != ["open"] * 2
        if truth > 1e-4:
            assert all(s == "proved" for s, *_ in found), (truth, found)
        for status, point, _ in found:
            if status == "point":
                with torch.no_grad():
                    assert bool(prop.violated(model(point.view(1, -1)))[0]) or truth > -1e-4, (truth, point)
        if truth < -1e-4:
            assert any(s == "point" for s, *_ in found), (truth, found)


def test_branch_and_bound_hands_what_it_leaves_open_to_the_milp(monkeypatch):
    """With almost all of the time kept for the MILP, the search leaves the hard groups open
    and the MILP decides them: every verdict must still agree with the exact answer."""
    calls = []
    real = milp.solve
    monkeypatch.setattr(milp, "solve", lambda *a: calls.append(real(*a)) or calls[-1])
    never = lambda points: torch.zeros(len(points), dtype=torch.bool)  # noqa: E731
    for model, x, label, eps, truth in INSTANCES[:20]:
        chain = read_model(model, (WIDTH,))
        settings = bab.Settings(timeout=5, milp=0.999)
        outcome = bab.branch_and_bound(chain, Ball(x, eps), bab.Property.robustness(label, 3), settings)
        assert outcome.verdict != "unknown" or abs(truth) < 1e-4, (truth, outcome)
        assert outcome.verdict != "verified" or truth > 0
        assert outcome.verdict != "falsified" or truth <= 1e-6
        if truth < 0:  # a point the model does not confirm leaves the sample unknown, never verified
            assert bab.branch_and_bound(chain, Ball(x, eps), bab.Property.robustness(label, 3), settings,
                                        check=never).verdict == "unknown"
    assert any(status == "proved" for status, *_ in calls) and any(status == "point" for status, *_ in calls)


def test_networks_it_cannot_read_are_left_to_the_search(monkeypatch):
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3)).eval()
    chain = read_model(pooled, (1, 8, 8))
    assert milp.available(split_pools(chain))  # max-pooling written as ReLUs is read
    monkeypatch.setattr(milp, "MAX_ENTRIES", 1000)  # the convolution (64 x 72) is now too large
    assert not milp.available(split_pools(chain)) and milp.available(read_model(INSTANCES[0][0], (WIDTH,)))
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    label = int(pooled(x).argmax())
    outcome = bab.branch_and_bound(chain, Ball(x, 0.3), bab.Property.robustness(label, 3),
                                   bab.Settings(timeout=0.5, milp=0.5),
                                   check=lambda p: torch.zeros(len(p), dtype=torch.bool))
    assert outcome.verdict != "verified" or "milp" not in " ".join(outcome.notes)
    if outcome.verdict == "unknown":
        assert any("milp: not for this network" in n for n in outcome.notes), outcome.notes


@pytest.mark.parametrize("share", [1.0, -0.1, float("nan")])
def test_the_share_must_lie_in_0_1(share):
    with pytest.raises(ValueError, match="milp must be|milp must be a finite number"):
        Certifier(INSTANCES[0][0], (WIDTH,), method="bab", milp=share)


def test_without_scipy_the_error_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scipy" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'advx\[milp\]'"):
        Certifier(INSTANCES[0][0], (WIDTH,), method="bab", milp=0.5)
    Certifier(INSTANCES[0][0], (WIDTH,), method="bab")  # the control: no MILP asked for


@pytest.mark.parametrize("argv,message", [
    (["certify", "--method", "bab", "--milp", "1"], "--milp must be a share of --timeout in [0, 1), got 1"),
    (["certify", "--method", "crown", "--milp", "0.5"], "--milp applies only with --method bab"),
])
def test_certify_rejects_a_bad_share(argv, message, capsys, tmp_path):
    assert main([*argv, "--checkpoint", str(tmp_path / "none.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
