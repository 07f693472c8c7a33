"""advx.evaluate: worst case, cascade, eps reuse, determinism, outputs."""

import csv
import json

import pytest
import torch
from conftest import DATA_DIR, Counting

from advx.evaluate import evaluate

EPS = [0.05, 0.1, 0.2]
SETTINGS = dict(attacks=["fgsm", "pgd"], steps=10, checks=False, progress=False)


@pytest.fixture(scope="module")
def data(mnist_test):
    return mnist_test.x[:150], mnist_test.y[:150]


@pytest.fixture(scope="module")
def full(trained_cnn, data):
    """Every attack on every correct sample, each eps on its own."""
    return evaluate(trained_cnn, *data, eps=EPS, cascade=False, reuse_eps=False, **SETTINGS)


@pytest.fixture(scope="module")
def fast(trained_cnn, data):
    return evaluate(trained_cnn, *data, eps=EPS, **SETTINGS)


def test_attacks_do_something(fast):
    assert fast.clean_acc > 0.9
    assert fast.robust_acc[0.2] < 0.2 < fast.robust_acc[0.05]  # a no-op attack fails here


def test_worst_case_is_never_above_any_single_attack(full):
    for e in EPS:
        for name in full.attacks:
            assert full.robust_acc[e] <= full.robust_acc_by_attack[e][name]
        single = [full.robust_acc_by_attack[e][a] for a in full.attacks]
        assert full.robust_acc[e] <= min(single)
    assert full.robust_acc_by_attack[0.1]["pgd"] < full.robust_acc_by_attack[0.1]["fgsm"]


def test_cascade_equals_running_every_attack_on_every_sample(trained_cnn, data, full):
    cascade = evaluate(trained_cnn, *data, eps=EPS, cascade=True, reuse_eps=False, **SETTINGS)
    assert cascade.robust_acc == full.robust_acc
    assert torch.equal(cascade.records["robust"], full.records["robust"])


def test_eps_reuse_equals_independent_runs_combined_over_nested_balls(fast, full):
    # A sample is robust at eps only if no attack broke it at any eps' <= eps (its adversarial
    # example at eps' also lies in the larger ball). Independent runs, combined that way,
    # must give exactly the reused sweep.
    combined = full.records["robust"].cumprod(0).bool()
    assert torch.equal(fast.records["robust"], combined)
    for k, e in enumerate(EPS):
        assert fast.robust_acc[e] == pytest.approx(combined[k].float().mean().item())
        assert fast.robust_acc[e] <= full.robust_acc[e]


def test_reuse_keeps_the_first_record(fast):
    r = fast.records
    broken_small = r["broken_by"][0] >= 0
    assert broken_small.any()
    assert torch.equal(r["broken_by"][2][broken_small], r["broken_by"][0][broken_small])
    assert (r["distance"][0][broken_small] <= 0.05 + 1e-6).all()


def test_each_stage_has_its_wall_time(fast):
    assert list(fast.seconds_by_stage) == fast.attacks
    assert min(fast.seconds_by_stage.values()) > 0 and sum(fast.seconds_by_stage.values()) <= fast.seconds


def test_independent_of_batch_size(trained_cnn, data, fast):
    other = evaluate(trained_cnn, *data, eps=EPS, batch_size=37, **SETTINGS)
    flips = (other.records["robust"] != fast.records["robust"]).sum().item()
    assert flips <= 1  # float rounding at a decision boundary, at most


def test_same_seed_same_report_other_seed_differs(trained_cnn, data, fast):
    again = evaluate(trained_cnn, *data, eps=EPS, **SETTINGS)
    for key in fast.records:
        assert torch.equal(again.records[key], fast.records[key]), key
    other = evaluate(trained_cnn, *data, eps=EPS, seed=1, **SETTINGS)
    assert not torch.equal(other.records["step"], fast.records["step"])


def test_only_correct_samples_are_attacked(trained_cnn, data):
    x, y = data
    calls = []

    def spy(model, eps):
        from advx import PGD

        attack = PGD(model, eps=eps, steps=5)
        original = attack.run
        attack.run = lambda xb, yb, **kw: calls.append(len(xb)) or original(xb, yb, **kw)
        return attack

    ev = evaluate(trained_cnn, x, y, attacks=[spy], eps=[0.1], checks=False, progress=False)
    assert sum(calls) == round(ev.clean_acc * len(y))


