"""Certification must be sound: every bound holds at every point of the input set.

The bounds are checked against the true margins at random points of the ball, at its
corners and at the points a projected-gradient search finds when it minimises each
margin; against exact answers (a linear model, a 2-input network on a dense grid); and
against advx's attacks, which must never break a certified sample. Mutants of the ReLU
relaxation show that these checks can fail.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from advx import APGD, PGD, certify, evaluate
from advx.certify import METHODS, Certifier, UnsupportedModel, ops
from advx.certify.propagate import BOUNDS

BOUNDS = (*BOUNDS, "alpha-crown")  # the methods that give bounds only (bab: verdicts, in test_bab.py)
from advx.sanity import SoundnessError, check_sandwich

SHAPE = (1, 10, 10)
CLASSES = 4


def random_net(kind: str, seed: int) -> nn.Module:
    """Small random networks of every supported layer, weights large enough that many
    ReLUs are unstable (the bounds have something to relax)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "conv":
            net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
                                nn.Conv2d(4, 6, 3), nn.ReLU(), nn.MaxPool2d(2, 1), nn.Flatten(),
                                nn.Linear(6 * 2 * 2, 12), nn.ReLU(), nn.Dropout(0.3), nn.Linear(12, CLASSES))
        elif kind == "strided":
            net = nn.Sequential(nn.Conv2d(1, 5, 4, stride=2, padding=1), nn.ReLU(),
                                nn.Conv2d(5, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                nn.Flatten(), nn.Linear(6 * 3 * 3, 10), nn.ReLU(), nn.Linear(10, CLASSES))
        else:
            net = nn.Sequential(nn.Flatten(), nn.Linear(100, 16), nn.ReLU(), nn.Linear(16, 16),
                                nn.BatchNorm1d(16), nn.ReLU(), nn.Identity(), nn.Linear(16, CLASSES))
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=2.0 / m.weight[0].numel() ** 0.5)
                nn.init.uniform_(m.bias, -0.5, 0.5)
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                nn.init.uniform_(m.weight, -1.5, 1.5)
                nn.init.uniform_(m.bias, -0.3, 0.3)
        return net.eval()


def margins_of(model, x, y):
    """True margins z_y - z_j [N, K] (+inf at y)."""
    with torch.no_grad():
        z = model(x)
    return (z.gather(1, y[:, None]) - z).masked_fill(F.one_hot(y, z.shape[1]).bool(), float("inf"))


def into_ball(x, d, eps, norm):
    if norm == "inf":
        d = d.clamp(-eps, eps)
    else:  # scale into the ball (clipping to the box then only shrinks the perturbation)
        n = d.flatten(1).norm(p=float(norm), dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        d = d * torch.clamp(eps / n, max=1.0)
    return (x + d).clamp(0, 1)


def peak(d):
    """``d`` on its largest coordinate only: a vertex direction of the L1 ball."""
    flat = d.flatten(1)
    return torch.zeros_like(flat).scatter(1, flat.abs().argmax(1, keepdim=True),
                                          flat.gather(1, flat.abs().argmax(1, keepdim=True)).sign()).view_as(d)


def smallest_margins(model, x, y, eps, norm, *, points=1000, steps=30, seed=0):
    """The smallest margin seen per (sample, class): random points, corners (Linf), sphere
    points (L2) or vertices (L1), and a projected-gradient descent on each margin from random
    starts (steepest descent in the norm: sign, normalised gradient, largest coordinate)."""
    g = torch.Generator().manual_seed(seed)
    seen = margins_of(model, x, y)
    for _ in range(points):
        d = (torch.rand(x.shape, generator=g) * 2 - 1) * eps
        corner = {"inf": d.sign() * eps, "1": peak(d) * eps}.get(
            norm, d / d.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1)) * eps)
        for point in (into_ball(x, d, eps, norm), into_ball(x, corner, eps, norm)):
            seen = torch.minimum(seen, margins_of(model, point, y))
    for j in range(CLASSES):
        for start in range(2):
            xa = into_ball(x, (torch.rand(x.shape, generator=g) * 2 - 1) * eps, eps, norm)
            for _ in range(steps):
                xa.requires_grad_(True)
                z = model(xa)
                margin = (z.gather(1, y[:, None]).squeeze(1) - z[:, j]).sum()
                grad, = torch.autograd.grad(margin, xa)
                step = {"inf": grad.sign(), "1": peak(grad)}.get(
                    norm, grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1)))
                xa = into_ball(x, (xa.detach() - eps / 8 * step) - x, eps, norm)
                seen = torch.minimum(seen, margins_of(model, xa, y))
    return seen


