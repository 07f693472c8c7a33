"""The model a robustness measurement is about, and the images it is measured on.

``load_subject`` loads an advx checkpoint (``advx.checkpoint``) or a user's own model
(``advx.loading``: an import string with its weights, or a ``torch.export`` program),
puts its input normalization in front (``advx.models.Normalized``), checks that it
classifies the dataset's images (logits ``[N, num_classes]``), takes the first ``n`` test
images, and measures the clean accuracy with the warnings a user should see before any
attack: near chance, or another usual normalization fitting much better (``advx.sanity``).
It prints nothing; ``advx attack``, ``eval`` and ``certify`` print what it returns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from advx.checkpoint import DEFAULT_CHECKPOINT, load_model
from advx.data import Split, load_dataset
from advx.datasets import Dataset, get_dataset
from advx.loading import check_classifier, load_exported, model_from_import
from advx.models import InputNormalization, Normalized
from advx.modes import accuracy
from advx.sanity import check_clean_accuracy, check_normalization
from advx.validate import InputError, check_number


@dataclass
class Subject:
    """The model, on its device in eval mode, and what is known of it.

    source:    report.json's first fields: checkpoint, model, dataset, classes, normalization.
    final:     an advx checkpoint's own end-of-training figure (``advx.probe.final_metrics``).
    clean_acc: on the test images loaded with it (None when not measured).
    warnings:  what a user should know before trusting any figure of it."""

    model: nn.Module
    dataset: Dataset
    source: dict
    final: dict | None = None
    clean_acc: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        smoothing = self.source.get("smoothing")
        return (self.source["checkpoint"] or self.source["model"]) + (
            f" smoothed at sigma {smoothing['sigma']:g}" if smoothing else "")


def check_sources(checkpoint: str | os.PathLike | None, model: str | None, weights: str | os.PathLike | None) -> None:
    """Where the model comes from must be one place: an advx ``checkpoint``, or the user's
    ``model`` (``MODULE:NAME`` with optional ``weights``, or a ``.pt2`` that holds its own)."""
    if model is not None and checkpoint is not None:
        raise InputError(f"model={model!r} and checkpoint={str(checkpoint)!r} exclude each other (an advx "
                         f"checkpoint, or your own model)")
    if weights is not None and (model is None or model.endswith(".pt2")):
        raise InputError(f"weights={str(weights)!r} goes with model='MODULE:NAME' (an exported .pt2 holds its "
                         f"weights), got " + (f"model={model!r}" if model else "no model"))


def check_channels(normalization: tuple[Sequence[float], Sequence[float]], data: Dataset) -> None:
    """``normalization`` is ``(mean, std)`` with std > 0, each one value per channel of the
    dataset's images or one value for all of them (as ``advx.models.Normalized`` takes it)."""
    mean, std = (list(values) for values in normalization)
    InputNormalization(mean, std)  # numbers, std > 0, counts that broadcast
    channels = data.shape[0]
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            allowed = "one value per channel" + (", or one for all" if channels > 1 else "")
            unit = "channel" if channels == 1 else "channels"
            raise InputError(f"{name} must hold {allowed} ({data.title} images have {channels} {unit}), "
                             f"got {len(values)} values")


def load_subject(checkpoint: str | os.PathLike | None = None, *, model: str | None = None,
                 weights: str | os.PathLike | None = None,
                 normalization: tuple[Sequence[float], Sequence[float]] | None = None,
                 dataset: str | None = None, n: int | None = None, data_dir=None,
                 device: str | torch.device = "cpu", check: bool = True) -> tuple[Subject, Split]:
    """The model and the first ``n`` test images (all when None) of its dataset.

    ``checkpoint``: an advx checkpoint (default ``checkpoints/baseline.pt`` when no ``model``
    is given); its dataset is used unless ``dataset`` names the same one. ``model``: the
    user's own instead, ``MODULE:NAME`` (``weights``: a state_dict to load) or a ``.pt2``;
    ``dataset`` defaults to MNIST. ``normalization``: ``(mean, std)`` per channel, put in
    front of the model. ``check``: also measure the clean accuracy and collect the warnings
    (``Subject.clean_acc``, ``Subject.warnings``).

    Example:
        >>> subject, test = load_subject("checkpoints/robust.pt", n=1000)
        >>> subject.clean_acc, subject.warnings
    """
    check_sources(checkpoint, model, weights)
    final = None
    if model is not None:
        data = get_dataset(dataset or "mnist")
        if normalization is not None:
            check_channels(normalization, data)
        net = load_exported(model) if model.endswith(".pt2") else model_from_import(model, weights)
        where, name = (model if model.endswith(".pt2") else weights), model
        what = f"model={model!r}"
    else:
        where = str(DEFAULT_CHECKPOINT if checkpoint is None else checkpoint)
        net, ckpt = load_model(where, device)
        if dataset is not None and dataset != ckpt["dataset"]:
            raise InputError(f"dataset={dataset!r} does not match the checkpoint: {where} was trained on "
                             f"{ckpt['dataset']} (without a dataset, the checkpoint's is used)")
        name, data, final = ckpt["model_name"], get_dataset(ckpt["dataset"]), ckpt["metrics"].get("final")
        if normalization is not None:
            check_channels(normalization, data)
        what = f"checkpoint={where!r}"
    if normalization is not None:
        normalization = {"mean": list(normalization[0]), "std": list(normalization[1])}
        net = Normalized(net, **normalization)
    net = net.to(device).eval()
    test = load_dataset(data, "test", data_dir)
    if n is not None:
        n = check_number("n", n, minimum=1, integer=True)
        if n > len(test):
            raise InputError(f"n must be <= {len(test)} (the test images), got {n}")
        test = test.head(n)
    check_classifier(net, test.x[:2].to(device), data.num_classes, what=what)
    source = {"checkpoint": where, "model": name, "dataset": data.name, "classes": list(data.classes),
              "normalization": normalization}
    subject = Subject(net, data, source, final)
    if check:
        subject.clean_acc = accuracy(net, test.x, test.y, device=device)
        subject.warnings = _warnings(subject, test, device)
    return subject, test


def _warnings(subject: Subject, test: Split, device) -> list[str]:
    """Clean accuracy near chance, or another usual normalization fitting the model clearly
    better than the one given (on the first 500 images): most often a wrong normalization."""
    normalization, data = subject.source["normalization"], subject.dataset
    given = None if normalization is None else tuple(v[0] for v in normalization.values())
    x, y = test.x[:500].to(device), test.y[:500].to(device)
    candidates = [None, data.normalization, (0.5, 0.5)] if given is None or len(normalization["mean"]) == 1 else []
    bare = subject.model.model if given else subject.model  # the model behind its normalization
    found = [check_clean_accuracy(subject.clean_acc, data.num_classes, normalized=normalization is not None),
             check_normalization(bare, x, y, given=given, candidates=candidates)]
    return [warning for warning in found if warning]
