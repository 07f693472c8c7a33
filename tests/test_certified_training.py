"""Certified training's losses that mix bounds with an attacked point: SABR, MTL-IBP, CC-IBP.

Each is held to its formula, to the limits where it becomes IBP (lam = 1, alpha = 1) or
adversarial training (alpha = 0), and SABR's small box to lying inside the ball."""

import pytest
import torch
import torch.nn.functional as F

from advx.certified import CertifiedConfig, CertifiedLoss
from advx.certify import Certifier
from advx.models import build_model
from advx.robust_training import robust_config
from conftest import killed_and_resumed, load_script

EPS, KAPPA = 0.2, 0.3


def _model_and_batch(seed=0, n=12):
    torch.manual_seed(seed)
    model = build_model("cert")
    x, y = torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,))
    return model, x, y


def _loss(kind, **options):
    # ramp_epochs=0: the full eps from epoch 0, the clean weight at kappa_end
    return CertifiedLoss(kind, eps=EPS, ramp_epochs=0, kappa_end=KAPPA, seed=5, steps=3, **options)


def _ibp_ce(model, x, y, eps):
    m = Certifier(model, method="ibp").margins(x, y, eps)
    return F.cross_entropy((-m).masked_fill(F.one_hot(y, 10).bool(), 0.0), y)


def _total(model, x, y, robust):
    return KAPPA * F.cross_entropy(model(x), y) + (1 - KAPPA) * robust


@pytest.mark.parametrize("kind, options", [("sabr", {"box_share": 1.0}), ("mtl-ibp", {"mix": 1.0}),
                                           ("cc-ibp", {"mix": 1.0})])
def test_at_lambda_or_alpha_one_each_loss_is_ibps(kind, options):
    model, x, y = _model_and_batch()
    loss, _ = _loss(kind, **options)(model, x, y, epoch=1.0)
    ibp, _ = _loss("ibp")(model, x, y, epoch=1.0)
    assert loss.item() == pytest.approx(ibp.item(), rel=1e-5)
    assert loss.item() == pytest.approx(_total(model, x, y, _ibp_ce(model, x, y, EPS)).item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["mtl-ibp", "cc-ibp"])
def test_at_alpha_zero_each_loss_is_adversarial_training_on_the_same_point(kind):
    model, x, y = _model_and_batch(1)
    loss, _ = _loss(kind, mix=0.0)(model, x, y, epoch=1.0)
    x_adv = _loss(kind, mix=0.0).search(model, x, y, EPS)  # the same seed: the same random start
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and not torch.equal(x_adv, x)
    expect = _total(model, x, y, F.cross_entropy(model(x_adv), y))
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)


def test_mtl_ibp_and_cc_ibp_follow_their_formulas():
    model, x, y = _model_and_batch(2)
    alpha = 0.3
    x_adv = _loss("cc-ibp", mix=alpha).search(model, x, y, EPS)
    ibp = Certifier(model, method="ibp").margins(x, y, EPS).masked_fill(F.one_hot(y, 10).bool(), 0.0)
    z = model(x_adv)
    attacked = z.gather(1, y[:, None]) - z
    mixed = (1 - alpha) * attacked + alpha * ibp
    cc = F.cross_entropy(-mixed, y)
    mtl = (1 - alpha) * F.cross_entropy(z, y) + alpha * F.cross_entropy(-ibp, y)
    for kind, robust in (("cc-ibp", cc), ("mtl-ibp", mtl)):
        loss, _ = _loss(kind, mix=alpha)(model, x, y, epoch=1.0)
        assert loss.item() == pytest.approx(_total(model, x, y, robust).item(), rel=1e-5), kind
    # the two differ: CC-IBP mixes the margins inside the loss, MTL-IBP the losses
    assert abs(cc.item() - mtl.item()) > 1e-3


