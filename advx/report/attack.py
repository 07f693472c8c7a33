"""What ``advx attack`` prints and writes: the figures of one attack over a dataset (an
``advx.dataset_attack.DatasetResult``), its console table, ``examples.png`` and ``report.json``."""

from __future__ import annotations

from pathlib import Path

import torch

from advx.figures import save_examples
from advx.report.common import environment, format_table, remove_stale, source_title, write_json


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
    remove_stale(out, written)
    return written


def universal_table(found, measured: dict, *, n: int, train_images: int, seconds: float, source: dict) -> str:
    """``advx attack --universal``'s console table: the perturbation found (``advx.universal.
    Universal``) and what it does to ``n`` test images it never saw (``measured``: ``fooling``)."""
    return format_table([
        ("model", source_title(source)),
        ("perturbation", f"one for every image, {found.norm.label} eps {found.eps:g} "
                         f"(size {found.size():.4f})"),
        ("found on", f"{train_images:,} training images, {found.found_by} (fooling rate there "
                     f"{found.history[-1]:.2%})"),
        ("test images", str(n)),
        ("clean accuracy", f"{measured['clean_acc']:.2%}"),
        ("accuracy with it", f"{measured['acc']:.2%}"),
        ("fooling rate", f"{measured['fooling_rate']:.2%} (predictions it changes)"),
        ("wall time", f"{seconds:.2f} s"),
    ], title="advx attack --universal")


def _saved(found):
    """What ``perturbation(s).pt`` holds for one perturbation: the tensor [C, H, W] (a patch:
    ``{"values": [C, H, W], "mask": [1, H, W]}``, the values pasted where the mask is 1)."""
    if found.mask is None:
        return found.delta.cpu()
    return {"values": found.delta.cpu(), "mask": found.mask.cpu()}


def _with(found, x):
    """The images ``x`` with the universal perturbation ``found`` applied."""
    from advx.universal import applied

    return applied(x, found.delta.cpu(), (0, 1), None if found.mask is None else found.mask.cpu())


def write_universal_outputs(out: Path, found, measured: dict, x: torch.Tensor, y: torch.Tensor, *,
                            settings: dict, source: dict) -> list[str]:
    """``perturbation.pt`` (the perturbation [C, H, W], see ``_saved``), ``examples.png`` (test images ``x``,
    with it, and it) and ``report.json`` into ``out`` (stale advx files removed)."""
    from advx.files import atomic_write

    written = ["report.json", "examples.png", "perturbation.pt"]
    with atomic_write(out / "perturbation.pt", "wb") as f:
        torch.save(_saved(found), f)
    k = min(8, len(x))
    save_examples(out / "examples.png", x[:k], _with(found, x[:k]), y[:k],
                  measured["pred_clean"][:k], measured["pred"][:k], classes=source.get("classes"))
    write_json(out / "report.json", {
        "command": "attack", **source,
        "universal": {"norm": found.norm.name, "eps": found.eps, "size": found.size(),
                      "found_by": found.found_by, "train_fooling_rate": found.history},
        **settings,
        "results": {k: v for k, v in measured.items() if k not in ("pred_clean", "pred")},
        "files": written,
        "environment": environment(),
    })
    remove_stale(out, written)
    return written


def universal_sweep_table(rows, *, n: int, train_images: int, seconds: float, source: dict) -> str:
    """``advx eval --universal``'s console table: per eps, the perturbation found (``rows``:
    ``(Universal, fooling(...))`` pairs) and what it does to ``n`` test images it never saw."""
    found = rows[0][0]
    lines = [("model", source_title(source)),
             ("threat model", f"one {found.norm.label} perturbation for every image, found on "
                              f"{train_images:,} training images"),
             ("test images", str(n)),
             ("clean accuracy", f"{rows[0][1]['clean_acc']:.2%}")]
    lines += [(f"eps {u.eps:g}", f"accuracy with it {m['acc']:.2%}, fooling rate {m['fooling_rate']:.2%} "
                                 f"(training images {u.history[-1]:.2%})") for u, m in rows]
    lines.append(("wall time", f"{seconds:.2f} s"))
    return format_table(lines, title="advx eval --universal")


def write_universal_sweep(out: Path, rows, x: torch.Tensor, y: torch.Tensor, *, settings: dict,
                          source: dict) -> list[str]:
    """``report.json``, ``curve.png`` (accuracy under the perturbation against eps),
    ``perturbations.pt`` ({eps: [C, H, W]}) and ``examples.png`` (the largest eps's) into ``out``."""
    from advx.figures import save_curve
    from advx.files import atomic_write

    written = ["report.json", "curve.png", "examples.png", "perturbations.pt"]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "perturbations.pt", "wb") as f:
        torch.save({u.eps: _saved(u) for u, _ in rows}, f)
    eps = [u.eps for u, _ in rows]
    acc = {u.eps: m["acc"] for u, m in rows}
    save_curve(out / "curve.png", eps, acc, {e: {} for e in eps}, clean_acc=rows[0][1]["clean_acc"],
               title=f"accuracy under one universal {rows[0][0].norm.label} perturbation")
    last, measured = rows[-1]
    k = min(8, len(x))
    save_examples(out / "examples.png", x[:k], _with(last, x[:k]), y[:k],
                  measured["pred_clean"][:k], measured["pred"][:k], classes=source.get("classes"))
    write_json(out / "report.json", {
        "command": "eval", **source, "threat": "universal", "norm": rows[0][0].norm.name, **settings,
        "clean_acc": rows[0][1]["clean_acc"],
        "results": [{"eps": u.eps, "acc": m["acc"], "fooling_rate": m["fooling_rate"],
                     "size": u.size(), "train_fooling_rate": u.history}
                    for u, m in rows],
        "files": written,
        "environment": environment(),
    })
    remove_stale(out, written)
    return written