def violations(model, x, y, eps, norm, method) -> int:
    bound = certify(model, x, y, eps=eps, method=method, norm=norm).margins
    seen = smallest_margins(model, x, y, eps, norm)
    finite = torch.isfinite(seen)
    assert finite.sum() == len(y) * (CLASSES - 1)
    return int((bound[finite] > seen[finite] + 1e-5).sum())


def inputs(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


@pytest.mark.parametrize("kind", [pytest.param("conv", marks=pytest.mark.slow),
                                  pytest.param("strided", marks=pytest.mark.slow), "dense"])
@pytest.mark.parametrize("norm,eps", [("inf", 0.05), ("inf", 0.2), pytest.param("2", 0.5, marks=pytest.mark.slow),
                                      pytest.param("1", 1.5, marks=pytest.mark.slow)])
def test_bounds_hold_at_sampled_corner_and_attacked_points(kind, norm, eps):
    for seed in range(2):
        model = random_net(kind, seed)
        x, y = inputs(seed)
        for method in BOUNDS:
            assert violations(model, x, y, eps, norm, method) == 0, (kind, seed, method)


def test_a_wrong_relaxation_is_caught(monkeypatch):
    """Mutant: the chord of an unstable ReLU without its offset cuts through the ReLU."""
    model, (x, y) = random_net("dense", 0), inputs(0)
    assert violations(model, x, y, 0.2, "inf", "crown") == 0
    real = ops.ReLU.set_bounds

    def no_offset(self, l, u):
        real(self, l, u)
        self.upper_offset = torch.zeros_like(self.upper_offset)

    monkeypatch.setattr(ops.ReLU, "set_bounds", no_offset)
    assert violations(model, x, y, 0.2, "inf", "crown") > 0


def test_a_first_layer_that_ignores_the_balls_radius_is_caught(monkeypatch):
    """Mutant: the exact bound of the first affine layer over an L2 or L1 ball without its
    radius (``W x`` for every point of the ball)."""
    model, (x, y) = random_net("dense", 0), inputs(0)
    assert violations(model, x, y, 1.5, "1", "ibp") == 0
    monkeypatch.setattr(ops.Linear, "row_norms", lambda self, q: torch.zeros(self.out_shape))
    assert violations(model, x, y, 1.5, "1", "ibp") > 0


def test_the_first_layer_is_bounded_over_the_ball_not_only_its_box(monkeypatch):
    """For L1 (and L2) the first affine layer is bounded over the ball itself (``W x +- eps
    ||W_i||_q``), which at a large eps is far tighter than the box around the ball; the
    margins' bounds can only rise, and they stay sound (the test above)."""
    from advx.norms import L1

    model, (x, y) = random_net("dense", 0), inputs(0)
    with_ball = certify(model, x, y, eps=1.5, method="ibp", norm="1").margins
    monkeypatch.setattr(L1, "ball_is_box", True)  # the box of the ball only
    box_only = certify(model, x, y, eps=1.5, method="ibp", norm="1").margins
    finite = torch.isfinite(with_ball)
    assert (with_ball[finite] >= box_only[finite] - 1e-5).all() and (with_ball[finite] > box_only[finite] + 1e-3).any()


def test_advx_certify_is_the_package_and_certifies_when_called():
    import importlib

    import advx
    import advx.certify.propagate as propagate  # the package's modules import as usual

    assert advx.certify is importlib.import_module("advx.certify") and propagate.METHODS == METHODS
    model, (x, y) = random_net("dense", 0), inputs(0)
    called = advx.certify(model, x, y, eps=0.05, method="ibp")  # the package, called
    function = advx.certify.certify(model, x, y, eps=0.05, method="ibp")
    assert isinstance(called, advx.certify.Certificate) and torch.equal(called.margins, function.margins)


def test_a_wrong_interval_is_caught(monkeypatch):
    """Mutant: IBP that forgets |W| (uses W) for the radius."""
    model, (x, y) = random_net("conv", 1), inputs(1)
    monkeypatch.setattr(ops.Linear, "linear_abs", lambda self, r: r @ self.weight.T)
    assert violations(model, x, y, 0.2, "inf", "ibp") > 0


def test_a_linear_model_is_bounded_exactly_at_a_corner():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(100, CLASSES)).eval()
    deep = nn.Sequential(nn.Flatten(), nn.Linear(100, 7), nn.Linear(7, CLASSES)).eval()
    x, y = inputs(2, n=6)
    eps = 0.1
    for net, methods in ((model, METHODS), (deep, ("crown-ibp", "crown"))):
        W = net[1].weight if len(net) == 2 else net[2].weight @ net[1].weight
        for method in methods:
            bound = certify(net, x, y, eps=eps, method=method).margins
            for n in range(len(y)):
                for j in range(CLASSES):
                    if j == y[n]:
                        continue
                    coef = (W[y[n]] - W[j]).view(SHAPE)  # the margin's gradient
                    lo, hi = (x[n] - eps).clamp(0, 1), (x[n] + eps).clamp(0, 1)
                    corner = torch.where(coef > 0, lo, hi)  # where the margin is smallest
                    exact = margins_of(net, corner[None], y[n:n + 1])[0, j]
                    assert bound[n, j] == pytest.approx(exact.item(), abs=1e-4), (method, n, j)


