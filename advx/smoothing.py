"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via
Randomized Smoothing"): a probabilistic L2 certificate for any classifier.

The smoothed classifier of a base classifier f is g(x) = argmax_c P(f(x + d) = c), with d
drawn from N(0, sigma^2 I). If the top class has probability p_A > 1/2 under the noise, g
answers it everywhere within L2 radius ``sigma * Phi^-1(p_A)`` of x. p_A is estimated from
counts of noisy forward passes, so the certificate holds with probability at least
``1 - alpha`` over the draws (a Clopper-Pearson lower bound on p_A); where the bound is not
above 1/2 the answer is to abstain (``ABSTAIN``).

- ``Smoothed(model, sigma)``: the base model under noise. Called, it is a randomized model
  (one noisy draw per call: attacks average gradients over draws, EOT); ``predict`` is
  Cohen et al.'s PREDICT and ``certify`` their CERTIFY.
- ``certify_smoothed``: CERTIFY over a test set at several sigmas (``advx certify --method
  smoothing``).
- ``lower_confidence_bound`` and ``binomial_p_value``: the two statistics, exact, from the
  binomial distribution (no SciPy).

The noise of image i comes from its own stream, keyed by the seed, i's index in the dataset
(``sample_ids``) and sigma, in blocks of fixed size: counts do not depend on the batch size
or on the other images of a call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from advx.modes import checked_logits, device_of, frozen
from advx.precision import autocast, fast_images, resolve, search_layout
from advx.progress import bar
from advx.rng import mix_seed, salt_of
from advx.validate import InputError, check_batch, check_images, check_number, check_seed

ABSTAIN = -1
BLOCK = 500  # noise images drawn per call on a stream: fixed, so draws never depend on batch_size


def _log_tail(k: int, n: int, p: float) -> float:
    """log P(X >= k) for X ~ Binomial(n, p), 0 < p < 1, in float64."""
    j = torch.arange(k, n + 1, dtype=torch.float64)
    log_choose = math.lgamma(n + 1) - torch.lgamma(j + 1) - torch.lgamma(n - j + 1)
    return float(torch.logsumexp(log_choose + j * math.log(p) + (n - j) * math.log1p(-p), 0))


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """The one-sided (1 - alpha) Clopper-Pearson lower bound on p from ``k`` successes in
    ``n`` trials: the p at which ``P(X >= k) = alpha`` (0 when ``k == 0``). Found by bisection
    on the binomial tail in float64: within about 1e-13 of the exact quantile of the beta
    distribution."""
    k, n = int(k), int(n)
    if not 0 <= k <= n or n < 1:
        raise InputError(f"k must be in [0, n] with n >= 1, got k={k}, n={n}")
    alpha = _check_alpha(alpha)
    if k == 0:
        return 0.0
    log_alpha, lo, hi = math.log(alpha), 0.0, 1.0
    for _ in range(60):  # P(X >= k) grows with p: keep lo where it is <= alpha
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _log_tail(k, n, mid) <= log_alpha else (lo, mid)
    return lo


def binomial_p_value(k: int, n: int) -> float:
    """The two-sided p-value of ``k`` successes in ``n`` trials against p = 1/2."""
    k, n = int(k), int(n)
    if n == 0:
        return 1.0
    return min(1.0, 2 * math.exp(_log_tail(max(k, n - k), n, 0.5)))


def _check_alpha(alpha) -> float:
    alpha = check_number("alpha", alpha, minimum=0, strict=True)
    if alpha >= 1:
        raise InputError(f"alpha must be < 1 (a failure probability in (0, 1)), got {alpha:g}")
    return alpha


def check_samples(samples, alpha: float, *, two_sided: bool = False, name: str = "samples") -> int:
    """``samples`` as an integer large enough that some count decides at ``alpha``. CERTIFY:
    with all ``n`` draws on one class the bound is ``alpha ** (1 / n)``, which must exceed 1/2;
    PREDICT (``two_sided``): the p-value of ``n`` votes to none, ``2 * 2 ** -n``, must not
    exceed ``alpha``."""
    samples = check_number(name, samples, minimum=1, integer=True)
    level = _check_alpha(alpha) / (2 if two_sided else 1)
    if level ** (1 / samples) <= 0.5:
        least = math.floor(math.log2(1 / level)) + 1
        raise InputError(f"{name} must be >= {least} at alpha={alpha:g}: with {samples} every image would "
                         f"abstain (even {samples} votes of {samples} would not decide), got {samples}")
    return samples


