"""Adversarial training: attack (dL/dX, weights frozen) then weight step (dL/dW) per batch."""

import copy
import math
import warnings

import pytest
import torch
from conftest import DATA_DIR, TinyCNN, failing_on_call, load_script

from advx import PGD
from advx import adversarial as adv_mod
from advx.adversarial import AdversarialConfig, AdversarialLoss
from advx.attacks.objectives import mart_loss, trades_loss
from advx.certified import CertifiedConfig
from advx.checkpoint import load_checkpoint
from advx.modes import accuracy
from advx.probe import catastrophic_overfitting
from advx.robust_training import robust_config, train_robust
from advx.train import TrainConfig, seeded_model, train


def _tiny(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyCNN()


def _pgd_acc(model, x, y, eps):
    return accuracy(model, PGD(model, eps=eps, steps=10)(x, y), y)


@pytest.mark.slow
def test_adversarial_training_raises_pgd_accuracy(mnist_train, mnist_test):
    data = mnist_train.head(6000)
    x, y = mnist_test.x[:400], mnist_test.y[:400]
    config = TrainConfig(epochs=2, batch_size=64, lr=3e-3)
    clean, robust = _tiny(), _tiny()
    train(clean, data, None, config, progress=False)
    train(robust, data, None, config, loss_fn=AdversarialLoss("pgd", eps=0.1, steps=3), progress=False)
    clean_pgd, robust_pgd = _pgd_acc(clean, x, y, 0.1), _pgd_acc(robust, x, y, 0.1)
    assert robust_pgd > clean_pgd + 0.15
    assert accuracy(robust, x, y) > 0.8


@pytest.mark.parametrize("kind", ["fgsm-rs", "pgd", "trades", "mart"])
def test_weights_are_trainable_again_after_each_inner_attack(kind, mnist_train):
    model = _tiny()
    inner = AdversarialLoss(kind, eps=0.3, steps=2)
    before = copy.deepcopy(model.state_dict())
    checked = []

    def loss_fn(model, x, y, *, epoch):
        loss, logits = inner(model, x, y, epoch=epoch)
        assert model.training  # the attack put it in eval, then restored it
        assert all(p.requires_grad for p in model.parameters())
        assert loss.requires_grad and loss.grad_fn is not None  # dL/dW will flow
        checked.append(True)
        return loss, logits

    train(model, mnist_train.head(256), None, TrainConfig(epochs=1, batch_size=64), loss_fn=loss_fn,
          progress=False)
    assert len(checked) == 4
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every weight got a gradient


def test_fgsm_rs_is_one_pgd_step_of_1_25_eps():
    atk = AdversarialLoss("fgsm-rs", eps=0.2).attack(_tiny(), 0.2)
    assert (atk.steps, atk.alpha, atk.random_start) == (1, pytest.approx(0.25), True)


def test_pgd_training_stops_each_sample_at_its_first_adversarial_iterate():
    model = _tiny()
    assert AdversarialLoss("pgd", eps=0.3, steps=5).attack(model, 0.3).early_stop  # the default
    assert not AdversarialLoss("pgd", eps=0.3, steps=5, early_stop=False).attack(model, 0.3).early_stop
    assert not AdversarialLoss("trades", eps=0.3, steps=5).attack(model, 0.3).early_stop  # KL: no "fooled yet"
    assert AdversarialLoss("fgsm-rs", eps=0.2, alpha=0.4).attack(model, 0.2).alpha == pytest.approx(0.4)
    assert AdversarialConfig().early_stop and not AdversarialConfig(early_stop=False).early_stop
    with pytest.raises(ValueError, match="early_stop must be True or False, got 'no'"):
        AdversarialConfig(early_stop="no")


def test_eps_warmup_ramps_linearly():
    loss = AdversarialLoss("pgd", eps=0.3, warmup_epochs=2)
    assert loss.eps_at(0) == 0 and loss.eps_at(1) == pytest.approx(0.15) and loss.eps_at(5) == 0.3


def test_trades_loss_equals_its_formula():
    clean = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    adv = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    p = [[math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)], [1 / (1 + math.e), math.e / (1 + math.e)]]
    q = [[0.5, 0.5], [1 / (1 + math.exp(3)), math.exp(3) / (1 + math.exp(3))]]
    ce = -(math.log(p[0][0]) + math.log(p[1][1])) / 2
    kl = sum(p[i][j] * math.log(p[i][j] / q[i][j]) for i in range(2) for j in range(2)) / 2
    assert trades_loss(clean, adv, y, beta=6.0).item() == pytest.approx(ce + 6.0 * kl, rel=1e-6)
    assert trades_loss(clean, clean, y, beta=6.0).item() == pytest.approx(ce, rel=1e-6)


