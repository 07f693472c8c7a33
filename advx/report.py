"""Reports people read: a plain-text table, ``report.json`` and an examples picture."""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from advx.files import atomic_write
from advx.norms import TINY, per_sample


def environment() -> dict[str, str]:
    """Versions that decide the numbers (stored in every report)."""
    import torchvision

    from advx import __version__

    return {
        "advx": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "threads": str(torch.get_num_threads()),
    }


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically (temp file + rename)."""
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    return Path(path)


def format_table(rows: Sequence[tuple[str, str]], title: str | None = None) -> str:
    """Two aligned columns, for the console."""
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * len(title)] if title else []
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


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
) -> Path:
    """Save a PNG grid: originals (top row), adversarials (middle), and the perturbation
    magnified to the full grey range (bottom, mid-grey = 0). Each column is captioned
    with the true label and both predictions.

    x, x_adv: [N, 1, H, W] in [0, 1]; y, pred_clean, pred_adv: [N].
    """
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.transforms.functional import to_pil_image

    n = min(columns, len(x))
    if n == 0:
        raise ValueError("save_examples needs at least one image, got an empty batch")
    x, x_adv = x[:n].detach().cpu(), x_adv[:n].detach().cpu()
    delta = x_adv - x
    peak = per_sample(delta.abs().flatten(1).amax(1).clamp_min(TINY), delta)
    delta_img = 0.5 + 0.5 * delta / peak
    rows = [("original", x), ("adversarial", x_adv), ("perturbation (magnified)", delta_img)]

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
            if r == 0:
                text, colour = f"y={int(y[c])} p={int(pred_clean[c])}", "black"
            elif r == 1:
                fooled = int(pred_adv[c]) != int(y[c])
                text, colour = f"pred {int(pred_adv[c])}", ("red" if fooled else "green")
            else:
                text, colour = f"max {float(peak[c]):.2f}", "black"
            draw.text((left, top + 14), text, fill=colour, font=font)
    with atomic_write(path, "wb") as f:
        canvas.save(f, format="PNG")
    return Path(path)


def write_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write rows (dicts with the same keys) as CSV, atomically."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def save_curve(path: str | os.PathLike, eps: Sequence[float], robust_acc: dict,
               by_attack: dict, *, clean_acc: float, title: str = "") -> Path:
    """Robust accuracy vs eps: one line per attack and the worst case, starting from the
    clean accuracy at eps = 0."""
    import matplotlib  # imported here: it is slow to import and only this function needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_zero = eps[0] > 0  # the clean accuracy is the point at eps = 0
    xs = [0.0, *eps] if with_zero else list(eps)
    head = [clean_acc] if with_zero else []
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(xs, head + [robust_acc[e] for e in eps], marker="s", color="black", lw=3,
            label="worst case", zorder=1)
    for name in by_attack[eps[0]]:  # dashed on top, so a line equal to the worst case stays visible
        ax.plot(xs, head + [by_attack[e][name] for e in eps], marker="o", ls="--", label=name,
                zorder=2)
    ax.set_xlabel("eps (pixel units)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title or "robust accuracy vs eps")
    ax.legend()
    fig.tight_layout()
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)
    return Path(path)