@dataclass
class SmoothingResult:
    """Per image: ``prediction`` (a class, or ``ABSTAIN``), ``radius`` (the certified L2
    radius; 0 where it abstains), ``p_lower`` (the bound on p_A; 0 for PREDICT), ``counts``
    [N, K] (the estimation draws' votes)."""

    prediction: torch.Tensor
    radius: torch.Tensor
    p_lower: torch.Tensor
    counts: torch.Tensor

    def certified(self, y: torch.Tensor, radius: float) -> torch.Tensor:
        """Which images are classified as ``y`` with a certified radius of at least ``radius``."""
        return (self.prediction == y.cpu()) & (self.radius >= radius)


class Smoothed(nn.Module):
    """``model`` under Gaussian noise of standard deviation ``sigma`` (in pixel units).

    ``Smoothed(model, sigma)(x)`` returns the logits of one noisy draw, ``model(x + d)``: a
    randomized model, which advx attacks with EOT (its noise follows ``advx.attacks.eot.Seeded``).
    ``predict`` and ``certify`` are the smoothed classifier's answers."""

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model = model
        self.sigma = check_number("sigma", sigma, minimum=0, strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.sigma * torch.randn_like(x))

    @torch.no_grad()
    def counts(self, x: torch.Tensor, samples: int, *, seed: int = 0, sample_ids=None, skip: int = 0,
               batch_size: int = 1000, precision: str = "fp32", progress: bool = False) -> torch.Tensor:
        """Votes [N, K] of ``samples`` noisy copies of each image of ``x``, after ``skip``
        draws of its stream (CERTIFY's selection draws come first, then its estimation)."""
        check_images(x, bounds=None, shape=tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else None)
        samples = check_number("samples", samples, minimum=1, integer=True)
        batch_size = check_number("batch_size", batch_size, minimum=1, integer=True)
        seed = check_seed("seed", seed)
        ids = _ids(sample_ids, len(x))
        device = device_of(self.model, x.device)
        precision = resolve(precision, device)
        rows = []
        low = precision != "fp32"  # bf16: the convolutions' fast layout too
        with frozen(self.model), search_layout(self.model, low), \
                bar(len(x), desc=f"smoothing (sigma {self.sigma:g})", unit="img", enabled=progress) as shown:
            for i in range(len(x)):
                stream = torch.Generator().manual_seed(mix_seed(seed, ids[i], salt_of("smoothing", self.sigma)))
                row = 0
                for noise in _blocks(stream, x.shape[1:], skip, samples):
                    for chunk in noise.split(batch_size):
                        noisy = x[i:i + 1].to(device) + self.sigma * chunk.to(device)
                        noisy = fast_images(noisy) if low else noisy
                        with autocast(precision, device):
                            logits = checked_logits(self.model(noisy), len(noisy), what="the base model")
                        row = row + torch.bincount(logits.argmax(1).cpu(), minlength=logits.shape[1])
                rows.append(row)
                shown.update(1)
        return torch.stack(rows)

    def predict(self, x: torch.Tensor, *, samples: int = 1000, alpha: float = 0.001, seed: int = 0,
                sample_ids=None, batch_size: int = 1000, precision: str = "fp32",
                progress: bool = False) -> SmoothingResult:
        """PREDICT: the top class of ``samples`` votes, or ``ABSTAIN`` unless a two-sided
        binomial test says it beats the runner-up at level ``alpha`` (then it is g's class
        with probability at least ``1 - alpha``)."""
        samples = check_samples(samples, alpha, two_sided=True)
        votes = self.counts(x, samples, seed=seed, sample_ids=sample_ids, batch_size=batch_size,
                            precision=precision, progress=progress)
        top2 = votes.topk(2, dim=1)
        prediction = top2.indices[:, 0].clone()
        for i, (a, b) in enumerate(top2.values.tolist()):
            if binomial_p_value(a, a + b) > alpha:
                prediction[i] = ABSTAIN
        zeros = torch.zeros(len(x), dtype=torch.float64)
        return SmoothingResult(prediction, zeros, zeros.clone(), votes)

    def certify(self, x: torch.Tensor, *, n0: int = 100, samples: int = 10000, alpha: float = 0.001,
                seed: int = 0, sample_ids=None, batch_size: int = 1000, precision: str = "fp32",
                progress: bool = False) -> SmoothingResult:
        """CERTIFY: the class of the top vote among ``n0`` selection draws, then a lower bound
        on its probability from ``samples`` further draws; the certified L2 radius is
        ``sigma * Phi^-1(p_lower)``, or ``ABSTAIN`` when ``p_lower <= 1/2``."""
        n0 = check_number("n0", n0, minimum=1, integer=True)
        samples = check_samples(samples, alpha)
        common = dict(seed=seed, sample_ids=sample_ids, batch_size=batch_size, precision=precision)
        chosen = self.counts(x, n0, **common).argmax(1)
        votes = self.counts(x, samples, skip=n0, progress=progress, **common)
        p_lower = torch.tensor([lower_confidence_bound(int(votes[i, c]), samples, alpha)
                                for i, c in enumerate(chosen.tolist())], dtype=torch.float64)
        ok = p_lower > 0.5
        radius = torch.where(ok, self.sigma * torch.special.ndtri(p_lower.clamp(min=0.5)), 0.0)
        prediction = torch.where(ok, chosen, torch.full_like(chosen, ABSTAIN))
        return SmoothingResult(prediction, radius, p_lower, votes)


