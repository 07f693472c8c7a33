"""Universal perturbations: one perturbation for every image, found on training images and
measured on test images it never saw."""

import copy
import json

import pytest
import torch
from conftest import DATA_DIR

from advx.cli import main
from advx.norms import get_norm
from advx.universal import applied, find_universal, fooling
from advx.validate import InputError


@pytest.fixture(scope="module")
def found(trained_cnn, mnist_train):
    return find_universal(trained_cnn, mnist_train.x[:5000], mnist_train.y[:5000], eps=0.3, epochs=2, seed=0)


def test_one_perturbation_fools_most_unseen_images_and_random_noise_of_its_size_does_not(found, trained_cnn,
                                                                                           mnist_test):
    x, y = mnist_test.x[:500], mnist_test.y[:500]
    measured = fooling(trained_cnn, x, y, found.delta)
    assert get_norm("inf").size(found.delta[None]).item() <= 0.3 + 1e-6
    signs = torch.randint(0, 2, found.delta.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = fooling(trained_cnn, x, y, 0.3 * signs.float())  # a random corner of the same ball
    assert measured["fooling_rate"] >= 0.5, measured["fooling_rate"]
    assert measured["fooling_rate"] >= noise["fooling_rate"] + 0.4, (measured["fooling_rate"], noise["fooling_rate"])
    assert measured["acc"] <= measured["clean_acc"] - 0.4
    assert len(found.history) == 2 and found.history[-1] >= 0.4  # on its training images too


def test_a_universal_patch_fools_more_than_random_contents_at_its_place(trained_cnn, mnist_train, mnist_test):
    """Measured (5,000 training images, 2 passes, 500 test images): a universal 8 x 8 patch
    fools 61 % of the test images (sides 4 and 6: 14 % and 28 %); random corners of the box
    pasted at the same place fool far fewer."""
    found = find_universal(trained_cnn, mnist_train.x[:5000], mnist_train.y[:5000], eps=8, norm="patch", epochs=2)
    x, y = mnist_test.x[:500], mnist_test.y[:500]
    rows, cols = found.mask[0].nonzero(as_tuple=True)
    assert found.mask.sum() == 64 and rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
    assert not found.delta[:, found.mask[0] == 0].any() and found.delta.min() >= 0 and found.delta.max() <= 1
    measured = fooling(trained_cnn, x, y, found.delta, mask=found.mask)
    corners = torch.randint(0, 2, found.delta.shape, generator=torch.Generator().manual_seed(0)).float()
    noise = fooling(trained_cnn, x, y, corners, mask=found.mask)
    assert measured["fooling_rate"] >= 0.4 and measured["fooling_rate"] >= noise["fooling_rate"] + 0.2, \
        (measured["fooling_rate"], noise["fooling_rate"])
    pasted = applied(x, found.delta, (0.0, 1.0), found.mask)  # what was measured: only the patch differs
    outside = found.mask[0] == 0
    assert torch.equal(pasted[..., outside], x[..., outside]) and not torch.equal(pasted, x)


def test_the_model_and_the_images_are_left_as_they_were_and_a_seed_repeats(trained_cnn, mnist_train):
    model = copy.deepcopy(trained_cnn).train()
    next(model.parameters()).requires_grad_(False)  # a flag of the caller's, to be kept
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = mnist_train.x[:300].clone(), mnist_train.y[:300].clone()
    x0 = x.clone()
    a = find_universal(model, x, y, eps=2.0, norm="2", epochs=1, batch_size=100, seed=3)
    b = find_universal(model, x, y, eps=2.0, norm="2", epochs=1, batch_size=100, seed=3)
    assert torch.equal(a.delta, b.delta) and get_norm("2").size(a.delta[None]).item() <= 2.0 + 1e-5
    assert a.delta.abs().sum() > 0  # it moved
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters()) and torch.equal(x, x0)


@pytest.mark.parametrize("call, message", [
    (lambda m, x, y: find_universal(m, x, y, eps=10, norm="1"), "norm must be 'inf', '2', 'patch' or 'frame'"),
    (lambda m, x, y: find_universal(m, x, y, eps=5, norm="0"), "norm must be 'inf', '2', 'patch' or 'frame'"),
    (lambda m, x, y: find_universal(m, x, y, eps=2.5, norm="patch"), "eps must be a whole number of pixels"),
    (lambda m, x, y: find_universal(m, x, y, eps=29, norm="patch"), "eps must be a patch side from 1 to 28"),
    (lambda m, x, y: find_universal(m, x, y, eps=-0.1), "eps must be >= 0"),
    (lambda m, x, y: find_universal(m, x, y, eps=0.1, epochs=0), "epochs must be >= 1"),
    (lambda m, x, y: fooling(m, x, y, torch.zeros(1, 14, 14)), "it applies only to images of its own shape"),
])
def test_bad_input_is_one_clear_error(trained_cnn, mnist_test, call, message):
    with pytest.raises(InputError, match=message):
        call(trained_cnn, mnist_test.x[:10], mnist_test.y[:10])