def test_two_input_network_against_a_dense_grid():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    center = torch.tensor([[0.4, 0.6]])
    eps = 0.2
    grid = torch.stack(torch.meshgrid(torch.linspace(0.2, 0.6, 401), torch.linspace(0.4, 0.8, 401),
                                      indexing="ij"), -1).view(-1, 2)
    with torch.no_grad():
        label = net(center).argmax(1)
        z = net(grid)
    true = (z[:, label] - z).min(0).values  # the smallest margin per class over the box
    found = {m: certify(net, center, label, eps=eps, method=m).margins[0] for m in METHODS}
    for j in range(3):
        if j == label:
            continue
        for m in METHODS:
            assert found[m][j] <= true[j] + 1e-5, m
        assert found["crown"][j] >= found["ibp"][j] - 1e-6
        assert found["crown"][j] > true[j] - 1.0  # and not absurdly loose


def test_crown_certifies_everything_ibp_does_and_screening_changes_no_verdict(trained_cnn, batch):
    x, y = batch[0][:100], batch[1][:100]
    for eps in (0.005, 0.02):
        ibp = certify(trained_cnn, x, y, eps=eps, method="ibp").certified
        crown_ibp = certify(trained_cnn, x, y, eps=eps, method="crown-ibp").certified
        full = certify(trained_cnn, x, y, eps=eps, method="crown", screen=False)
        screened = certify(trained_cnn, x, y, eps=eps, method="crown")
        assert (crown_ibp | ~ibp).all() and (full.certified | ~ibp).all()
        assert torch.equal(full.certified, screened.certified)
    assert full.certified.sum() > ibp.sum()  # CROWN is tighter on a normally trained model


@pytest.mark.slow
def test_certified_samples_are_classified_correctly_and_survive_strong_attacks(trained_cnn, batch):
    x, y = batch[0][:200], batch[1][:200]
    eps = 0.02
    cert = certify(trained_cnn, x, y, eps=eps, method="crown")
    assert 20 < cert.certified.sum() < 200  # some, not all: the bound is near the boundary
    assert (trained_cnn(x).argmax(1)[cert.certified] == y[cert.certified]).all()
    xs, ys = x[cert.certified], y[cert.certified]
    for attack in (PGD(trained_cnn, eps=eps, steps=50, alpha=eps / 10, restarts=5, seed=1),
                   APGD(trained_cnn, eps=eps, steps=50, loss="dlr", seed=2),
                   APGD(trained_cnn, eps=eps, steps=50, loss="dlr-targeted", seed=3)):
        assert not attack.run(xs, ys).success.any(), attack
    # at a larger eps the same attacks do break some of them: the check above can fail
    broken = PGD(trained_cnn, eps=0.15, steps=50, alpha=0.01, seed=1).run(xs, ys).success
    assert broken.any()