def test_mart_loss_equals_its_formula():
    clean = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    adv = torch.tensor([[1.0, 1.5, 0.0], [0.3, 2.0, 0.0]])
    y = torch.tensor([0, 1])
    p, q = clean.softmax(1).tolist(), adv.softmax(1).tolist()
    total = 0.0
    for i, label in enumerate(y.tolist()):
        other = max(q[i][j] for j in range(3) if j != label)
        boosted = -math.log(q[i][label]) - math.log(1 - other)
        kl = sum(p[i][j] * math.log(p[i][j] / q[i][j]) for j in range(3))
        total += boosted + 5.0 * kl * (1 - p[i][label])
    assert mart_loss(clean, adv, y, beta=5.0).item() == pytest.approx(total / 2, rel=1e-6)
    # beta 0: the boosted CE alone, which adds -log(1 - p(largest other class)) to plain CE
    assert mart_loss(clean, adv, y, beta=0.0).item() > torch.nn.functional.cross_entropy(adv, y).item()


def test_catastrophic_overfitting_detection():
    healthy = [{"probe_acc": 0.70, "fgsm_acc": 0.80}, {"probe_acc": 0.80, "fgsm_acc": 0.85},
               {"probe_acc": 0.82, "fgsm_acc": 0.86}]
    collapsed = healthy[:2] + [{"probe_acc": 0.05, "fgsm_acc": 0.95}]
    assert not catastrophic_overfitting(healthy)
    assert catastrophic_overfitting(collapsed)
    assert not catastrophic_overfitting(healthy[:1])
    # Seen in this project's PGD-5 training run: both fall, FGSM stays far above the probe.
    pgd_collapse = healthy[:2] + [{"probe_acc": 0.09, "fgsm_acc": 0.80}]
    assert catastrophic_overfitting(pgd_collapse)
    worse_everywhere = healthy[:2] + [{"probe_acc": 0.50, "fgsm_acc": 0.55}]  # plain divergence
    assert not catastrophic_overfitting(worse_everywhere)
    # Masked from the start: FGSM leaves most images standing, the probe breaks them.
    assert catastrophic_overfitting([{"probe_acc": 0.02, "fgsm_acc": 0.98}])
    assert not catastrophic_overfitting([{"probe_acc": 0.0, "fgsm_acc": 0.10}])  # merely weak
    # The figure it watches is a parameter (the certified kinds' history has no probe).
    renamed = [{("pgd_acc" if k == "probe_acc" else k): v for k, v in r.items()} for r in collapsed]
    assert catastrophic_overfitting(renamed, key="pgd_acc")


