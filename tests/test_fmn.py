"""FMN (Fast Minimum-Norm): strength and minimality on real MNIST against DeepFool and CW,
consistent results, targeted mode, edge cases, argument checks."""

import pytest
import torch
from conftest import Binarized

from advx import CW, DeepFool
from advx.attacks.fmn import FMN

NORMS = ["inf", "2", "1"]


@pytest.fixture(scope="module")
def fmn_results(trained_cnn, clean):
    """Untargeted FMN with its defaults (100 steps), once per norm."""
    x, y = clean
    return {norm: FMN(trained_cnn, norm=norm).run(x, y) for norm in NORMS}


@pytest.fixture(scope="module")
def deepfool_results(trained_cnn, clean):
    x, y = clean
    return {norm: DeepFool(trained_cnn, norm=norm).run(x, y) for norm in ("inf", "2")}


def still_adversarial(model, x_adv, y, targeted):
    with torch.no_grad():
        prediction = model(x_adv).argmax(1)
    return prediction == y if targeted else prediction != y


# ------------------------------------------------------------------ strength
@pytest.mark.parametrize("norm", NORMS)
def test_fools_correctly_classified_images(norm, fmn_results):
    assert fmn_results[norm].success.float().mean().item() >= 0.95


@pytest.mark.parametrize("norm", NORMS)
def test_results_are_what_they_claim(norm, trained_cnn, clean, fmn_results):
    x, y = clean
    result = fmn_results[norm]
    assert torch.isfinite(result.x_adv).all()
    assert result.x_adv.min().item() >= 0 and result.x_adv.max().item() <= 1
    # success is what a fresh forward says; distance is the size of the returned perturbation
    assert torch.equal(result.success, still_adversarial(trained_cnn, result.x_adv, y, False))
    size = FMN(trained_cnn, norm=norm).norm.size(result.x_adv - x)
    assert torch.allclose(size[result.success], result.distance[result.success], rtol=0, atol=1e-6)
    assert (result.distance[result.success] > 0).all()  # all were classified right
    assert torch.equal(result.x_adv[~result.success], x[~result.success])
    assert (result.steps == 100).all() and result.steps.dtype == torch.long


@pytest.mark.parametrize("norm", NORMS)
def test_perturbation_sits_on_the_boundary(norm, trained_cnn, clean, fmn_results):
    """A minimum-norm perturbation scaled down by 2% is no longer adversarial. Measured: 0%
    of the images stay adversarial, in every norm; FMN returning its first adversarial
    iterate instead of the smallest keeps 23% (Linf), 55% (L2), 75% (L1), and with a radius
    that never shrinks 23%, 95%, 97%."""
    x, y = clean
    result = fmn_results[norm]
    shrunk = x + 0.98 * (result.x_adv - x)
    stays = still_adversarial(trained_cnn, shrunk, y, False)[result.success]
    assert stays.float().mean().item() <= 0.05


# Measured on the 100 images (all classified right): median Linf 0.098 (DeepFool 0.107),
# median L2 1.165 (DeepFool 1.280, CW with 100 steps x 5 binary-search steps 1.232),
# median L1 6.14. FMN returning its first adversarial iterate: 0.103, 1.261, 7.78.
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_no_larger_than_deepfool(norm, fmn_results, deepfool_results):
    fmn, deepfool = fmn_results[norm], deepfool_results[norm]
    assert deepfool.success.float().mean().item() >= 0.95
    assert fmn.distance[fmn.success].median() <= 1.0 * deepfool.distance[deepfool.success].median()


def test_l2_no_larger_than_cw(trained_cnn, clean, fmn_results):
    x, y = clean
    cw = CW(trained_cnn, steps=100, binary_search_steps=5).run(x, y)
    fmn = fmn_results["2"]
    assert cw.success.float().mean().item() >= 0.95
    assert fmn.distance[fmn.success].median() <= 1.0 * cw.distance[cw.success].median()


