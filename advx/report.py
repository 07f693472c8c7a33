"""Reports people read and scripts parse: plain-text tables, ``report.json`` and
``per_sample.csv``, and the layout of each command's output folder (the pictures:
``advx.figures``)."""

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
from advx.figures import save_curve, save_examples
from advx.norms import get_norm


def environment() -> dict[str, str]:
    """Versions that decide the numbers (stored in every report)."""
    import torchvision

    from advx import __version__

    return {"advx": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": sys.version.split()[0], "platform": platform.platform(),
            "threads": str(torch.get_num_threads())}


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


def write_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write rows (dicts with the same keys) as CSV, atomically."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


# ------------------------------------------------------------ a command's output folder
# What advx writes into an output folder. A run removes those of them that it did not
# write, so that a folder reused from an earlier run never shows stale files beside new ones.
OUTPUTS = ("report.json", "per_sample.csv", "curve.png", "examples.png")


def _remove_stale(out: Path, written: list[str]) -> None:
    for name in OUTPUTS:
        if name not in written and (out / name).is_file():
            (out / name).unlink()


def eval_table(ev, *, source: str, cascade: bool = True) -> str:
    """``advx eval``'s console table: clean accuracy, then robust accuracy per eps, worst
    case first, then one column per attack. ``ev``: an ``advx.evaluate.Evaluation``."""
    how = ", cumulative over the cascade" if cascade else ", each attack on its own"
    label = get_norm(ev.settings.get("norm", "inf")).label
    lines = [f"clean accuracy {ev.clean_acc:.2%} on {ev.n} test images ({source})",
             f"robust accuracy ({label}{how}):",
             f"{'eps':>6}  {'worst case':>10}  " + "  ".join(f"{a:>10}" for a in ev.attacks)
             + (f"  {'certified':>10}  {'unresolved':>10}" if ev.certified_acc is not None else "")]
    cert = ev.certified_acc  # the interval: certified <= true robust accuracy <= worst case
    for e in ev.eps:
        lines.append(f"{e:>6g}  {ev.robust_acc[e]:>10.2%}  "
                     + "  ".join(f"{ev.robust_acc_by_attack[e][a]:>10.2%}" for a in ev.attacks)
                     + (f"  {cert[e]:>10.2%}  {ev.robust_acc[e] - cert[e]:>10.2%}" if cert is not None else ""))
    if cert is not None:
        lines.append(f"certified by {ev.settings['certify']} (a proved lower bound); the true robust accuracy "
                     f"lies between it and the worst case")
    used = ev.settings.get("precision_used", {})
    if any(p != "fp32" for p in used.values()):
        lines.append("search precision " + ", ".join(f"{a} {p}" for a, p in used.items())
                     + " (success decided in fp32)")
    lines.append(f"wall time {ev.seconds:.1f} s")
    return "\n".join(lines)


def source_title(source: dict) -> str:
    """``"small (checkpoints/baseline.pt)"``: a picture's title for the model ``source`` describes."""
    where = source.get("checkpoint")
    return f"{source['model']} ({where}), {source['dataset']}" if where else f"{source['model']}, {source['dataset']}"


def label_columns(label: int, pred: int, classes: Sequence[str] | None) -> dict:
    """The first columns of a ``per_sample.csv`` row: label, its class name, clean prediction."""
    return {"label": label, **({"class": classes[label]} if classes else {}), "pred_clean": pred}


def per_sample_rows(ev, classes: Sequence[str] | None = None) -> list[dict]:
    """The rows of ``per_sample.csv`` for an ``advx.evaluate.Evaluation``, one dict per
    sample: index, label, clean prediction, and for each eps whether it is robust, which
    attack broke it first (``-`` if none), at which step, and the perturbation norm. A
    sample broken at a smaller eps keeps that record."""
    r = {k: v.tolist() for k, v in ev.records.items()}  # plain lists: fast to index
    rows = []
    for i in range(ev.n):
        row = {"index": i, **label_columns(r["y"][i], r["pred_clean"][i], classes)}
        for k, e in enumerate(ev.eps):
            who = r["broken_by"][k][i]
            row[f"robust@{e:g}"] = int(r["robust"][k][i])
            row[f"attack@{e:g}"] = ev.attacks[who] if who >= 0 else "-"
            row[f"step@{e:g}"] = r["step"][k][i] if who >= 0 else ""
            row[f"norm@{e:g}"] = f"{r['norm'][k][i]:.5f}" if who >= 0 else ""
            if "certified" in r:  # certified (proved), broken (attacked), unresolved or misclassified
                row[f"margin_lb@{e:g}"] = f"{r['margin_lb'][k][i]:.6g}"
                row[f"status@{e:g}"] = ("certified" if r["certified"][k][i] else "broken" if who >= 0
                                        else "unresolved" if r["pred_clean"][i] == r["y"][i] else "misclassified")
        rows.append(row)
    return rows


