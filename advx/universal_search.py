"""Universal patches and frames by random search (Sparse-RS's universal attacks): the same
perturbation for every image, found from the model's scores alone.

Croce, Andriushchenko, Singh, Flammarion & Hein (2022), "Sparse-RS" (AAAI), universal patches
and frames. Where ``advx.universal.find_universal`` follows the input gradient, this search
never reads one: it pastes one candidate on every training image, reads the logits, and keeps
a random change if the summed margin loss ``max(z_y - max_{j != y} z_j, -CAP)`` falls (by
more than float rounding) and no fewer images are fooled than before. A frame's change is
Sparse-RS's frame step (``advx.attacks.sparse_rs_frame.Border.repaint``); a patch's either
moves it by up to ``shift_range`` pixels each way, every ``location_period`` queries, or paints
a square inside it (``advx.attacks.sparse_rs_patch``), the one place shared by every image.
Each query is one forward pass over the training images: ``queries`` times their number in all.
"""

from __future__ import annotations

import torch
from torch import nn

from advx import rng
from advx.attacks.search import TIE, search_options
from advx.attacks.sparse_rs_frame import Border
from advx.attacks.sparse_rs_patch import location_period, paint_square, patch_fraction, shift_range
from advx.modes import frozen
from advx.norms import Frame, Norm, Patch, get_norm
from advx.progress import bar
from advx.universal import CAP, Universal, check_pasted
from advx.validate import InputError, check_batch, check_seed


def search_universal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str | Norm = "patch",
                     queries: int = 1000, p_init: float = 0.8, bounds: tuple[float, float] = (0.0, 1.0),
                     seed: int = 0, device=None, batch_size: int = 1000, progress: bool = False) -> Universal:
    """The universal patch (``eps`` its side) or frame (``eps`` its width) of ``model`` over
    the images ``x`` (labels ``y``), by ``queries`` steps of random search (``seed``);
    ``history`` holds the fooling rate on ``x`` after each tenth of them."""
    y = check_batch(x, y, bounds=bounds)
    norm = get_norm(norm)
    if not isinstance(norm, (Patch, Frame)):
        raise InputError(f"norm must be 'patch' or 'frame' for a universal search, got {norm.label}")
    eps = int(check_pasted(norm, norm.budget(float(eps)), x.shape))
    queries, p_init, _ = search_options(queries, p_init, 1)
    gen = torch.Generator().manual_seed(check_seed("seed", seed))
    device = device or next(iter(model.parameters()), torch.empty(0)).device
    x, y = x.to(device), y.to(device)
    channels, height, width = x.shape[1:]
    low, high = (torch.tensor(b, dtype=x.dtype, device=device) for b in bounds)
    u = rng.rand((queries, 3 + channels), gen, dtype=torch.float64).to(device)
    if isinstance(norm, Frame):
        state = _FrameState(Border(height, width, eps, device=device), channels, gen, low, high, p_init)
    else:
        state = _PatchState(eps, channels, height, width, gen, low, high, device, p_init)
    result = Universal(torch.zeros_like(x[0]), eps, norm, found_by=f"{queries:,} queries of random search")
    with frozen(model), bar(queries, desc="universal search", unit="query", enabled=progress) as shown:
        best, fooled = _score(model, x, y, state.delta(), state.mask(), batch_size)
        for q in range(1, queries):
            candidate = state.changed(u[q], q, queries, gen)
            loss, count = _score(model, x, y, candidate.delta(), candidate.mask(), batch_size)
            if loss < best - TIE * max(abs(best), 1) and count >= fooled:
                state, best, fooled = candidate, loss, count
            if (q + 1) % max(queries // 10, 1) == 0 and q + 1 < queries:
                result.history.append(fooled / len(x))
            shown.update(1)
        result.history.append(fooled / len(x))  # after the last query
    result.delta, result.mask = state.delta()[0], state.mask()[0]
    return result


@torch.no_grad()
def _score(model, x, y, delta, mask, batch_size) -> tuple[float, int]:
    """The summed capped margin loss of the images with ``delta`` pasted where ``mask`` is 1,
    and how many of them it misclassifies."""
    loss, count = 0.0, 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        logits = model(torch.where(mask.bool(), delta, xb)).float()
        true = logits.gather(1, yb[:, None]).squeeze(1)
        other = logits.scatter(1, yb[:, None], float("-inf")).amax(1)
        loss += (true - other).clamp(min=-CAP).double().sum().item()
        count += int((logits.argmax(1) != yb).sum())
    return loss, count


class _FrameState:
    """A universal frame: its colours [1, C, F] on the border."""

    def __init__(self, border, channels, gen, low, high, p_init, colours=None):
        self.border, self.low, self.high, self.p_init = border, low, high, p_init
        if colours is None:
            bits = rng.randint(2, (1, channels, border.count), gen).to(low.device)
            colours = torch.where(bits == 1, high, low)
        self.colours = colours

    def delta(self):
        return self.border.paint(torch.zeros((1, self.colours.shape[1], self.border.height, self.border.across),
                                             dtype=self.low.dtype, device=self.low.device), self.colours)

    def mask(self):
        m = torch.zeros(self.border.height * self.border.across, device=self.low.device)
        m[self.border.where] = 1
        return m.view(1, 1, self.border.height, self.border.across)

    def changed(self, u, q, queries, gen):
        draws = rng.rand((1, self.border.draws(self.p_init)), gen, dtype=torch.float32).to(self.low.device)
        colours = self.border.repaint(self.colours, draws, patch_fraction(self.p_init, q, queries), self.p_init,
                                      self.low, self.high)
        return _FrameState(self.border, None, None, self.low, self.high, self.p_init, colours)


class _PatchState:
    """A universal patch: its contents [1, C, s, s] and its one place (top, left)."""

    def __init__(self, side, channels, height, width, gen, low, high, device, p_init, contents=None, place=None):
        self.side, self.height, self.width, self.low, self.high = side, height, width, low, high
        self.p_init = p_init
        if contents is None:  # vertical stripes at a uniform place, as Sparse-RS starts
            bits = rng.randint(2, (1, channels, 1, side), gen).to(device)
            contents = torch.where(bits == 1, high, low).expand(1, channels, side, side).clone()
            at = rng.rand((2,), gen, dtype=torch.float64)
            place = (int(at[0] * (height - side + 1)), int(at[1] * (width - side + 1)))
        self.contents, self.place = contents, place

    def mask(self):
        m = torch.zeros((1, 1, self.height, self.width), device=self.low.device)
        m[..., self.place[0]:self.place[0] + self.side, self.place[1]:self.place[1] + self.side] = 1
        return m

    def delta(self):
        d = torch.zeros((1, self.contents.shape[1], self.height, self.width), dtype=self.low.dtype,
                        device=self.low.device)
        d[..., self.place[0]:self.place[0] + self.side, self.place[1]:self.place[1] + self.side] = self.contents
        return d

    def changed(self, u, q, queries, gen):
        shifts = shift_range(q, queries, self.height), shift_range(q, queries, self.width)
        contents, place = self.contents, self.place
        if max(shifts) > 0 and q % location_period(q, queries) == 0:
            place = tuple(min(max(p + int(v * (2 * s + 1)) - s, 0), limit - self.side)
                          for p, v, s, limit in zip(place, u[:2].tolist(), shifts, (self.height, self.width)))
        else:
            contents = paint_square(contents, u[None, :2 + contents.shape[1]], patch_fraction(self.p_init, q, queries),
                                    self.low, self.high)
        return _PatchState(self.side, None, self.height, self.width, None, self.low, self.high, None,
                           self.p_init, contents, place)

