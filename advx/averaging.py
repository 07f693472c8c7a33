"""Weight averaging for training: an exponential moving average (EMA) of the weights.

After every weight step the average moves a share ``1 - decay`` of the way to the current
weights; the averaged network is the one measured and saved. Averaging smooths the noise of
the last steps of SGD, which adversarial training has much of (Gowal et al. 2020, "Uncovering
the limits of adversarial training against norm-bounded adversarial examples").
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from advx.validate import InputError, check_number


def check_decay(name: str, decay: float | None) -> float | None:
    """``decay`` as a float in (0, 1), or None (no averaging); anything else names ``name``."""
    if decay is None:
        return None
    decay = check_number(name, decay, minimum=0, strict=True)
    if decay >= 1:
        raise InputError(f"{name} must be < 1 (1 would never move from the initial weights), got {decay:g}")
    return decay


class WeightAverage:
    """An exponential moving average of ``model``'s weights, held in a copy of it (eval mode).

    The first steps use a smaller decay, ``min(decay, (1 + n) / (10 + n))`` after ``n``
    updates, so that the average does not remember the random initial weights for long.
    Floating-point buffers (BatchNorm's running statistics) are averaged like the weights;
    integer ones (the batch counter) are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = check_decay("decay", decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward ``model``'s current weights (call after each weight step)."""
        self.updates += 1
        share = 1 - min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        for name, average in self.model.state_dict().items():
            if average.is_floating_point():
                average.lerp_(current[name].detach().to(average.dtype), share)
            else:
                average.copy_(current[name])

    def state_dict(self) -> dict:
        """The averaged weights and the count of updates: all ``load_state_dict`` needs."""
        return {"weights": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