def write_eval_outputs(out: Path, ev, *, source: dict, training_final=None) -> list[str]:
    """``per_sample.csv``, ``curve.png`` and ``report.json`` of an evaluation into ``out``
    (stale files removed); returns the names written. ``source``: the model, where it came
    from, its dataset and class names (report.json's first fields). ``training_final``: the
    checkpoint's own figure from its training (``advx.probe.final_metrics``)."""
    written = ["report.json", "per_sample.csv", "curve.png"]
    write_csv(out / "per_sample.csv", per_sample_rows(ev, source.get("classes")))
    title = source_title(source)
    if ev.certified_acc is None:
        save_curve(out / "curve.png", ev.eps, ev.robust_acc, ev.robust_acc_by_attack, clean_acc=ev.clean_acc,
                   title=title)
    else:
        from advx.bounds.report import save_bounds_curve
        save_bounds_curve(out / "curve.png", ev.eps, ev.certified_acc, ev.robust_acc, clean_acc=ev.clean_acc,
                          method=ev.settings["certify"], title=title, by_attack=ev.robust_acc_by_attack)
    write_json(out / "report.json", {
        "command": "eval", **source,
        "settings": ev.settings,
        "clean_acc": ev.clean_acc,
        "robust_acc": {f"{e:g}": v for e, v in ev.robust_acc.items()},
        "robust_acc_by_attack": {f"{e:g}": v for e, v in ev.robust_acc_by_attack.items()},
        **({} if ev.certified_acc is None else {"certified_acc": {f"{e:g}": v for e, v in ev.certified_acc.items()}}),
        "seconds": ev.seconds,
        **({"training_final": training_final} if training_final else {}),
        "sanity": {"passed": not ev.warnings, "warnings": ev.warnings},
        "files": written,
        "environment": environment(),
    })
    _remove_stale(out, written)
    return written


def attack_summary(run) -> dict[str, float | int]:
    """The figures of an ``advx.dataset_attack.DatasetResult``: clean / robust accuracy, success
    rate on the originally correct samples (for a targeted run, without those whose label
    already is the target), perturbation sizes, speed."""
    correct = run.pred_clean == run.y
    robust = correct & (run.pred_adv == run.y)
    eligible = correct if run.target is None else correct & (run.target != run.y)
    n_eligible = int(eligible.sum())
    norms = run.distance[eligible]
    return {
        "n": len(run.y),
        "clean_acc": correct.float().mean().item(),
        "robust_acc": robust.float().mean().item(),
        "attacked": n_eligible,
        "success_rate": run.success[eligible].float().mean().item() if n_eligible else float("nan"),
        "mean_norm": norms.mean().item() if n_eligible else float("nan"),
        "max_norm": norms.max().item() if n_eligible else float("nan"),
        "seconds": run.seconds,
        "images_per_s": len(run.y) / run.seconds if run.seconds > 0 else float("inf"),
    }


def attack_table(run, attack, *, source: dict) -> str:
    """``advx attack``'s console table. ``run``: an ``advx.dataset_attack.DatasetResult``."""
    s = attack_summary(run)
    return format_table([
        ("model", source_title(source)),
        ("attack", repr(attack)),
        ("images", str(s["n"])),
        ("clean accuracy", f"{s['clean_acc']:.2%}"),
        ("robust accuracy", f"{s['robust_acc']:.2%}"),
        ("attack success rate", f"{s['success_rate']:.2%} of {s['attacked']} "
                                f"{'eligible' if run.target is not None else 'correctly classified'}"),
        (f"mean / max {attack.norm.label}", f"{s['mean_norm']:.4f} / {s['max_norm']:.4f}"),
        ("wall time", f"{s['seconds']:.2f} s ({s['images_per_s']:.0f} images/s)"),
    ] + ([("search precision", f"{attack.precision_used} (success decided in fp32)")]
         if attack.precision_used not in (None, "fp32") else []), title="advx attack")


def write_attack_outputs(out: Path, run, x: torch.Tensor, attack, *, settings: dict, source: dict) -> list[str]:
    """``examples.png`` (``x``: the clean images of ``run.x_adv``) and ``report.json`` of
    one attack over a dataset into ``out`` (stale advx files removed); returns the names."""
    written = ["report.json", "examples.png"]
    k = len(run.x_adv)
    save_examples(out / "examples.png", x[:k], run.x_adv, run.y[:k], run.pred_clean[:k], run.pred_adv[:k],
                  classes=source.get("classes"))
    write_json(out / "report.json", {
        "command": "attack", **source,
        "attack": attack.config(),
        **settings,
        "results": attack_summary(run),
        "files": written,
        "environment": environment(),
    })
    _remove_stale(out, written)
    return written