def test_sabrs_small_box_lies_in_the_ball_around_an_attacked_point(monkeypatch):
    model, x, y = _model_and_batch(3)
    lam = 0.4
    seen = []
    real = Certifier.margins

    def spy(self, centre, labels, eps, method=None):
        seen.append((centre.detach().clone(), eps))
        return real(self, centre, labels, eps, method)

    monkeypatch.setattr(Certifier, "margins", spy)
    loss, _ = _loss("sabr", box_share=lam)(model, x, y, epoch=1.0)
    (centre, small), = seen
    assert small == pytest.approx(lam * EPS)
    # the box of radius lam * eps around the centre lies in the eps-ball around x
    assert ((centre - x).abs().max() + small).item() <= EPS + 1e-6
    assert (centre - x).abs().max() > 0.5 * (1 - lam) * EPS  # an attacked point, not x itself
    # the small box's bounds are no worse than the whole ball's (IBP is monotone in the box)
    whole = real(Certifier(model, method="ibp"), x, y, EPS)
    part = real(Certifier(model, method="ibp"), centre, y, small)
    finite = torch.isfinite(whole)
    assert (part[finite] >= whole[finite] - 1e-5).all()
    monkeypatch.setattr(Certifier, "margins", real)
    assert loss.item() == pytest.approx(_total(model, x, y, F.cross_entropy(
        (-part).masked_fill(F.one_hot(y, 10).bool(), 0.0), y)).item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["sabr", "mtl-ibp", "cc-ibp"])
def test_gradients_reach_every_weight_and_a_resumed_stream_repeats(kind):
    model, x, y = _model_and_batch(4)
    loss_fn = _loss(kind)
    state = loss_fn.state_dict()
    loss, _ = loss_fn(model, x, y, epoch=1.0)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()
    again = _loss(kind)
    again.load_state_dict(state)
    assert again(model, x, y, epoch=1.0)[0].item() == loss.item()
    assert not torch.equal(loss_fn.state_dict()["generator"], state["generator"])  # the random starts drew


@pytest.mark.parametrize("options, message", [
    ({"box_share": 0.0}, r"box_share \(SABR's lambda\) must be in \(0, 1\]: .*got 0"),
    ({"box_share": 1.5}, r"box_share \(SABR's lambda\) must be in \(0, 1\]: .*got 1.5"),
    ({"mix": -0.1}, "mix must be >= 0, got -0.1"),
    ({"mix": 1.2}, "mix must be <= 1, got 1.2"),
    ({"steps": 0}, "steps must be >= 1, got 0"),
])
def test_bad_settings_are_one_clear_error(options, message):
    with pytest.raises(ValueError, match=message):
        CertifiedLoss("sabr" if "box_share" in options else "cc-ibp", eps=0.1, **options)
    kind = "sabr" if "box_share" in options else "cc-ibp"
    with pytest.raises(ValueError, match=message):
        CertifiedConfig(kind=kind, **options)


@pytest.mark.parametrize("kind, options, message", [
    ("ibp", {"box_share": 0.5}, "box_share applies only with kind='sabr', got kind='ibp'"),
    ("sabr", {"mix": 0.5}, "mix applies only with kind='mtl-ibp' or 'cc-ibp', got kind='sabr'"),
    ("crown-ibp", {"steps": 4}, "steps applies only with kind='pgd' or 'trades' or 'mart' or 'sabr' or 'mtl-ibp' or 'cc-ibp', "
     "got kind='crown-ibp'"),
    ("cc-ibp", {"beta": 6.0}, "beta applies only with kind='trades' or 'mart', got kind='cc-ibp'"),
])
def test_an_option_of_another_kind_is_refused(kind, options, message):
    with pytest.raises(ValueError, match=message):
        robust_config(kind, eps=0.1, **options)


def test_each_kind_gets_its_defaults_and_they_reach_the_loss():
    sabr = robust_config("sabr", eps=0.1)
    assert (sabr.box_share, sabr.steps, sabr.mix) == (0.4, 8, None)
    cc = robust_config("cc-ibp", eps=0.1, mix=0.2, steps=2)
    assert (cc.mix, cc.steps, cc.box_share) == (0.2, 2, None)
    assert robust_config("ibp", eps=0.1).steps is None

    class Data:
        shape = (1, 28, 28)

    from advx.train import TrainConfig
    loss_fn = cc.loss_fn(TrainConfig(seed=3), Data())
    assert (loss_fn.kind, loss_fn.mix, loss_fn.steps) == ("cc-ibp", 0.2, 2)