def test_bad_arguments(trained_cnn, data):
    x, y = data
    with pytest.raises(ValueError, match="eps must be >= 0, got -0.1"):
        evaluate(trained_cnn, x, y, eps=[0.1, -0.1], progress=False)
    with pytest.raises(ValueError, match="attack must be one of .*got 'pgdd'"):
        evaluate(trained_cnn, x, y, attacks=["pgdd"], progress=False)
    with pytest.raises(ValueError, match=r"y must be 1-D with one label per image \(150\), got shape \(3,\)"):
        evaluate(trained_cnn, x, y[:3], progress=False)


def test_cli_eval_writes_report_csv_and_curve(tmp_path, capsys):
    from PIL import Image

    from advx.checkpoint import save_checkpoint
    from advx.cli import main
    from advx.train import seeded_model

    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, seeded_model("small", 0), model_name="small")
    out = tmp_path / "ev"
    code = main(["eval", "--checkpoint", str(ckpt), "--attacks", "fgsm,pgd", "--eps", "0.1,0.3",
                 "--steps", "3", "--n", "40", "--out", str(out), "--data-dir", str(DATA_DIR), "--quiet"])
    assert code == 0
    assert "worst case" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert set(report["robust_acc"]) == {"0.1", "0.3"}
    assert set(report["robust_acc_by_attack"]["0.3"]) == {"fgsm", "pgd"}
    assert report["settings"]["seed"] == 0 and report["settings"]["steps"] == 3
    assert {"passed", "warnings"} <= set(report["sanity"])
    assert "torch" in report["environment"]
    rows = list(csv.DictReader((out / "per_sample.csv").open()))
    assert len(rows) == 40
    assert {"index", "label", "pred_clean", "robust@0.1", "attack@0.3", "step@0.3", "distance@0.3"} <= set(rows[0])
    with Image.open(out / "curve.png") as img:
        img.verify()


def test_later_attacks_with_nothing_left_to_attack(trained_cnn, data):
    ev = evaluate(trained_cnn, *data, attacks=["pgd", "fgsm"], eps=[0.5], steps=20, checks=False, progress=False)
    assert ev.robust_acc[0.5] == 0.0 and ev.robust_acc_by_attack[0.5]["fgsm"] == 0.0


def test_suite_stage_options_apply_and_explicit_options_win(trained_cnn):
    from advx.attacks.registry import stage_factory

    stage = ("apgd", {"restarts": 5, "n_target_classes": 3})
    name, make = stage_factory(stage, dict(steps=None, restarts=None))
    atk = make(trained_cnn, 0.3)
    assert name == "apgd" and atk.restarts == 5 and atk.n_target_classes == 3
    atk = stage_factory(stage, dict(steps=7, restarts=2))[1](trained_cnn, 0.3)
    assert atk.restarts == 2 and atk.steps == 7 and atk.n_target_classes == 3


def test_every_named_suite_builds_and_describes_itself(trained_cnn):
    from advx.attacks.registry import SUITES, describe, stage_factory, suite
    from advx.norms import NORM_NAMES, get_norm

    for name, per_norm in SUITES.items():
        assert sorted(per_norm) == sorted(NORM_NAMES)  # every threat model has its cascade
        for norm in per_norm:
            for stage in suite(name, norm):  # a preset option the attack lacks would raise, a norm it lacks too
                stage_factory(stage, {"norm": norm})[1](trained_cnn, get_norm(norm).budget(0.3 if get_norm(norm).certifiable else 3.0))
    assert describe(suite("strong")) == ("apgd(restarts=1, near_restarts=30, near=0.5),"
                                         "apgd-t(n_target_classes=3, near_restarts=6, near=0.5),"
                                         "square(queries=5000, screen=1000, near=0.5)")
    assert describe(suite("strong"), {"restarts": 2, "steps": None}).startswith("apgd(restarts=2, near_restarts=30,")
    with pytest.raises(ValueError, match="suite must be one of"):
        suite("weak")
    assert describe(["fgsm", ("pgd", {})]) == "fgsm,pgd"


def test_stage_option_the_attack_does_not_take_is_an_error(trained_cnn, data):
    with pytest.raises(ValueError, match="'queries'.*'apgd'"):
        evaluate(trained_cnn, *data, attacks=[("apgd", {"queries": 10})], eps=[0.1], checks=False, progress=False)
    with pytest.raises(ValueError, match="attack must be one of .*got 'nope'"):
        evaluate(trained_cnn, *data, attacks=[("nope", {})], eps=[0.1], checks=False, progress=False)


