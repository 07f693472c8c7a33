"""advx: adversarial examples for PyTorch.

Training takes the loss gradient with respect to the weights (dL/dW, data fixed);
an attack takes it with respect to the input image (dL/dX, weights frozen).

    >>> from advx import PGD, load_dataset, load_model
    >>> model, _ = load_model("checkpoints/baseline.pt")
    >>> test = load_dataset("mnist", "test"); x, y = test.x[:500], test.y[:500]
    >>> x_adv = PGD(model, eps=0.3, alpha=0.01, steps=40)(x, y)      # an upper bound ...
    >>> certify(model, x, y, eps=0.1, method="crown").certified    # ... and a proved lower one
"""

from importlib import metadata as _metadata

from advx.attacks import (APGD, ATTACKS, CW, FAB, FGSM, FMN, MIFGSM, PGD, Attack, AttackResult, DeepFool, HopSkipJump,
                          SigmaZero, SparsePGD, SparseRS, Square)
import advx.certify as certify  # the package; calling it certifies (the function advx.certify.certify)
from advx.certify import Certificate, Certifier
from advx.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from advx.data import DataNotFoundError, Split, load_dataset
from advx.dataset_attack import run_attack
from advx.datasets import DATASETS, Dataset, get_dataset
from advx.evaluate import EvalConfig, Evaluation, evaluate
from advx.loading import ModelLoadError, check_classifier, load_exported, model_from_import
from advx.models import MODELS, MadryCNN, Normalized, SmallCNN, build_model
from advx.modes import accuracy, frozen, predictions
from advx.norms import L0, L1, L2, Linf, get_norm
from advx.smoothing import ABSTAIN, Smoothed, certify_smoothed
from advx.subject import Subject, load_subject
from advx.train import TrainConfig, train, train_baseline

try:  # the version is written once, in pyproject.toml
    __version__ = _metadata.version("advx")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ATTACKS", "FGSM", "PGD", "MIFGSM", "APGD", "CW", "DeepFool", "FAB", "FMN", "Square", "SparseRS", "SparsePGD", "SigmaZero",
    "HopSkipJump",
    "Attack", "AttackResult",
    "CheckpointError", "load_checkpoint", "load_model", "save_checkpoint",
    "DataNotFoundError", "Split", "load_dataset",
    "DATASETS", "Dataset", "get_dataset",
    "ModelLoadError", "check_classifier", "load_exported", "model_from_import",
    "MODELS", "MadryCNN", "Normalized", "SmallCNN", "build_model",
    "L0", "L1", "L2", "Linf", "get_norm",
    "accuracy", "frozen", "predictions",
    "TrainConfig", "train", "train_baseline",
    "EvalConfig", "Evaluation", "evaluate", "run_attack", "Subject", "load_subject",
    "Certificate", "Certifier", "certify",
    "ABSTAIN", "Smoothed", "certify_smoothed",
]
