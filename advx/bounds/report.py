"""What ``advx certify`` prints and writes: the table, ``report.json``, ``per_sample.csv``
(each sample's certified margin bound per eps) and ``curve.png`` (certified accuracy vs
eps, and with attacks the unresolved band between the two bounds)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from advx.norms import get_norm

from advx.figures import save_accuracy_axes
from advx.report import _remove_stale, environment, label_columns, source_title, write_csv, write_json


@dataclass
class CertifyRun:
    """``advx certify`` over a test set: one ``Certificate`` per eps, plus the clean predictions."""

    eps: list[float]
    method: str
    norm: str
    y: torch.Tensor
    pred_clean: torch.Tensor
    lower: dict[float, torch.Tensor]  # eps -> [N] smallest margin bound
    seconds: dict[float, float]
    settings: dict = field(default_factory=dict)

    @property
    def clean_acc(self) -> float:
        return (self.pred_clean == self.y).float().mean().item()

    def certified_acc(self, e: float) -> float:
        return (self.lower[e] > 0).float().mean().item()


def certify_table(run: CertifyRun, *, source: str) -> str:
    lines = [f"clean accuracy {run.clean_acc:.2%} on {len(run.y)} test images ({source})",
             f"certified accuracy ({run.method}, {get_norm(run.norm).label}; a proved lower bound):",
             f"{'eps':>6}  {'certified':>10}  {'seconds':>8}  {'images/s':>9}"]
    for e in run.eps:
        rate = len(run.y) / run.seconds[e] if run.seconds[e] > 0 else float("inf")
        lines.append(f"{e:>6g}  {run.certified_acc(e):>10.2%}  {run.seconds[e]:>8.2f}  {rate:>9.0f}")
    return "\n".join(lines)


def write_certify_outputs(out: Path, run: CertifyRun, *, source: dict) -> list[str]:
    written = ["report.json", "per_sample.csv", "curve.png"]
    rows = []
    lower = {e: run.lower[e].tolist() for e in run.eps}
    for i in range(len(run.y)):
        row = {"index": i, **label_columns(int(run.y[i]), int(run.pred_clean[i]), source.get("classes"))}
        for e in run.eps:
            row[f"certified@{e:g}"] = int(lower[e][i] > 0)
            row[f"margin_lb@{e:g}"] = f"{lower[e][i]:.6g}"
        rows.append(row)
    write_csv(out / "per_sample.csv", rows)
    save_bounds_curve(out / "curve.png", run.eps, {e: run.certified_acc(e) for e in run.eps}, None,
                      clean_acc=run.clean_acc, method=run.method, title=source_title(source))
    write_json(out / "report.json", {
        "command": "certify", **source,
        "settings": run.settings, "clean_acc": run.clean_acc,
        "certified_acc": {f"{e:g}": run.certified_acc(e) for e in run.eps},
        "seconds": {f"{e:g}": s for e, s in run.seconds.items()},
        "files": written, "environment": environment(),
    })
    _remove_stale(out, written)
    return written


def save_bounds_curve(path, eps: Sequence[float], certified: dict, attack: dict | None, *,
                      clean_acc: float, method: str, title: str = "",
                      by_attack: dict | None = None) -> Path:
    """Certified accuracy (a lower bound) vs eps; with ``attack`` also the attacks' robust
    accuracy (an upper bound) and the unresolved band between them, where the true robust
    accuracy lies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [0.0, *eps] if eps[0] > 0 else list(eps)
    head = [clean_acc] if eps[0] > 0 else []
    lower = head + [certified[e] for e in eps]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if attack is not None:
        upper = head + [attack[e] for e in eps]
        ax.fill_between(xs, lower, upper, color="tab:orange", alpha=0.25, label="unresolved")
        ax.plot(xs, upper, marker="s", color="black", lw=2, label="attacks (upper bound)")
        for name in (by_attack or {}).get(eps[0], {}):
            ax.plot(xs, head + [by_attack[e][name] for e in eps], marker="o", ls="--", lw=1, label=name)
    ax.plot(xs, lower, marker="^", color="tab:green", lw=2, label=f"certified, {method} (lower bound)")
    return save_accuracy_axes(fig, ax, path, title, legend_size=8)