def test_l1_is_sparser_than_an_l2_attack(clean, fmn_results, deepfool_results):
    """In L1, FMN-L1 beats the L1 size of DeepFool-L2's perturbations by far (measured:
    median 6.1 against 17.1)."""
    x, _ = clean
    l1_of_l2 = (deepfool_results["2"].x_adv - x).flatten(1).abs().sum(1)
    fmn = fmn_results["1"]
    assert fmn.distance[fmn.success].median() <= 0.5 * l1_of_l2.median()


# ------------------------------------------------------------------ targeted
@pytest.mark.parametrize("norm", NORMS)
def test_targeted_reaches_the_target(norm, trained_cnn, clean):
    x, y = clean
    target = (y + 1) % 10
    result = FMN(trained_cnn, norm=norm, targeted=True).run(x, target)
    assert result.success.float().mean().item() >= 0.9
    assert torch.equal(result.success, still_adversarial(trained_cnn, result.x_adv, target, True))


# ---------------------------------------------------------------- edge cases
@pytest.mark.parametrize("norm", NORMS)
def test_adversarial_from_the_start_is_returned_as_it_is(norm, trained_cnn, clean):
    x, y = clean[0][:8], clean[1][:8]
    wrong = (y + 1) % 10  # as if the model misclassified every image
    result = FMN(trained_cnn, norm=norm, steps=10).run(x, wrong)
    assert result.success.all()
    assert torch.equal(result.x_adv, x) and (result.distance == 0).all()


@pytest.mark.parametrize("norm", NORMS)
def test_per_sample_and_leaves_the_global_rng_alone(norm, trained_cnn, clean):
    x, y = clean[0][:12], clean[1][:12]
    state = torch.get_rng_state()
    whole = FMN(trained_cnn, norm=norm, steps=20).run(x, y)
    part = FMN(trained_cnn, norm=norm, steps=20).run(x[4:8], y[4:8])
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.allclose(whole.x_adv[4:8], part.x_adv, atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_zero_gradient_gives_no_step_and_no_nan(norm, trained_cnn, clean):
    x, y = clean[0][:8], clean[1][:8]
    result = FMN(Binarized(trained_cnn), norm=norm, steps=10).run(x, y)
    assert torch.isfinite(result.x_adv).all()
    assert torch.equal(result.x_adv[~result.success], x[~result.success])


# ------------------------------------------------------------------ arguments
def test_declared_abilities_and_defaults(trained_cnn):
    abilities = FMN.abilities()
    assert abilities.norms == ("inf", "2", "1") and abilities.targetable
    assert abilities.minimum_norm and not abilities.low_precision
    assert {n: FMN(trained_cnn, norm=n).alpha_init for n in NORMS} == {"inf": 10.0, "2": 1.0, "1": 5.0}
    assert FMN(trained_cnn, norm="1", alpha_init=2).alpha_init == 2.0
    assert FMN(trained_cnn).eps is None


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": 0}, "steps must be >= 1, got 0"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"alpha_init": -1}, "alpha_init must be > 0, got -1"),
    ({"alpha_init": 0}, "alpha_init must be > 0, got 0"),
    ({"gamma_init": 2}, "gamma_init must be <= 1, got 2"),
    ({"gamma_init": 1}, "gamma_init must be < 1, got 1"),
    ({"gamma_init": 0}, "gamma_init must be > 0, got 0"),
    ({"gamma_final": -0.1}, "gamma_final must be >= 0, got -0.1"),
    ({"gamma_final": float("nan")}, "gamma_final must be a finite number"),
    ({"norm": "3"}, "norm must be one of"),
    ({"norm": "0"}, "norm must be 'inf' or '2' or '1' for FMN, got '0'"),
    ({"precision": "bf16"}, "precision must be 'fp32' or 'auto'"),
])
def test_bad_arguments_raise_naming_them(kwargs, message, trained_cnn):
    with pytest.raises(ValueError, match=message):
        FMN(trained_cnn, **kwargs)