# ----------- each attack on its own, repeated or unused settings, eps 0, labels
def test_without_the_cascade_each_column_is_the_attack_on_its_own(trained_cnn, data):
    # With nested-eps reuse the survivors carried to the next eps were the worst case over
    # all attacks, so what PGD broke at 0.1 was charged to FGSM at 0.11.
    eps = [0.1, 0.11, 0.2]
    both = evaluate(trained_cnn, *data, attacks=["fgsm", "pgd"], eps=eps, cascade=False, steps=10,
                    checks=False, progress=False)
    for name in ("fgsm", "pgd"):
        alone = evaluate(trained_cnn, *data, attacks=[name], eps=eps, steps=10 if name == "pgd" else None,
                         checks=False, progress=False)
        for e in eps:
            assert both.robust_acc_by_attack[e][name] == alone.robust_acc[e], (name, e)
    for e in eps:
        assert both.robust_acc[e] <= min(both.robust_acc_by_attack[e].values())
    cascade = evaluate(trained_cnn, *data, attacks=["fgsm", "pgd"], eps=eps, steps=10, checks=False, progress=False)
    assert torch.equal(cascade.records["robust"], both.records["robust"])  # the worst case is the same


def test_repeated_attacks_are_rejected(trained_cnn, data):
    with pytest.raises(ValueError, match="attacks must not repeat an attack, got 'fgsm' more than once"):
        evaluate(trained_cnn, *data, attacks=["fgsm", "pgd", "fgsm"], eps=[0.1], progress=False)


def test_repeated_eps_are_rejected(trained_cnn, data):
    with pytest.raises(ValueError, match="eps must not repeat a value, got 0.1 more than once"):
        evaluate(trained_cnn, *data, eps=[0.1, 0.2, 0.1], progress=False)


def test_an_option_no_attack_takes_is_an_error(trained_cnn, data):
    with pytest.raises(ValueError, match=r"steps does not apply to any attack of the cascade \(fgsm\)"):
        evaluate(trained_cnn, *data, attacks=["fgsm"], steps=10, eps=[0.1], progress=False)


def test_eps_zero_is_the_clean_accuracy(trained_cnn, data):
    ev = evaluate(trained_cnn, *data, attacks=["fgsm", "pgd"], eps=[0, 0.1], steps=5, checks=False, progress=False)
    assert ev.robust_acc[0.0] == ev.clean_acc
    assert ev.robust_acc[0.1] < ev.clean_acc


def test_labels_of_any_integer_dtype_and_numpy_eps(trained_cnn, data, fast):
    import numpy as np

    x, y = data
    other = evaluate(trained_cnn, x, y.to(torch.int32), eps=[np.float64(e) for e in EPS], **SETTINGS)
    assert torch.equal(other.records["robust"], fast.records["robust"])
    single = evaluate(trained_cnn, x, y, eps=np.float64(0.1), **SETTINGS)  # one budget, not a list
    assert list(single.robust_acc) == [0.1]
    with pytest.raises(ValueError, match="y must hold integer class labels, got dtype torch.float32"):
        evaluate(trained_cnn, x, y.float(), eps=[0.1], progress=False)


# --------------------------------------------------------- minimum-norm attacks
def test_evaluate_runs_a_minimum_norm_attack_once_for_every_eps(trained_cnn, few):
    x, y = few
    counted = Counting(trained_cnn)
    one = evaluate(counted, x, y, attacks=["fmn"], eps=[1.0], norm="2", steps=20, checks=False, progress=False)
    cost_one, counted.images = counted.images, 0
    eps = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0]
    many = evaluate(counted, x, y, attacks=["fmn"], eps=eps, norm="2", steps=20, checks=False, progress=False)
    assert counted.images == cost_one  # the same forwards: one run, whatever the number of eps
    assert many.robust_acc[1.0] == one.robust_acc[1.0]
    # at each eps, a sample is broken iff the one run found an adversarial example within eps
    size = many.records["distance"]
    broken = many.records["broken_by"] >= 0
    for k, e in enumerate(eps):
        assert (size[k][broken[k]] <= e).all()
        assert many.robust_acc[e] == pytest.approx((~broken[k]).float().mean().item())
    assert [many.robust_acc[e] for e in eps] == sorted((many.robust_acc[e] for e in eps), reverse=True)
    assert many.robust_acc[eps[0]] > many.robust_acc[eps[-1]]  # the curve is not flat: the check can fail


def test_evaluate_minimum_norm_results_do_not_depend_on_the_batch(trained_cnn, few):
    x, y = few
    a = evaluate(trained_cnn, x, y, attacks=["fab"], eps=[0.1, 0.2], steps=10, batch_size=7, checks=False,
                 progress=False)
    b = evaluate(trained_cnn, x, y, attacks=["fab"], eps=[0.1, 0.2], steps=10, batch_size=100, checks=False,
                 progress=False)
    assert torch.equal(a.records["broken_by"], b.records["broken_by"])
    torch.testing.assert_close(a.records["distance"], b.records["distance"])