@pytest.mark.parametrize("kind", ["ibp", "crown-ibp"])
def test_batchnorm_in_train_mode_is_bounded_with_the_clean_batchs_statistics(kind, monkeypatch):
    """At eps = 0 the bounds are the train-mode margins themselves; inside the ball they hold
    for points normalised with the same statistics; after, certificates use running ones."""
    torch.manual_seed(0)
    model = build_model("small").train()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    loss_fn = CertifiedLoss(kind, eps=0.05, ramp_epochs=0, kappa_end=0.5)
    seen = []
    real = CertifiedLoss.robust_loss

    def spy(self, model, x, y, epoch):  # the bounds of the loss's own pass, at eps 0 and 0.05
        seen.append((self.margins(model, x, y, epoch), Certifier.margins(self._certifier(model, "ibp"), x, y, 0.0)))
        return real(self, model, x, y, epoch)

    monkeypatch.setattr(CertifiedLoss, "robust_loss", spy)
    loss, logits = loss_fn(model, x, y, epoch=1.0)
    (bounds, at_zero), = seen
    train_margins = logits.gather(1, y[:, None]) - logits
    other = ~F.one_hot(y, 10).bool()
    assert torch.allclose(at_zero[other], train_margins[other], atol=1e-3)
    # sampled points of the ball, normalised with the same (batch) statistics: above the bounds
    from advx.certify.ops import Scale
    chain = loss_fn._certifier(model, "ibp").chain
    stats = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: stats.__setitem__(
        mod, (i[0].mean([0, 2, 3]), i[0].var([0, 2, 3], unbiased=False)))) for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)]
    model(x)
    for h in hooks:
        h.remove()
    for op in chain:
        if isinstance(op, Scale):
            op.statistics = stats[op.module]
    for _ in range(5):
        z = x + (torch.rand_like(x) * 2 - 1) * 0.05
        out = z.clamp(0, 1)
        for op in chain:
            out = op.forward(out)
        m = out.gather(1, y[:, None]) - out
        assert (m[other] >= bounds[other] - 1e-3).all()
    for op in chain:
        op.statistics = None
    # the statistics were the loss's for its own pass only: certificates see the running ones
    model.eval()
    assert all(op.statistics is None for op in chain if isinstance(op, Scale))
    eval_margins = model(x).gather(1, y[:, None]) - model(x)
    assert torch.allclose(Certifier(model, method="ibp").margins(x, y, 0.0)[other], eval_margins[other], atol=1e-3)
    assert not torch.allclose(eval_margins[other], train_margins[other], atol=1e-2)


@pytest.mark.parametrize("name", ["cpu-0.1", "cpu-0.3", "gpu-0.1", "gpu-0.3"])
def test_every_recipe_is_a_valid_training_command(name):
    from advx.cli import build_parser
    from advx.robust_training import check_options
    script = load_script("train_certified")
    args = build_parser().parse_args(["train", *script.RECIPES[name]])
    given = {k: getattr(args, k) for k in ("eps", "box_share", "kappa", "warmup_epochs", "ramp_start")
             if getattr(args, k) is not None}
    check_options(args.kind, given)
    config = robust_config(args.kind, **given)
    # trained at eps a little above the one certified (CPU), or at it (the papers' GPU settings)
    assert config.eps == {"cpu-0.1": 0.15, "cpu-0.3": 0.4, "gpu-0.1": 0.1, "gpu-0.3": 0.3}[name]
    assert args.model == ("cert" if name.startswith("cpu") else "cnn7")


def test_an_unknown_recipe_is_one_clear_error(capsys):
    assert load_script("train_certified").run(["--recipe", "gpu-9"]) == 2
    assert "--recipe must be one of cpu-0.1, cpu-0.3, gpu-0.1, gpu-0.3, got 'gpu-9'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sabr", "cc-ibp"])
def test_an_interrupted_certified_run_resumes_to_the_uninterrupted_weights(kind, tmp_path, monkeypatch):
    """Killed in its second epoch's held-out check, then resumed: the same weights (the
    attack's random stream and the averaged weights included) as a run never stopped."""
    from advx import certified as certified_mod
    from advx.train import TrainConfig

    config = TrainConfig(model="cert", epochs=2, batch_size=100, train_size=300, seed=4, ema=0.9)
    robust = CertifiedConfig(kind=kind, eps=0.1, warmup_epochs=1, holdout=50, steps=2, eval_steps=2)
    a, b = killed_and_resumed(config, robust, tmp_path, monkeypatch, certified_mod, "certified_metrics")
    assert len(a["metrics"]["history"]) == len(b["metrics"]["history"]) == 2
    for k, v in a["state_dict"].items():
        assert torch.equal(b["state_dict"][k], v), k
    for k, v in a["train_state"]["average"]["weights"].items():
        assert torch.equal(b["train_state"]["average"]["weights"][k], v), k
    from advx.train import seeded_model
    initial = seeded_model("cert", 4).state_dict()["features.0.weight"]
    assert not torch.equal(a["state_dict"]["features.0.weight"], initial)  # it trained
