"""A user's own classifier, from wherever it lives: the three ways to bring a model.

1. **Any module**: an import string ``package.module:build`` (or ``path/to/file.py:build``)
   naming a function or class that returns the ``nn.Module`` (or the module itself);
2. **a module + weights**: the same, then a ``state_dict`` file loaded with
   ``torch.load(weights_only=True)`` (a dict holding ``"state_dict"``, as advx and
   Lightning checkpoints do, works too);
3. **an exported program**: a ``torch.export`` ``.pt2`` file with a dynamic batch dimension
   (``dynamic_shapes=({0: torch.export.Dim("batch")},)``), read with ``torch.export.load``.

advx's own checkpoints are read by ``advx.checkpoint.load_model``. Whatever the source,
``check_classifier`` runs the model on a few of the dataset's images and insists on logits
``[N, num_classes]``: a model that does not load or does not fit the data is one clear
error (``ModelLoadError``), not a traceback halfway through an attack. Normalization is
``advx.models.Normalized``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from advx.files import content_hash
from advx.modes import check_not_lazy, checked_logits, frozen, weight_dtype
from advx.validate import AdvxError, InputError, InputTypeError


class ModelLoadError(AdvxError, ValueError):
    """A user's model could not be imported, built, loaded or run on the dataset's images."""


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


def import_object(spec: str):
    """The object ``spec`` names: ``package.module:attr`` (imported with the current folder
    on ``sys.path``, as ``python -m`` does) or ``path/to/file.py:attr``."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ModelLoadError(f"model must be MODULE:NAME (e.g. my_pkg.nets:build or nets.py:build) "
                             f"or a .pt2 file, got {spec!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ModelLoadError(f"model: no file {path} (from {spec!r})")
            module = _import_file(path, f"advx_user_{path.stem}")
        else:
            with _on_path(os.getcwd()):
                module = importlib.import_module(module_name)
    except ModelLoadError:
        raise
    except (Exception, SystemExit) as err:  # ImportError, a SyntaxError in the user's file, a sys.exit() ...
        raise ModelLoadError(f"model: cannot import {module_name!r} (from {spec!r}): {_first_line(err)}") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ModelLoadError(f"model: {module_name!r} has no {attr!r} (from {spec!r})") from None
    return obj


def _import_file(path: Path, name: str):
    """The module in the file ``path``, imported as ``python path`` would run it: registered
    in ``sys.modules`` as ``name`` (``dataclasses`` and ``typing`` look it up there; removed
    again if it fails), with its folder first on ``sys.path`` while it runs (so that it
    imports the modules beside it)."""
    unit = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(unit)
    sys.modules[name] = module
    try:
        with _on_path(path.resolve().parent):
            unit.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


@contextmanager
def _on_path(folder: str | os.PathLike):
    """``folder`` first on ``sys.path`` for the duration (unless it is there already); the
    path comes back as it was."""
    folder = str(folder)
    added = folder not in sys.path and not (folder == os.getcwd() and "" in sys.path)
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def _folder_of(spec: str) -> str:
    """Where the modules of ``spec`` are found: a file's folder, or the current folder."""
    module_name = spec.rpartition(":")[0]
    return str(Path(module_name).resolve().parent) if module_name.endswith(".py") else os.getcwd()


def model_from_import(spec: str, weights: str | os.PathLike | None = None) -> nn.Module:
    """Build the module ``spec`` names (calling it with no arguments unless it is a module
    already), then load ``weights`` into it if given (strict: every key must match)."""
    with _on_path(_folder_of(spec)):  # the building may import more of the user's modules
        obj = _built(spec)
    if weights is not None:
        load_weights(obj, weights)
    return obj


def _built(spec: str) -> nn.Module:
    obj = import_object(spec)
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise ModelLoadError(f"model: {spec!r} is a {type(obj).__name__}, expected a function or class "
                                 f"returning an nn.Module")
        try:
            obj = obj()
        except (Exception, SystemExit) as err:
            raise ModelLoadError(f"model: calling {spec}() raised {_first_line(err)}") from None
        if not isinstance(obj, nn.Module):
            raise ModelLoadError(f"model: {spec}() returned a {type(obj).__name__}, expected an nn.Module")
    return obj


