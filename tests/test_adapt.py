"""``evaluate`` adapts itself to a defended model (``advx.adapt``): masked input gradients on a
probe batch turn on BPDA and add the black-box stage, so that the default evaluation of a
defence is not its trap; an ordinary model is evaluated exactly as without adaptation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA_DIR
from defences import DEFENCES, Quantized, user_model_folder

from advx import evaluate
from advx.adapt import masked_share

SETTINGS = dict(attacks=["fgsm", "pgd"], eps=[0.1, 0.3], steps=20, progress=False)


@pytest.fixture(scope="module")
def images(batch):
    return batch[0][:100], batch[1][:100]


def test_an_ordinary_model_is_evaluated_as_without_adaptation(trained_cnn, images):
    x, y = images
    assert masked_share(trained_cnn, x, y) == 0
    adapted = evaluate(trained_cnn, x, y, **SETTINGS)
    plain = evaluate(trained_cnn, x, y, adapt=False, **SETTINGS)
    assert adapted.settings["adaptations"] == {} and adapted.attacks == plain.attacks == ["fgsm", "pgd"]
    for key, value in plain.records.items():
        assert torch.equal(torch.as_tensor(adapted.records[key]), torch.as_tensor(value)), key
    assert adapted.robust_acc == plain.robust_acc and adapted.warnings == plain.warnings


@pytest.mark.parametrize("defence", [d if k == 0 else pytest.param(d, marks=pytest.mark.slow) for k, d in
                                     enumerate(DEFENCES)], ids=lambda d: d.name)
def test_a_defence_is_evaluated_through_its_trap_by_default(defence, trained_cnn, images):
    x, y = images
    model = defence(trained_cnn).eval()
    assert masked_share(model, x, y) == 1.0
    plain = evaluate(model, x, y, adapt=False, **SETTINGS)
    adapted = evaluate(model, x, y, **SETTINGS)
    assert adapted.clean_acc == plain.clean_acc  # verdicts from the model's own forward pass
    assert set(adapted.settings["adaptations"]) == {"bpda", "square"}
    assert adapted.attacks == ["fgsm", "pgd", "square"]
    assert "100% of a probe batch of 100 images" in adapted.settings["adaptations"]["bpda"]
    assert plain.robust_acc[0.3] > 0.5 * plain.clean_acc  # the trap
    drop = 0.15 if defence.name == "thresholded" else 0.4  # binarized MNIST is robust for real
    assert adapted.robust_acc[0.3] < plain.robust_acc[0.3] - drop, (plain.robust_acc, adapted.robust_acc)
    assert "gradients" in plain.warnings and "gradients" not in adapted.warnings


def test_a_cascade_with_a_black_box_stage_keeps_it(trained_cnn, images):
    x, y = images
    ev = evaluate(Quantized(trained_cnn).eval(), x[:40], y[:40], attacks=["pgd", "square"], eps=[0.3], steps=10,
                  progress=False, checks=False)
    assert ev.attacks == ["pgd", "square"] and list(ev.settings["adaptations"]) == ["bpda"]


def test_the_cli_adapts_eval_and_attacks_through_bpda_when_asked(trained_cnn, tmp_path, capsys, monkeypatch):
    folder = user_model_folder(tmp_path / "m", Quantized, trained_cnn)
    monkeypatch.chdir(folder)
    common = ["eval", "--model", "defended.py:build", "--weights", "weights.pt", "--attacks", "pgd", "--eps", "0.3",
              "--steps", "10", "--n", "40", "--data-dir", str(DATA_DIR), "--no-checks", "--quiet"]
    assert main_ok([*common, "--out", "a"])
    printed = capsys.readouterr().out
    assert "adapted: input gradients were zero or not finite for 100% of a probe batch of 40 images" in printed
    report = json.loads((folder / "a" / "report.json").read_text())
    assert report["settings"]["adapt"] is True and set(report["settings"]["adaptations"]) == {"bpda", "square"}
    assert main_ok([*common, "--out", "b", "--no-adapt"])
    assert "adapted:" not in capsys.readouterr().out
    plain = json.loads((folder / "b" / "report.json").read_text())
    assert plain["settings"]["adaptations"] == {} and plain["robust_acc"]["0.3"] > report["robust_acc"]["0.3"] + 0.4

    attack = ["attack", "--model", "defended.py:build", "--weights", "weights.pt", "--attack", "pgd", "--eps", "0.3",
              "--steps", "10", "--n", "40", "--data-dir", str(DATA_DIR), "--quiet"]
    assert main_ok([*attack, "--out", "c"]) and main_ok([*attack, "--out", "d", "--bpda"])
    without, through = (json.loads((folder / name / "report.json").read_text()) for name in ("c", "d"))
    assert through["bpda"] is True and without["bpda"] is False
    assert through["results"]["clean_acc"] == without["results"]["clean_acc"]
    assert through["results"]["robust_acc"] < without["results"]["robust_acc"] - 0.4


def main_ok(argv) -> bool:
    from advx.cli import main

    return main(argv) == 0


def test_square_is_the_cross_check_in_l2_and_l1_too(trained_cnn, images):
    """Square attacks in Linf, L2 and L1: it joins the cascade in each norm."""
    x, y = images
    model = Quantized(trained_cnn).eval()
    ev = evaluate(model, x[:40], y[:40], attacks=["pgd"], eps=[3.0], norm="2", steps=10, progress=False, checks=False)
    assert ev.attacks == ["pgd", "square"] and list(ev.settings["adaptations"]) == ["bpda", "square"]
    assert ev.robust_acc[3.0] < 0.5 * ev.clean_acc
    ev = evaluate(model, x[:40], y[:40], attacks=["pgd"], eps=[15.0], norm="1", steps=10, progress=False,
                  checks=False)
    assert ev.attacks == ["pgd", "square"] and list(ev.settings["adaptations"]) == ["bpda", "square"]
    assert ev.robust_acc[15.0] < 0.5 * ev.clean_acc


def test_adapt_must_be_a_boolean():
    from advx import EvalConfig

    with pytest.raises(ValueError, match="adapt must be True or False, got 'no'"):
        EvalConfig(adapt="no")