def test_the_cli_writes_the_perturbation_and_its_fooling_rate(small_checkpoint, tmp_path, capsys):
    out = tmp_path / "uni"
    code = main(["attack", "--universal", "--checkpoint", str(small_checkpoint), "--train-images", "1000",
                 "--steps", "2", "--n", "200", "--data-dir", str(DATA_DIR), "--out", str(out), "--quiet"])
    assert code == 0
    assert "fooling rate" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    delta = torch.load(out / "perturbation.pt", weights_only=True)
    assert tuple(delta.shape) == (1, 28, 28) and delta.abs().max() <= 0.3 + 1e-6
    assert report["universal"]["eps"] == 0.3 and len(report["universal"]["train_fooling_rate"]) == 2
    assert 0 <= report["results"]["fooling_rate"] <= 1 and report["train_images"] == 1000
    assert (out / "examples.png").stat().st_size > 0


@pytest.mark.parametrize("options, message", [
    (["--norm", "1"], "--norm must be inf, 2, patch or frame with --universal"),
    (["--norm", "patch", "--eps", "40"], "eps must be a patch side from 1 to 28"),
    (["--targeted", "--target-class", "3"], "--targeted, --target-class cannot go with --universal"),
    (["--train-images", "0"], "--train-images must be >= 1"),
    (["--train-images", "70000"], "--train-images must be at most 60,000"),
])
def test_bad_universal_options_are_one_line_and_write_nothing(small_checkpoint, tmp_path, capsys, options,
                                                              message):
    out = tmp_path / "uni"
    code = main(["attack", "--universal", "--checkpoint", str(small_checkpoint), "--n", "2",
                 "--data-dir", str(DATA_DIR), "--out", str(out), "--quiet", *options])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (out / "report.json").exists()


def test_eval_universal_sweeps_eps_and_larger_budgets_fool_more(small_checkpoint, tmp_path, capsys):
    """``advx eval --threat universal``: one perturbation per eps, each inside its ball, and the
    accuracy under it falls as eps grows (from none fooled at 0 to some at 0.3)."""
    out = tmp_path / "uni"
    code = main(["eval", "--threat", "universal", "--checkpoint", str(small_checkpoint), "--eps", "0,0.3",
                 "--train-images", "1000", "--steps", "2", "--n", "200", "--data-dir", str(DATA_DIR),
                 "--out", str(out), "--quiet"])
    assert code == 0
    assert "fooling rate" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["threat"] == "universal" and report["norm"] == "inf" and report["train_images"] == 1000
    none, most = report["results"]
    assert none["eps"] == 0 and none["fooling_rate"] == 0 and none["acc"] == report["clean_acc"]
    assert most["eps"] == 0.3 and most["fooling_rate"] > 0.1 and most["acc"] < none["acc"]
    deltas = torch.load(out / "perturbations.pt", weights_only=True)
    assert set(deltas) == {0.0, 0.3} and deltas[0.3].abs().max() <= 0.3 + 1e-6 and not deltas[0.0].any()
    assert all((out / name).stat().st_size > 0 for name in ("curve.png", "examples.png"))


@pytest.mark.parametrize("options, message", [
    (["--threat", "0", "--norm", "inf"], "--threat and --norm exclude each other"),
    (["--threat", "universal", "--norm", "1"], "--norm must be inf, 2, patch or frame with --universal"),
    (["--threat", "universal", "--attacks", "pgd"], "--attacks cannot go with --universal"),
    (["--universal", "--norm", "0"], "--norm must be inf, 2, patch or frame with --universal"),
    (["--universal", "--eps", "-0.1"], "--eps must be comma-separated budgets >= 0"),
    (["--universal", "--train-images", "0"], "--train-images must be >= 1"),
    (["--threat", "0", "--patch-size", "4"], "--patch-size applies to patches (--threat patch)"),
    (["--threat", "patch", "--patch-size", "4", "--eps", "6"], "--patch-size and --eps both give the patch sides"),
])
def test_bad_eval_threat_options_are_one_line_and_write_nothing(small_checkpoint, tmp_path, capsys, options,
                                                                 message):
    out = tmp_path / "uni"
    code = main(["eval", "--checkpoint", str(small_checkpoint), "--n", "2", "--data-dir", str(DATA_DIR),
                 "--out", str(out), "--quiet", *options])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (out / "report.json").exists()


def test_threat_patch_with_patch_sizes_is_norm_patch_with_eps():
    from advx.cli import build_parser
    from advx.cli.eval import _configs, _resolve_threat

    args = build_parser().parse_args(["eval", "--threat", "patch", "--patch-size", "4,8"])
    _resolve_threat(args)
    config = _configs(args, "mnist", "cpu")["patch"]
    assert config.eps == (4, 8) and config.norm.name == "patch"


def test_the_cli_finds_a_universal_patch(small_checkpoint, tmp_path, capsys):
    out = tmp_path / "patch"
    code = main(["attack", "--universal", "--norm", "patch", "--eps", "8", "--checkpoint", str(small_checkpoint),
                 "--train-images", "1000", "--steps", "1", "--n", "100", "--data-dir", str(DATA_DIR),
                 "--out", str(out), "--quiet"])
    assert code == 0 and "fooling rate" in capsys.readouterr().out
    saved = torch.load(out / "perturbation.pt", weights_only=True)
    assert saved["mask"].sum() == 64 and tuple(saved["values"].shape) == (1, 28, 28)
    report = json.loads((out / "report.json").read_text())
    assert report["universal"]["norm"] == "patch" and report["universal"]["size"] == 8