def load_weights(model: nn.Module, weights: str | os.PathLike) -> None:
    """Load the ``state_dict`` in ``weights`` into ``model`` (``weights_only=True``, strict)."""
    path = Path(weights)
    if path.is_dir():
        raise ModelLoadError(f"weights: {path} is a folder, expected a state_dict file")
    if not path.is_file():
        raise ModelLoadError(f"weights: no file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelLoadError(f"weights: {path} could not be read as a state_dict with weights_only=True "
                             f"(save it with torch.save(model.state_dict(), path)): {_first_line(err)}") from None
    if isinstance(state, dict) and isinstance(state.get("sha256"), str) and state["sha256"] != content_hash(state):
        raise ModelLoadError(f"weights: {path} is damaged: its content does not match the SHA-256 stored in it "
                             f"(a changed byte, a bad copy?); restore it from a backup or train again")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # an advx or Lightning checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"weights: {path} holds a {type(state).__name__}, expected a state_dict "
                             f"(a dict of tensors)")
    expected = model.state_dict()
    problems = [(what, keys) for what, keys in (
        ("missing", [k for k in expected if k not in state]),
        ("unexpected", [k for k in state if k not in expected]),
        ("of another shape", [f"{k} {list(state[k].shape)} (the model's: {list(v.shape)})"
                              for k, v in expected.items() if k in state and state[k].shape != v.shape]),
    ) if keys]
    if problems:
        raise ModelLoadError(f"weights: {path} does not fit the model: " + "; ".join(
            f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" for what, keys in problems))
    try:
        model.load_state_dict(state)
    except Exception as err:
        raise ModelLoadError(f"weights: {path} does not fit the model: {_first_line(err)}") from None


class Exported(nn.Module):
    """A ``torch.export`` program as a module the attacks can use. Its graph was fixed in
    one mode when it was exported, so ``train()``/``eval()`` only set the flag here (the
    program's own module refuses them); ``load_exported`` refuses a program exported in
    training mode."""

    def __init__(self, program) -> None:
        super().__init__()
        self.program = program.module()

    def train(self, mode: bool = True) -> "Exported":
        self.training = mode
        return self

    def forward(self, x):
        return self.program(x)


def load_exported(path: str | os.PathLike) -> nn.Module:
    """The ``.pt2`` file ``path`` (``torch.export.save``) as an ``Exported`` module."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model: no file at {path}")
    with _torch_export_logs_held() as held:
        try:
            program = torch.export.load(path)
        except Exception as err:
            cause = next((r.exc_info[1] for r in held if r.exc_info and r.exc_info[1] is not None), err)
            raise ModelLoadError(f"model: {path} is not an exported program (a .pt2 file written by "
                                 f"torch.export.save): {_first_sentence(cause)}") from None
    batch = _static_batch_size(program)
    if batch is not None:
        raise ModelLoadError(f"model: {path} was exported for batches of exactly {batch} images, and advx runs "
                             f"it on batches of any size: export it with a dynamic batch dimension, torch.export."
                             f"export(model.eval(), (x,), dynamic_shapes=({{0: torch.export.Dim('batch')}},))")
    training = [str(n.target) for n in program.graph_module.graph.nodes if _in_training_mode(n)]
    if training:
        raise ModelLoadError(f"model: {path} was exported in training mode ({training[0]} with training=True): "
                             f"call model.eval() before torch.export.export")
    return Exported(program)


class _Held(logging.Handler):
    def __init__(self, records: list) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _torch_export_logs_held():
    """The records torch.export's loggers write meanwhile, held in the list yielded instead
    of printed: before raising on a file it cannot read, ``torch.export.load`` logs a
    traceback, and advx reports the error in one line. The loggers are restored after."""
    records: list = []
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:  # torch puts its own stderr handler on torch.export
        logger.handlers, logger.propagate = [_Held(records)], False
    try:
        yield records
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved):
            logger.handlers, logger.propagate = handlers, propagate


def _first_sentence(err: BaseException) -> str:
    line = _first_line(err)
    return line.split(". ", 1)[0].rstrip(".")


def _static_batch_size(program) -> int | None:
    """The batch size the program's first input was fixed to when exported, or None when its
    first dimension is dynamic (a symbol, ``torch.export.Dim``)."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph_module.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            shape = getattr(node.meta.get("val"), "shape", None)
            if shape and isinstance(shape[0], int):
                return shape[0]
            return None
    return None


def _in_training_mode(node) -> bool:
    """A batch norm or dropout node of an exported graph that runs as in training."""
    if node.op != "call_function":
        return False
    name = str(node.target)
    if "batch_norm" in name:
        if "no_training" in name:
            return False
        if "_native_batch_norm_legit" in name:
            return True
        return len(node.args) > 5 and node.args[5] is True
    if "dropout" in name:
        return len(node.args) > 2 and node.args[2] is True
    return False


def check_classifier(model: nn.Module, x: torch.Tensor, num_classes: int, *, what: str = "model") -> None:
    """Run ``model`` on a few images ``x`` and insist on finite logits ``[N, num_classes]``."""
    sample = x[:2]
    try:
        check_not_lazy(model, what)
    except InputError as err:
        raise ModelLoadError(str(err)) from None
    dtype = weight_dtype(model)
    if dtype != sample.dtype:
        raise ModelLoadError(f"{what} holds {str(dtype).replace('torch.', '')} weights, and the images are "
                             f"{str(sample.dtype).replace('torch.', '')}: return the model in that precision "
                             f"(model.float()); advx searches in bf16 with --precision, and certifies in fp32")
    try:
        with frozen(model), torch.no_grad():
            out = model(sample)
    except (Exception, SystemExit) as err:
        raise ModelLoadError(f"{what}: running it on {len(sample)} images of shape {list(sample.shape[1:])} "
                             f"(pixels in [0, 1]) raised {_first_line(err)}") from None
    try:
        checked_logits(out, len(sample), num_classes=num_classes, what=what)
    except (InputError, InputTypeError) as err:
        raise ModelLoadError(str(err)) from None
