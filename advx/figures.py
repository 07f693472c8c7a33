"""The pictures advx draws: the examples grid of ``advx attack`` (originals, adversarials,
perturbations, captioned with class names) and the accuracy-vs-eps curves of ``advx eval``
and ``advx certify`` (with certificates: the certified lower bound, the attacks' upper
bound and the unresolved band between them), and randomized smoothing's certified accuracy
vs radius. Each is written atomically as a PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from advx.files import atomic_write
from advx.norms import TINY, per_sample
from advx.validate import InputError


def save_examples(
    path: str | os.PathLike,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    pred_clean: torch.Tensor,
    pred_adv: torch.Tensor,
    *,
    columns: int = 8,
    scale: int = 3,
    classes: Sequence[str] | None = None,
) -> Path:
    """Save a PNG grid: originals (top row), adversarials (middle), and the perturbation
    magnified to the full grey range (bottom, mid-grey = 0). Each column is captioned
    with the true label and both predictions.

    x, x_adv: [N, 1, H, W] in [0, 1]; y, pred_clean, pred_adv: [N]; ``classes``: the class
    names (index -> name; default: the indices), shown instead of the indices.
    """
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.transforms.functional import to_pil_image

    n = min(columns, len(x))
    if n == 0:
        raise InputError("save_examples needs at least one image, got an empty batch")
    x, x_adv = x[:n].detach().cpu(), x_adv[:n].detach().cpu()
    delta = x_adv - x
    peak = per_sample(delta.abs().flatten(1).amax(1).clamp_min(TINY), delta)
    delta_img = 0.5 + 0.5 * delta / peak
    rows = [("original", x), ("adversarial", x_adv), ("perturbation (magnified)", delta_img)]

    named = classes is not None and any(not str(c).isdigit() for c in classes)
    scale = max(scale, 4) if named else scale  # room for "T-shirt/top"

    def label(k) -> str:
        return str(classes[int(k)]) if classes is not None else str(int(k))

    h, w = x.shape[-2] * scale, x.shape[-1] * scale
    pad, caption = 6, 30
    font = ImageFont.load_default()
    canvas = Image.new("RGB", (pad + n * (w + pad), len(rows) * (h + caption + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, imgs) in enumerate(rows):
        top = pad + r * (h + caption + pad)
        draw.text((pad, top), name, fill="black", font=font)
        for c in range(n):
            left = pad + c * (w + pad)
            tile = to_pil_image(imgs[c].clamp(0, 1)).resize((w, h), Image.NEAREST).convert("RGB")
            canvas.paste(tile, (left, top + caption))
            if r == 0 and named:  # the label; orange when the clean image is misclassified already
                text, colour = label(y[c]), ("black" if int(pred_clean[c]) == int(y[c]) else "darkorange")
            elif r == 0:
                text, colour = f"y={label(y[c])} p={label(pred_clean[c])}", "black"
            elif r == 1:
                fooled = int(pred_adv[c]) != int(y[c])
                text = label(pred_adv[c]) if named else f"pred {label(pred_adv[c])}"
                colour = "red" if fooled else "green"
            else:
                text, colour = f"max {float(peak[c]):.2f}", "black"
            draw.text((left, top + 14), text, fill=colour, font=font)
    with atomic_write(path, "wb") as f:
        canvas.save(f, format="PNG")
    return Path(path)


def save_curve(path: str | os.PathLike, eps: Sequence[float], robust_acc: dict,
               by_attack: dict, *, clean_acc: float, title: str = "") -> Path:
    """Robust accuracy vs eps: one line per attack and the worst case, starting from the
    clean accuracy at eps = 0."""
    fig, ax, xs, head = _accuracy_axes(eps, clean_acc)
    ax.plot(xs, head + [robust_acc[e] for e in eps], marker="s", color="black", lw=3,
            label="worst case", zorder=1)
    for name in by_attack[eps[0]]:  # dashed on top, so a line equal to the worst case stays visible
        ax.plot(xs, head + [by_attack[e][name] for e in eps], marker="o", ls="--", label=name,
                zorder=2)
    return save_accuracy_axes(fig, ax, path, title)


def save_bounds_curve(path, eps: Sequence[float], certified: dict, attack: dict | None, *,
                      clean_acc: float, method: str, title: str = "",
                      by_attack: dict | None = None) -> Path:
    """Certified accuracy (a lower bound) vs eps; with ``attack`` also the attacks' robust
    accuracy (an upper bound) and the unresolved band between them, where the true robust
    accuracy lies."""
    fig, ax, xs, head = _accuracy_axes(eps, clean_acc)
    lower = head + [certified[e] for e in eps]
    if attack is not None:
        upper = head + [attack[e] for e in eps]
        ax.fill_between(xs, lower, upper, color="tab:orange", alpha=0.25, label="unresolved")
        ax.plot(xs, upper, marker="s", color="black", lw=2, label="attacks (upper bound)")
        for name in (by_attack or {}).get(eps[0], {}):
            ax.plot(xs, head + [by_attack[e][name] for e in eps], marker="o", ls="--", lw=1, label=name)
    ax.plot(xs, lower, marker="^", color="tab:green", lw=2, label=f"certified, {method} (lower bound)")
    return save_accuracy_axes(fig, ax, path, title, legend_size=8)


def save_radius_curve(path, curves: dict, *, title: str = "") -> Path:
    """Randomized smoothing's plot: certified accuracy vs L2 radius, one step line per sigma.
    ``curves[sigma]`` is each image's certified radius where it is certified correct, ``None``
    elsewhere (abstained or wrong), over the same images."""
    fig, ax = _figure()
    top = max([r for radii in curves.values() for r in radii if r is not None] + [1.0])
    xs = torch.linspace(0, top * 1.05, 200)
    for sigma, radii in curves.items():
        held = torch.tensor([r for r in radii if r is not None], dtype=torch.float64)
        acc = [(held >= float(r)).sum().item() / max(len(radii), 1) for r in xs]
        ax.plot(xs.tolist(), acc, drawstyle="steps-post", label=f"sigma = {sigma:g}")
    return save_accuracy_axes(fig, ax, path, title or "certified accuracy vs radius (randomized smoothing)",
                              xlabel="L2 radius (pixel units)")


def _accuracy_axes(eps: Sequence[float], clean_acc: float):
    """A figure for accuracy vs eps: ``(fig, ax, xs, head)``, where ``xs`` starts at eps = 0
    with the clean accuracy (``head``, prepended to every line) unless ``eps`` does."""
    with_zero = eps[0] > 0
    fig, ax = _figure()
    return fig, ax, ([0.0, *eps] if with_zero else list(eps)), ([clean_acc] if with_zero else [])


def _figure():
    import matplotlib  # imported here: it is slow to import and only the pictures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 4), dpi=120)


def save_accuracy_axes(fig, ax, path, title: str = "", legend_size=None,
                       xlabel: str = "eps (pixel units)") -> Path:
    """Label an accuracy-vs-eps plot (or vs ``xlabel``), write it as PNG atomically, close it."""
    import matplotlib.pyplot as plt
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title or "robust accuracy vs eps")
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)
    return Path(path)
