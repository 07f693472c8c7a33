import pytest
import torch

from advx.models import MODELS, build_model
from advx.train import TrainConfig, TrainingDiverged, seeded_model, train, train_baseline


@pytest.fixture(scope="module")
def small_set(mnist_train):
    return mnist_train.head(2048)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_changes_weights_but_not_the_data(small_set):
    x_before, y_before = small_set.x.clone(), small_set.y.clone()
    model = seeded_model("small", 0)
    before = _weights(model)
    train(model, small_set, None, TrainConfig(epochs=1, batch_size=256), progress=False)
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "classifier.3.weight" in changed and "features.0.weight" in changed
    assert torch.equal(small_set.x, x_before) and torch.equal(small_set.y, y_before)
    assert small_set.x.grad is None and not small_set.x.requires_grad


def test_loss_decreases_on_real_mnist(small_set, mnist_test):
    model = seeded_model("small", 0)
    history = []
    train(model, small_set, mnist_test.head(1000), TrainConfig(epochs=2, batch_size=128),
          progress=False, on_epoch_end=lambda record, state: history.append(record))
    assert history[1]["train_loss"] < history[0]["train_loss"] < 2.3
    assert history[-1]["test_acc"] > 0.7  # chance is 0.1


def test_same_seed_gives_identical_weights_and_other_seed_does_not(small_set):
    subset = small_set.head(512)
    runs = []
    for seed in (3, 3, 4):
        model = seeded_model("small", seed)
        train(model, subset, None, TrainConfig(epochs=1, batch_size=128, seed=seed), progress=False)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_seeded_model_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    seeded_model("small", 0)
    assert torch.equal(torch.get_rng_state(), state)


def test_custom_loss_fn_is_the_hook_for_adversarial_batches(small_set):
    seen = []

    def loss_fn(model, x, y, *, epoch):
        seen.append(epoch)
        return torch.nn.functional.cross_entropy(model(1 - x), y), model(1 - x)

    model = seeded_model("small", 0)
    train(model, small_set.head(512), None, TrainConfig(epochs=2, batch_size=256), loss_fn=loss_fn,
          progress=False)
    assert seen == [0.0, 0.5, 1.0, 1.5]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_output_logits(name):
    out = build_model(name).eval()(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert not torch.allclose(out.softmax(1).sum(1), out.sum(1))  # raw logits, not probabilities


def test_unknown_model_and_bad_config_are_clear_errors():
    with pytest.raises(ValueError, match=r"model must be one of \['cert', 'cnn7', 'cnn7-cpu', 'madry', 'small'\], got 'resnet'"):
        build_model("resnet")
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="lr must be > 0, got -1"):
        TrainConfig(lr=-1)


# ------------------------------- faults: out-of-range settings, a diverging run
@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=float("inf")), "lr must be a finite number, got inf"),
    (dict(lr=float("nan")), "lr must be a finite number, got nan"),
    (dict(weight_decay=float("inf")), "weight_decay must be a finite number, got inf"),
    (dict(epochs=2.5), "epochs must be an integer, got 2.5"),
    (dict(seed=2**70), "seed must be <= 9223372036854775807"),
])
def test_non_finite_or_out_of_range_hyperparameters(kwargs, message):
    with pytest.raises(ValueError) as info:
        TrainConfig(**kwargs)
    assert message in str(info.value)


def test_a_diverging_run_stops_and_keeps_the_previous_checkpoint(tmp_path):
    from conftest import DATA_DIR

    from advx.checkpoint import save_checkpoint

    path = tmp_path / "good.pt"
    save_checkpoint(path, seeded_model("small", 0), model_name="small", metrics={"test_acc": 0.99})
    before = path.read_bytes()
    config = TrainConfig(epochs=1, batch_size=64, lr=1e30, train_size=512)  # finite, but far too large
    with pytest.raises(TrainingDiverged, match="training diverged: the loss became nan at epoch 1, step 2"):
        train_baseline(config, data_dir=DATA_DIR, checkpoint=path, progress=False)
    assert path.read_bytes() == before  # NaN weights were saved over it before the fix


# ------------------------------- weight averaging (EMA)
def test_weight_average_follows_its_formula_and_copies_integer_buffers():
    from advx.averaging import WeightAverage

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    start = _weights(net)
    average = WeightAverage(net, decay=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.fill_(4.0)
        net[1].num_batches_tracked.fill_(7)
    average.update(net)  # the first update's decay is min(0.5, 2/11): it moves 9/11 of the way
    got = average.model.state_dict()
    assert torch.allclose(got["0.weight"], start["0.weight"] + 9 / 11)
    assert torch.allclose(got["1.running_mean"], torch.full((2,), 4 * 9 / 11))
    assert got["1.num_batches_tracked"].item() == 7
    for _ in range(30):
        average.update(net)  # the decay is 0.5 from the 9th update on
    assert torch.allclose(got["0.weight"], start["0.weight"] + 1, atol=1e-6)
    assert not average.model.training and not any(p.requires_grad for p in average.model.parameters())
    assert all(p.requires_grad for p in net.parameters())


def test_training_with_ema_measures_and_keeps_the_average_and_trains_as_without(small_set, mnist_test):
    subset = small_set.head(512)
    plain = seeded_model("small", 0)
    train(plain, subset, None, TrainConfig(epochs=2, batch_size=128), progress=False)
    model, raw, states, records = seeded_model("small", 0), [], [], []

    def hook(record, state):
        raw.append(_weights(model))
        states.append(state)
        records.append(record)

    train(model, subset, mnist_test.head(500), TrainConfig(epochs=2, batch_size=128, ema=0.9), progress=False,
          on_epoch_end=hook)
    assert all(torch.equal(raw[-1][k], v) for k, v in plain.state_dict().items())  # the same weight steps
    average = states[-1]["average"]
    assert average["updates"] == 8
    assert all(torch.equal(model.state_dict()[k], v) for k, v in average["weights"].items())  # ends averaged
    assert not torch.equal(model.state_dict()["features.0.weight"], raw[-1]["features.0.weight"])
    # the test accuracy recorded is the averaged network's
    from advx.modes import accuracy
    assert records[-1]["test_acc"] == accuracy(model, mnist_test.x[:500], mnist_test.y[:500])


@pytest.mark.parametrize("ema,message", [
    (1.0, "ema must be < 1"), (0.0, "ema must be > 0, got 0.0"), (float("nan"), "ema must be a finite number"),
])
def test_ema_outside_zero_one_is_a_clear_error(ema, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(ema=ema)