def test_bounds_do_not_depend_on_the_batch(trained_cnn, batch):
    x, y = batch[0][:60], batch[1][:60]
    whole = certify(trained_cnn, x, y, eps=0.01, method="crown", batch_size=60, screen=False).margins
    split = certify(trained_cnn, x, y, eps=0.01, method="crown", batch_size=7, screen=False).margins
    finite = torch.isfinite(whole)
    assert torch.allclose(whole[finite], split[finite], atol=1e-4)


class Functional(nn.Module):
    """Not a Sequential: functional ReLU and a view, read through torch.fx."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2)
        self.fc = nn.Linear(3 * 4 * 4, CLASSES)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = x.view(x.size(0), -1)
        return self.fc(torch.relu(x))


def test_any_chain_of_supported_layers_is_read_not_only_sequential():
    torch.manual_seed(0)
    model = Functional().eval()
    same = nn.Sequential(model.conv, nn.ReLU(), nn.Flatten(), nn.ReLU(), model.fc).eval()
    x, y = inputs(4)
    for method in BOUNDS:
        a = certify(model, x, y, eps=0.05, method=method).margins
        b = certify(same, x, y, eps=0.05, method=method).margins
        assert torch.equal(a, b)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(100, 100), nn.Linear(100, CLASSES)

    def forward(self, x):
        x = x.flatten(1)
        return self.out(x + torch.relu(self.fc(x)))


@pytest.mark.parametrize("model,named", [
    (Residual(), "add"),
    (nn.Sequential(nn.Flatten(), nn.Linear(100, 8), nn.Sigmoid(), nn.Linear(8, CLASSES)), "Sigmoid"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.Flatten(),
                   nn.Linear(200, CLASSES)), "padding_mode"),
])
def test_an_unsupported_model_is_one_clear_error(model, named):
    x, y = inputs(0)
    with pytest.raises(UnsupportedModel) as info:
        certify(model.eval(), x, y, eps=0.1)
    message = str(info.value)
    assert named in message and "supported: Conv2d, Linear, ReLU" in message


@pytest.mark.parametrize("options,message", [
    (dict(eps=-0.1), "eps must be"),
    (dict(eps=0.1, method="lp"), "method must be one of"),
    (dict(eps=0.1, norm="3"), "norm"),
])
def test_bad_arguments_name_themselves(options, message):
    model, (x, y) = random_net("dense", 0), inputs(0)
    with pytest.raises(ValueError, match=message):
        certify(model, x, y, **options)


def test_images_of_another_shape_and_empty_bounds_are_refused():
    model, (x, y) = random_net("dense", 0), inputs(0)
    certifier = Certifier(model, SHAPE, method="ibp")
    with pytest.raises(ValueError, match=r"x must be a tensor \[N, 1, 10, 10\].*got shape \(4, 1, 12, 12\)"):
        certifier(torch.rand(4, 1, 12, 12), y, eps=0.1)
    with pytest.raises(ValueError, match="bounds must be .* lower < upper, got"):
        certify(model, x, y, eps=0.1, bounds=(1.0, 0.0))


def test_inputs_outside_the_pixel_bounds_are_refused():
    model, (x, y) = random_net("dense", 0), inputs(0)
    with pytest.raises(ValueError, match=r"x must lie within bounds \(0.0, 1.0\)"):
        certify(model, x + 2, y, eps=0.1)


@pytest.mark.parametrize("method", METHODS)
def test_certify_leaves_the_model_alone(bn_model, batch, method):
    model = bn_model  # in train mode, with BatchNorm (running statistics) and Dropout
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = batch[0][:20].clone(), batch[1][:20].clone()
    x0, y0 = x.clone(), y.clone()
    certify(model, x, y, eps=0.01, method=method, timeout=1.0)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_the_sandwich_check_names_the_sample():
    certified = torch.tensor([[False, True, False]])
    with pytest.raises(SoundnessError, match="sample 1 is certified at eps=0.1 and broken by pgd"):
        check_sandwich(certified, torch.tensor([[-1, 1, 0]]), torch.ones(3, dtype=torch.bool), [0.1], ["fgsm", "pgd"])
    with pytest.raises(SoundnessError, match="sample 1 is certified at eps=0.1 but the model misclassifies"):
        check_sandwich(certified, torch.full((1, 3), -1), torch.tensor([True, False, True]), [0.1], ["pgd"])
    check_sandwich(certified, torch.tensor([[0, -1, 0]]), torch.ones(3, dtype=torch.bool), [0.1], ["pgd"])


def test_evaluate_gives_the_interval_and_stops_on_a_clash(trained_cnn, batch, monkeypatch):
    x, y = batch[0][:100], batch[1][:100]
    ev = evaluate(trained_cnn, x, y, attacks=["pgd"], eps=[0.01, 0.05], steps=10, certify="crown",
                  progress=False, checks=False)
    for e in ev.eps:
        assert 0 < ev.certified_acc[e] <= ev.robust_acc[e] <= ev.clean_acc
    assert ev.certified_acc[0.05] <= ev.certified_acc[0.01]
    assert list(ev.seconds_by_stage) == ["crown", "pgd"] and min(ev.seconds_by_stage.values()) > 0
    assert sum(ev.seconds_by_stage.values()) <= ev.seconds
    module = sys.modules["advx.evaluate"]  # (advx.evaluate is also the function's name)

    def liar(model, x, y, eps, **kw):  # "certifies" everything
        return torch.ones(len(eps), len(y))

    monkeypatch.setattr(module, "certify_sweep", liar)
    with pytest.raises(SoundnessError, match="sample"):
        evaluate(trained_cnn, x, y, attacks=["pgd"], eps=[0.3], steps=10, certify="ibp", progress=False,
                 checks=False)


def test_proved_samples_leave_the_cascade_but_for_a_spot_check(trained_cnn, batch, monkeypatch):
    x, y = batch[0][:100], batch[1][:100]
    module = sys.modules["advx.evaluate"]
    attacked, real = [], module._stage_results

    def recording(attack, name, eps, x, y, idx, *args, **kw):
        attacked.append((name, eps, set(idx.tolist()), getattr(attack, "near_restarts", None)))
        return real(attack, name, eps, x, y, idx, *args, **kw)

    stages = [("apgd", {"near_restarts": 2}), "pgd"]
    plain = evaluate(trained_cnn, x, y, attacks=stages, eps=[0.01, 0.05], steps=10, progress=False, checks=False)
    monkeypatch.setattr(module, "_stage_results", recording)
    monkeypatch.setattr(module, "SPOT_CHECK", 5)
    ev = evaluate(trained_cnn, x, y, attacks=stages, eps=[0.01, 0.05], steps=10, certify="crown",
                  progress=False, checks=False)
    assert ev.robust_acc == plain.robust_acc  # the certificates are sound: skipping changed nothing
    assert torch.equal(ev.records["broken_by"], plain.records["broken_by"])
    lower = ev.records["margin_lb"]
    for k, e in enumerate(ev.eps):
        proved = set((lower[k] > 0).nonzero().squeeze(1).tolist())
        first = [(s, near) for name, eps, s, near in attacked if name == "apgd" and eps == e]
        second = set().union(*(s for name, eps, s, _ in attacked if name == "pgd" and eps == e))
        correct = set((ev.records["pred_clean"] == y).nonzero().squeeze(1).tolist())
        spot = set().union(*(s for s, _ in first)) & proved
        assert len(proved) > 5 and len(spot) == 5 == ev.settings["spot_checked"][k]
        smallest = sorted(proved, key=lambda i: (float(lower[k, i]), i))[:5]
        assert spot == set(smallest)  # the proved samples nearest the boundary
        assert set().union(*(s for s, _ in first)) - spot == correct - proved  # and every sample not proved
        assert not second & proved  # the later stages skip every proved sample
        # the spot check tests the bound: no extra runs near the boundary for proved samples
        assert all(near == (0 if s <= proved else 2) for s, near in first if s)
    assert {near for name, _, s, near in attacked if name == "apgd" and s} == {0, 2}  # both kinds ran


def test_certifier_reads_once_and_follows_the_weights(trained_cnn, batch):
    model = copy.deepcopy(trained_cnn)
    x, y = batch[0][:10], batch[1][:10]
    certifier = Certifier(model, method="ibp")
    before = certifier(x, y, eps=0.01).margins
    with torch.no_grad():
        model.net[-1].bias += torch.arange(10.0)
    after = certifier(x, y, eps=0.01).margins
    assert not torch.equal(before, after)
    assert torch.equal(after, certify(model, x, y, eps=0.01, method="ibp").margins)


def test_certified_loss_schedules_and_gradients():
    from advx.certified import CertifiedLoss
    from advx.models import build_model

    loss_fn = CertifiedLoss("crown-ibp", eps=0.2, ramp_start=1, ramp_epochs=2, kappa_end=0.5)
    assert [loss_fn.eps_at(e) for e in (0, 1, 2, 3, 9)] == pytest.approx([0, 0, 0.1, 0.2, 0.2])
    assert [loss_fn.kappa_at(e) for e in (0, 2, 3)] == pytest.approx([1, 0.75, 0.5])
    torch.manual_seed(0)
    model = build_model("cert")
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    clean, _ = loss_fn(model, x, y, epoch=0.5)
    assert clean.item() == pytest.approx(F.cross_entropy(model(x), y).item())
    robust, logits = loss_fn(model, x, y, epoch=2.0)
    assert robust.item() > 0.75 * clean.item()  # the bound term only adds
    robust.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # beta = 1 - progress: halfway through the ramp the CROWN-IBP and IBP margins are mixed evenly
    cert = Certifier(model, method="ibp")
    mixed = loss_fn.margins(model, x, y, epoch=2.0)
    expect = 0.5 * cert.margins(x, y, 0.1, method="crown-ibp") + 0.5 * cert.margins(x, y, 0.1)
    finite = torch.isfinite(expect)
    assert torch.allclose(mixed[finite], expect[finite], atol=1e-4)
    with pytest.raises(ValueError, match="kind must be one of"):
        CertifiedLoss("pgd", eps=0.1)


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["conv", "strided", "dense"]), seed=st.integers(0, 10_000),
       eps=st.floats(0.005, 0.1), method=st.sampled_from(BOUNDS))
def test_no_attack_breaks_a_certified_sample(kind, seed, eps, method):
    """(Branch and bound's verdicts are held against exact answers in test_bab.py.)"""
    model, (x, y) = random_net(kind, seed), inputs(seed, n=16)
    y = model(x).argmax(1)  # the model's own answers: every sample starts correct
    cert = certify(model, x, y, eps=eps, method=method)
    if not cert.certified.any():
        return
    xs, ys = x[cert.certified], y[cert.certified]
    for attack in (PGD(model, eps=eps, steps=30, alpha=eps / 8, restarts=3, seed=seed),
                   APGD(model, eps=eps, steps=30, loss="dlr", seed=seed)):
        assert not attack.run(xs, ys).success.any(), attack


def test_a_model_that_does_not_run_on_the_images_is_one_line_without_torchs_traceback(capfd):
    model = nn.Sequential(nn.Flatten(), nn.Linear(100, CLASSES)).eval()
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    with pytest.raises(UnsupportedModel) as info:
        certify(model, x, y, eps=0.1)
    assert str(info.value).startswith("cannot certify this model: it does not run on one input of shape [1, 28, 28] "
                                      "(RuntimeError: mat1 and mat2 shapes cannot be multiplied")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 1)), r"must return logits \[N, K\] for K >= 2 classes, got \[N, 1\]"),
    (nn.Sequential(nn.Conv2d(1, 2, 3)), r"must return logits \[N, K\] for K >= 2 classes, got \[N, 2, 26, 26\]"),
    (nn.Sequential(nn.Flatten(), nn.LazyLinear(10)), r"lazy modules whose weights are not initialised yet"),
])
def test_a_model_that_is_not_a_classifier_is_not_certified(model, message):
    """A one-class output has no other class to beat: its "certificate" would be vacuous."""
    x, y = torch.rand(3, 1, 28, 28), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        certify(model.eval(), x, y, eps=0.1)


def test_a_model_with_nan_weights_is_named_so_not_blamed_on_the_graph():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, CLASSES)).eval()
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    x, y = torch.rand(3, 1, 28, 28), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"returned logits that are not finite \(NaN/inf\)"):
        certify(model, x, y, eps=0.1)