def _ids(sample_ids, n: int) -> list[int]:
    if sample_ids is None:
        return list(range(n))
    ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
    if len(ids) != n:
        raise InputError(f"sample_ids must give one id per image ({n}), got {len(ids)}")
    return [int(i) for i in ids]


def _blocks(stream: torch.Generator, shape, skip: int, samples: int):
    """Standard normal draws ``skip`` to ``skip + samples`` of ``shape`` from ``stream``, in
    pieces. Whole blocks of ``BLOCK`` are always drawn, so that the draws are the same however
    a caller splits them."""
    for _ in range(skip // BLOCK):
        torch.randn((BLOCK, *shape), generator=stream)
    offset = skip % BLOCK
    while samples > 0:
        block = torch.randn((BLOCK, *shape), generator=stream)
        piece = block[offset:offset + samples]
        offset = 0
        samples -= len(piece)
        yield piece


@dataclass
class SmoothingRun:
    """``certify_smoothed``'s answer: per sigma, each image's ``SmoothingResult`` and the
    seconds it took; ``y`` the labels; ``settings`` how it ran."""

    y: torch.Tensor
    results: dict
    seconds: dict
    settings: dict

    def certified_acc(self, sigma: float, radius: float) -> float:
        """The share of the images classified correctly with a certified radius >= ``radius``."""
        return self.results[sigma].certified(self.y, radius).float().mean().item()

    def abstained(self, sigma: float) -> float:
        return (self.results[sigma].prediction == ABSTAIN).float().mean().item()

    def forwards_per_second(self, sigma: float) -> float:
        draws = len(self.y) * (self.settings["n0"] + self.settings["samples"])
        return draws / self.seconds[sigma] if self.seconds[sigma] > 0 else float("inf")


def certify_smoothed(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigmas, *, n0: int = 100,
                     samples: int = 10000, alpha: float = 0.001, seed: int = 0, batch_size: int = 1000,
                     precision: str = "fp32", progress: bool = False) -> SmoothingRun:
    """CERTIFY (``Smoothed.certify``) of ``model`` smoothed at each of ``sigmas`` on the test
    images ``x`` (their indices are the sample ids), labels ``y``."""
    y = check_batch(x, y, bounds=None)
    sigmas = [check_number("sigma", s, minimum=0, strict=True) for s in sigmas]
    if not sigmas:
        raise InputError("sigmas must hold at least one noise level, got none")
    n0, samples = check_number("n0", n0, minimum=1, integer=True), check_samples(samples, alpha)
    results, seconds = {}, {}
    for sigma in sigmas:
        start = time.perf_counter()
        results[sigma] = Smoothed(model, sigma).certify(x, n0=n0, samples=samples, alpha=alpha, seed=seed,
                                                        batch_size=batch_size, precision=precision,
                                                        progress=progress)
        seconds[sigma] = time.perf_counter() - start
    settings = {"method": "smoothing", "norm": "2", "sigmas": sigmas, "n0": n0, "samples": samples,
                "alpha": alpha, "seed": seed, "precision": resolve(precision, device_of(model, x.device))}
    return SmoothingRun(y.cpu(), results, seconds, settings)
