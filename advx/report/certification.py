"""What ``advx certify`` prints and writes: the table, ``report.json``, ``per_sample.csv``
(each sample's certified margin bound per eps) and ``curve.png`` (certified accuracy vs eps)."""

from __future__ import annotations

from pathlib import Path

from advx.certify.sweep import CertifyRun
from advx.certify.verdicts import VERDICTS
from advx.figures import save_bounds_curve
from advx.report.common import environment, label_columns, remove_stale, source_title, write_csv, write_json


def certify_table(run: CertifyRun, *, source: str) -> str:
    lines = [f"clean accuracy {run.clean_acc:.2%} on {len(run.y)} test images ({source})",
             f"certified accuracy ({run.method}, {run.norm.label}; a proved lower bound):",
             f"{'eps':>6}  {'certified':>10}  {'seconds':>8}  {'images/s':>9}"]
    for e in run.eps:
        rate = len(run.y) / run.seconds[e] if run.seconds[e] > 0 else float("inf")
        lines.append(f"{e:>6g}  {run.certified_acc(e):>10.2%}  {run.seconds[e]:>8.2f}  {rate:>9.0f}")
    if run.verdicts is not None:
        lines.append("branch and bound, per sample (misclassified samples count as falsified):")
        lines.append(f"{'eps':>6}  {'verified':>9}  {'falsified':>9}  {'unknown':>8}  robust accuracy")
        for e in run.eps:
            c, exact = run.counts(e), run.exact_acc(e)
            band = (f"exactly {exact:.2%}" if exact is not None else
                    f"in [{run.certified_acc(e):.2%}, {(c['verified'] + c['unknown']) / len(run.y):.2%}]")
            lines.append(f"{e:>6g}  {c['verified']:>9}  {c['falsified']:>9}  {c['unknown']:>8}  {band}")
    return "\n".join(lines)


def write_certify_outputs(out: Path, run: CertifyRun, *, source: dict) -> list[str]:
    """``per_sample.csv``, ``curve.png`` and ``report.json`` of ``run`` into ``out`` (stale
    files removed); returns the names written."""
    written = ["report.json", "per_sample.csv", "curve.png"]
    rows = []
    lower = {e: run.lower[e].tolist() for e in run.eps}
    for i in range(len(run.y)):
        row = {"index": i, **label_columns(int(run.y[i]), int(run.pred_clean[i]), source.get("classes"))}
        for e in run.eps:
            row[f"certified@{e:g}"] = int(lower[e][i] > 0)
            row[f"margin_lb@{e:g}"] = f"{lower[e][i]:.6g}"
            if run.verdicts is not None:
                row[f"verdict@{e:g}"] = VERDICTS[int(run.verdicts[e][i])]
                row[f"seconds@{e:g}"] = f"{float(run.verdict_seconds[e][i]):.3f}"
        rows.append(row)
    write_csv(out / "per_sample.csv", rows)
    save_bounds_curve(out / "curve.png", run.eps, {e: run.certified_acc(e) for e in run.eps}, None,
                      clean_acc=run.clean_acc, method=run.method, title=source_title(source))
    write_json(out / "report.json", {
        "command": "certify", **source,
        "settings": run.settings, "clean_acc": run.clean_acc,
        "certified_acc": {f"{e:g}": run.certified_acc(e) for e in run.eps},
        "seconds": {f"{e:g}": s for e, s in run.seconds.items()},
        **({} if run.verdicts is None else {
            "verdicts": {f"{e:g}": run.counts(e) for e in run.eps},
            "exact_robust_acc": {f"{e:g}": run.exact_acc(e) for e in run.eps}}),
        "files": written, "environment": environment(),
    })
    remove_stale(out, written)
    return written
