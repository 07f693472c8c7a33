"""Numeric precision: search in low precision where the hardware is fast, decide in fp32.

``precision`` is one of ``PRECISIONS``:

- ``"fp32"``: everything in float32 (the default: results are those of the model as given);
- ``"bf16"`` / ``"fp16"``: the forward passes of the *search* (an attack's gradient steps,
  the forward and backward of training) run under ``torch.autocast`` in that dtype;
- ``"auto"``: ``"bf16"`` where the hardware runs it fast (a CPU with AMX or AVX-512-BF16,
  a CUDA GPU with bf16), else ``"fp32"``.

In low precision the search also runs with the weights and images in the
``channels_last`` memory format (``search_layout``): measured on the SmallCNN, PGD ran
1.27x faster in fp32 and 1.28x faster again in bf16 with it. fp32 keeps the default
layout, so that its results stay bit for bit those of the model as given.

A lower-precision model is a slightly different function. So every decision that counts
is taken in fp32 (see ``advx.attacks.base``): an iterate the low-precision pass calls
adversarial is checked by an fp32 forward before it counts, and the reported success,
logits and robust accuracy come from the fp32 model. A sample reported broken is broken
for the model as given.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator

import torch
from torch import nn

from advx.validate import InputError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(name: str, precision) -> str:
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InputError(f"{name} must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return precision


def fast_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` runs bf16 matrix products natively (so that autocast pays)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, check, lambda: False)() for check in
                   ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return False


def resolve(precision: str, device: str | torch.device, *, allowed: bool = True) -> str:
    """The precision a run on ``device`` actually uses: ``"auto"`` becomes ``"bf16"`` or
    ``"fp32"``; with ``allowed=False`` (an attack that declares low precision unsafe)
    ``"auto"`` becomes ``"fp32"`` and an explicit low precision is an error."""
    precision = check_precision("precision", precision)
    if precision == "auto":
        return "bf16" if allowed and fast_bf16(device) else "fp32"
    if precision != "fp32" and not allowed:
        raise InputError(f"precision must be 'fp32' or 'auto' for this attack (its search needs fp32), "
                         f"got {precision!r}")
    return precision


AUTOCAST_DEVICES = ("cpu", "cuda")


def autocast(precision: str, device: str | torch.device) -> ContextManager:
    """``torch.autocast`` for a resolved low ``precision`` on ``device``; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])


def full_precision(device: str | torch.device) -> ContextManager:
    """Autocast switched off on ``device``: what runs inside is computed as the model is
    given, even within a caller's own ``torch.autocast`` region."""
    kind = torch.device(device).type
    if kind not in AUTOCAST_DEVICES:
        return contextlib.nullcontext()
    return torch.autocast(kind, enabled=False)


@contextlib.contextmanager
def search_layout(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """The 4-D weights of ``model`` in ``channels_last`` layout for the duration (the fast
    layout for convolutions); on exit every parameter gets its own tensor back, so the
    weights are bit-identical and laid out as before. Same values throughout."""
    if not enabled:
        yield
        return
    saved = [(p, p.data) for p in model.parameters() if p.dim() == 4]
    try:
        for p, data in saved:
            # .to, not .contiguous: with one input channel the default layout already
            # counts as channels_last for .contiguous, which then changes nothing.
            p.data = data.to(memory_format=torch.channels_last)
        yield
    finally:
        for p, data in saved:
            p.data = data


def fast_images(x: torch.Tensor) -> torch.Tensor:
    """A batch of images [N, C, H, W] in the layout ``search_layout`` runs fastest on."""
    return x.to(memory_format=torch.channels_last) if x.dim() == 4 else x