@pytest.mark.slow
@pytest.mark.parametrize("eps, alpha, epochs, collapses", [(0.3, 0.6, 3, True), (0.1, None, 2, False)])
def test_collapse_detector_on_real_runs(eps, alpha, epochs, collapses, tmp_path):
    """FGSM-RS with a step of 2 eps at eps 0.3 on 2,000 images masks the gradient within two
    epochs (held-out FGSM accuracy 99 %, the APGD/Square probe 1 %); the default step at
    eps 0.1 trains a model the probe agrees with. The detector stops the first, not the second."""
    config = TrainConfig(epochs=epochs, batch_size=50, train_size=2000)
    robust = AdversarialConfig(kind="fgsm-rs", eps=eps, alpha=alpha, warmup_epochs=0, holdout=200, final_n=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, history = train_robust(config, robust, checkpoint=tmp_path / "m.pt", data_dir=DATA_DIR, progress=False)
    fired = [str(w.message) for w in caught if "catastrophic overfitting" in str(w.message)]
    last = history[-1]
    if collapses:
        assert len(fired) == 1 and len(history) < config.epochs  # training stopped there
        assert last["fgsm_acc"] > 0.8 and last["probe_acc"] < 0.2
        assert load_checkpoint(tmp_path / "m.pt")["metrics"]["best"]["epoch"] < last["epoch"]
    else:
        assert not fired and len(history) == config.epochs
        assert last["probe_acc"] > 0.5 and last["fgsm_acc"] - last["probe_acc"] < 0.1


def test_no_collapse_is_judged_while_eps_ramps_and_one_in_the_first_epoch_is_said_plainly(tmp_path):
    """The held-out check is at the full eps: an epoch that ends with eps still ramping is
    expected to fail it and is not a collapse. A collapse in the very first judged epoch
    names that epoch as the one kept (before, its warning raised a KeyError)."""
    from advx.robust_training import _Keeper
    masked = [{"epoch": 1, "probe_acc": 0.02, "fgsm_acc": 0.98}]
    assert not AdversarialConfig(kind="pgd", warmup_epochs=2).collapsed(masked)
    assert AdversarialConfig(kind="pgd", warmup_epochs=1).collapsed(masked)
    saved = []
    keeper = _Keeper(lambda path, model, metrics, **extra: saved.append(path), tmp_path / "m.pt", TinyCNN(),
                     "probe_acc", AdversarialConfig(kind="pgd", warmup_epochs=1).collapsed, {"probe_acc": -math.inf})
    with pytest.warns(UserWarning, match=r"at epoch 1: .*the best checkpoint \(epoch 1, 2.00%\) is kept"):
        assert keeper(masked[0], {"history": masked}) is True
    assert saved == [tmp_path / "m.pt", tmp_path / "m.last.pt"]


def test_bad_settings():
    with pytest.raises(ValueError, match=r"kind must be one of \['fgsm-rs', 'pgd', 'trades', 'mart'\] \(an attack.*got 'free'"):
        AdversarialLoss("free", eps=0.3)
    with pytest.raises(ValueError, match="eps must be >= 0, got -0.3"):
        AdversarialLoss("pgd", eps=-0.3)
    with pytest.raises(ValueError, match="kind must be one of"):
        AdversarialConfig(kind="ibp")
    with pytest.raises(ValueError, match="kind must be one of"):
        robust_config("free")


@pytest.mark.parametrize("kind, options, message", [
    ("fgsm-rs", {"steps": 3}, "steps applies only with kind='pgd' or 'trades' or 'mart' or 'sabr' or 'mtl-ibp' or "
                             "'cc-ibp', got kind='fgsm-rs'"),
    ("pgd", {"beta": 3.0}, "beta applies only with kind='trades' or 'mart', got kind='pgd'"),
    ("trades", {"early_stop": False}, "early_stop applies only with kind='pgd', got kind='trades'"),
    ("pgd", {"kappa": 0.5}, "kappa applies only with kind='ibp' or 'crown-ibp' or 'sabr' or 'mtl-ibp' or 'cc-ibp', "
                     "got kind='pgd'"),
    ("ibp", {"final_n": 5}, "final_n applies only with kind='fgsm-rs' or 'pgd' or 'trades' or 'mart', got kind='ibp'"),
    ("ibp", {"gamma": 5}, "gamma is not a training option"),
])
def test_an_option_the_kind_does_not_take_is_refused(kind, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        robust_config(kind, **options)


def test_each_config_holds_the_defaults_of_its_kind():
    assert AdversarialConfig(kind="fgsm-rs").steps is None and AdversarialConfig(kind="pgd").steps == 10
    assert AdversarialConfig(kind="trades").beta == 6.0 and AdversarialConfig(kind="pgd").beta is None
    assert AdversarialConfig(kind="trades").early_stop is None
    assert isinstance(robust_config("crown-ibp", eps=0.1), CertifiedConfig)
    assert robust_config("pgd", steps=5) == AdversarialConfig(kind="pgd", steps=5)


@pytest.mark.slow
@pytest.mark.parametrize("ema", [None, 0.9])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, ema):
    config = TrainConfig(epochs=2, batch_size=100, train_size=600, seed=3, ema=ema)
    robust = AdversarialConfig(kind="pgd", eps=0.2, steps=2, warmup_epochs=1, holdout=100, final_n=0)
    common = dict(data_dir=DATA_DIR, progress=False)
    train_robust(config, robust, checkpoint=tmp_path / "a.pt", **common)
    uninterrupted = load_checkpoint(tmp_path / "a.last.pt")

    real = adv_mod.probe_metrics
    monkeypatch.setattr(adv_mod, "probe_metrics", failing_on_call(real, 2))  # in epoch two
    with pytest.raises(KeyboardInterrupt):
        train_robust(config, robust, checkpoint=tmp_path / "b.pt", **common)
    assert len(load_checkpoint(tmp_path / "b.last.pt")["metrics"]["history"]) == 1
    monkeypatch.setattr(adv_mod, "probe_metrics", real)
    train_robust(config, robust, checkpoint=tmp_path / "b.pt", resume=True, **common)
    resumed = load_checkpoint(tmp_path / "b.last.pt")
    assert len(resumed["metrics"]["history"]) == 2
    for k, v in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][k], v), k
    assert uninterrupted["state_dict"]["features.0.weight"].abs().sum() > 0
    best_a, best_b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    timeless = [{k: v for k, v in c["metrics"]["best"].items() if k != "seconds"} for c in (best_a, best_b)]
    assert timeless[0] == timeless[1]
    for k, v in best_a["state_dict"].items():
        assert torch.equal(best_b["state_dict"][k], v), k
    # with averaging the best checkpoint holds the average, the latest the trained weights
    if best_a["metrics"]["best"]["epoch"] == 2:
        kept = uninterrupted["train_state"]["average"]["weights"] if ema else uninterrupted["state_dict"]
        assert all(torch.equal(best_a["state_dict"][k], v) for k, v in kept.items())
    if ema:
        assert not torch.equal(best_a["state_dict"]["features.0.weight"],
                               uninterrupted["state_dict"]["features.0.weight"])


