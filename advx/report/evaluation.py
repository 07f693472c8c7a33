"""What ``advx eval`` prints and writes: the console table (clean accuracy, then robust
accuracy per eps, worst case first, one column per attack, and with certificates the
certified share and the unresolved band), ``per_sample.csv``, ``curve.png``, ``report.json``,
and for several threat models the table and ``report.json`` of their worst cases."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from advx.evaluate import Evaluation
from advx.figures import save_bounds_curve, save_curve
from advx.norms import NORM_NAMES, get_norm
from advx.report.common import environment, label_columns, remove_stale, source_title, write_csv, write_json


def eval_table(ev: Evaluation, *, source: str) -> str:
    """``advx eval``'s console table: clean accuracy, then robust accuracy per eps, worst
    case first, then one column per attack (cumulative over the cascade, or each attack on
    its own: as the evaluation ran)."""
    how = ", cumulative over the cascade" if ev.settings.get("cascade", True) else ", each attack on its own"
    lines = [f"clean accuracy {ev.clean_acc:.2%} on {ev.n} test images ({source})",
             f"robust accuracy ({ev.norm.label}{how}):",
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
    for reason in ev.settings.get("adaptations", {}).values():
        lines.append(f"adapted: {reason}")
    used = ev.settings.get("precision_used", {})
    if any(p != "fp32" for p in used.values()):
        lines.append("search precision " + ", ".join(f"{a} {p}" for a, p in used.items())
                     + " (success decided in fp32)")
    lines.append(f"wall time {ev.seconds:.1f} s" + (" (" + ", ".join(f"{k} {v:.1f} s" for k, v in ev.seconds_by_stage.items())
                                                    + ")" if ev.seconds_by_stage else ""))
    return "\n".join(lines)


def per_sample_rows(ev: Evaluation, classes: Sequence[str] | None = None) -> list[dict]:
    """The rows of ``per_sample.csv``, one dict per sample: index, label, clean prediction,
    and for each eps whether it is robust, which attack broke it first (``-`` if none), at
    which step, and the distance it moved (the perturbation's size in the threat model's
    norm). A sample broken at a smaller eps keeps that record."""
    r = {k: v.tolist() for k, v in ev.records.items()}  # plain lists: fast to index
    rows = []
    for i in range(ev.n):
        row = {"index": i, **label_columns(r["y"][i], r["pred_clean"][i], classes)}
        for k, e in enumerate(ev.eps):
            who = r["broken_by"][k][i]
            row[f"robust@{e:g}"] = int(r["robust"][k][i])
            row[f"attack@{e:g}"] = ev.attacks[who] if who >= 0 else "-"
            row[f"step@{e:g}"] = r["step"][k][i] if who >= 0 else ""
            row[f"distance@{e:g}"] = f"{r['distance'][k][i]:.5f}" if who >= 0 else ""
            if "certified" in r:  # certified (proved), broken (attacked), unresolved or misclassified
                row[f"margin_lb@{e:g}"] = f"{r['margin_lb'][k][i]:.6g}"
                row[f"status@{e:g}"] = ("certified" if r["certified"][k][i] else "broken" if who >= 0
                                        else "unresolved" if r["pred_clean"][i] == r["y"][i] else "misclassified")
        rows.append(row)
    return rows


def write_eval_outputs(out: Path, ev: Evaluation, *, source: dict, training_final=None) -> list[str]:
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
        "seconds_by_stage": ev.seconds_by_stage,
        **({"training_final": training_final} if training_final else {}),
        "sanity": {"passed": not ev.warnings, "warnings": ev.warnings},
        "files": written,
        "environment": environment(),
    })
    remove_stale(out, written)
    return written


def norms_table(results: dict) -> str:
    """One line per threat model (``results``: norm -> ``Evaluation``): its worst case at its
    largest budget, and which attacks got there."""
    lines = ["worst case per threat model (the largest budget of each):",
             f"{'norm':>5}  {'eps':>6}  {'clean':>8}  {'robust':>8}  attacks"]
    for ev in results.values():
        e = ev.eps[-1]
        lines.append(f"{ev.norm.label:>5}  {e:>6g}  {ev.clean_acc:>8.2%}  {ev.robust_acc[e]:>8.2%}  "
                     + ",".join(ev.attacks))
    return "\n".join(lines)


def write_norms_report(out: Path, results: dict, files: dict, *, source: dict) -> Path:
    """``report.json`` of an evaluation in several threat models (``results``: norm ->
    ``Evaluation``; ``files``: norm -> the files of its own folder) into ``out``; a
    single-norm run's files left there before are removed."""
    path = write_json(out / "report.json", {
        "command": "eval", **source,
        "norms": {ev.norm.label: {"eps": ev.eps, "clean_acc": ev.clean_acc, "attacks": ev.attacks,
                                  "robust_acc": {f"{e:g}": v for e, v in ev.robust_acc.items()},
                                  "files": files[norm]}
                  for norm, ev in results.items()},
        "environment": environment()})
    remove_stale(out, ["report.json"])
    return path


def remove_stale_norm_folders(out: Path, kept: list[str]) -> None:
    """The per-norm folders (``Linf/``, ``L2/``, ``L1/``) that an earlier run left in ``out``
    and this one did not write (``kept``: the labels it wrote): their advx outputs and
    resume store are removed, then the folder if nothing else is left in it."""
    for label in (get_norm(n).label for n in NORM_NAMES):
        folder = out / label
        if label in kept or not folder.is_dir():
            continue
        remove_stale(folder, [])
        shutil.rmtree(folder / ".resume", ignore_errors=True)
        if not any(folder.iterdir()):
            folder.rmdir()