def test_training_stops_when_a_hook_asks(mnist_train):
    seen = []

    def on_epoch_end(record, state):
        seen.append(record["epoch"])
        return record["epoch"] == 2

    history = train(_tiny(), mnist_train.head(128), None, TrainConfig(epochs=5, batch_size=64),
                    on_epoch_end=on_epoch_end, progress=False)
    assert seen == [1, 2] and len(history) == 2


def test_a_damaged_resume_checkpoint_is_refused_in_one_line(tmp_path):
    from advx.checkpoint import CheckpointError, save_checkpoint

    last = tmp_path / "b.last.pt"
    save_checkpoint(last, seeded_model("small", 0), model_name="small")
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # somewhere inside the weights
    last.write_bytes(bytes(data))
    config = TrainConfig(epochs=1, batch_size=100, train_size=200)
    robust = AdversarialConfig(kind="pgd", eps=0.2, steps=2, holdout=100, final_n=0)
    with pytest.raises(CheckpointError) as info:
        train_robust(config, robust, checkpoint=tmp_path / "b.pt", resume=True, data_dir=DATA_DIR, progress=False)
    message = str(info.value)
    assert message.startswith(f"resume: checkpoint: {last}") and message.endswith("run without --resume to start "
                                                                                    "afresh")
    assert "\n" not in message and not (tmp_path / "b.pt").exists()


def test_the_final_suite_runs_on_held_out_images_only():
    assert AdversarialConfig(kind="pgd").final_n == 500
    assert AdversarialConfig(kind="pgd", holdout=300).final_n == 300  # the default follows a smaller holdout
    assert AdversarialConfig(kind="pgd", holdout=300, final_n=0).final_n == 0
    with pytest.raises(ValueError, match=r"final_n must be <= holdout \(300\): the final suite runs on the held-out "
                                         r"images, got 20000"):
        AdversarialConfig(kind="pgd", holdout=300, final_n=20000)


@pytest.mark.parametrize("name", ["cpu-short", "cpu-long"])
def test_every_adversarial_recipe_is_a_valid_training_command(name):
    from advx.cli import build_parser
    from advx.robust_training import check_options
    args = build_parser().parse_args(["train", *load_script("train_robust").RECIPES[name]])
    given = {k: getattr(args, k) for k in ("steps", "warmup_epochs", "holdout") if getattr(args, k) is not None}
    check_options(args.kind, given)
    config = TrainConfig(epochs=args.epochs, ema=args.ema, precision=args.precision)
    assert robust_config(args.kind, **given).kind == "pgd" and args.model == "small"
    assert (config.ema is not None) == (name == "cpu-long")  # the long recipe keeps the averaged network
    # the long recipe must not overwrite the short one's checkpoint
    assert (args.checkpoint is None) == (name == "cpu-short")


def test_an_unknown_adversarial_recipe_is_one_clear_error(capsys):
    assert load_script("train_robust").run(["--recipe", "cpu-medium"]) == 2
    assert "--recipe must be one of cpu-short, cpu-long, got 'cpu-medium'" in capsys.readouterr().err
