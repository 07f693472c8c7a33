"""What ``advx certify --method smoothing`` prints and writes: the table (per sigma, the
certified accuracy at each L2 radius), ``report.json``, ``per_sample.csv`` (each image's
prediction, certified radius and bound on p_A per sigma) and ``curve.png`` (certified
accuracy vs radius, one line per sigma)."""

from __future__ import annotations

from pathlib import Path

from advx.figures import save_radius_curve
from advx.report.common import environment, label_columns, remove_stale, source_title, write_csv, write_json
from advx.smoothing import ABSTAIN, SmoothingRun


def smoothing_table(run: SmoothingRun, radii: list[float], *, source: str) -> str:
    s = run.settings
    lines = [f"randomized smoothing ({source}), {len(run.y)} test images: CERTIFY with n0 {s['n0']}, "
             f"{s['samples']:,} noise samples, alpha {s['alpha']:g} (each radius holds with probability "
             f">= {1 - s['alpha']:g})",
             f"certified accuracy at L2 radius:",
             f"{'sigma':>6}  " + "  ".join(f"{r:>7g}" for r in radii)
             + f"  {'abstain':>8}  {'seconds':>8}  {'forwards/s':>10}"]
    for sigma in run.results:
        lines.append(f"{sigma:>6g}  " + "  ".join(f"{run.certified_acc(sigma, r):>7.2%}" for r in radii)
                     + f"  {run.abstained(sigma):>8.2%}  {run.seconds[sigma]:>8.1f}"
                     + f"  {run.forwards_per_second(sigma):>10,.0f}")
    return "\n".join(lines)


def write_smoothing_outputs(out: Path, run: SmoothingRun, radii: list[float], *, pred_clean,
                            source: dict) -> list[str]:
    """``per_sample.csv``, ``curve.png`` and ``report.json`` into ``out`` (stale files
    removed); returns the names written. ``pred_clean``: the base model's clean predictions."""
    written = ["report.json", "per_sample.csv", "curve.png"]
    rows = []
    for i in range(len(run.y)):
        row = {"index": i, **label_columns(int(run.y[i]), int(pred_clean[i]), source.get("classes"))}
        for sigma, result in run.results.items():
            predicted = int(result.prediction[i])
            row[f"prediction@{sigma:g}"] = "abstain" if predicted == ABSTAIN else predicted
            row[f"radius@{sigma:g}"] = f"{float(result.radius[i]):.6g}"
            row[f"p_lower@{sigma:g}"] = f"{float(result.p_lower[i]):.6g}"
        rows.append(row)
    write_csv(out / "per_sample.csv", rows)
    curves = {sigma: [float(r) if ok else None for r, ok in zip(result.radius, result.certified(run.y, 0.0))]
              for sigma, result in run.results.items()}
    save_radius_curve(out / "curve.png", curves, title=source_title(source) + ", smoothed")
    write_json(out / "report.json", {
        "command": "certify", **source, "settings": run.settings,
        "certified_acc": {f"{sigma:g}": {f"{r:g}": run.certified_acc(sigma, r) for r in radii}
                          for sigma in run.results},
        "abstained": {f"{sigma:g}": run.abstained(sigma) for sigma in run.results},
        "seconds": {f"{sigma:g}": run.seconds[sigma] for sigma in run.results},
        "forwards_per_second": {f"{sigma:g}": run.forwards_per_second(sigma) for sigma in run.results},
        "files": written, "environment": environment(),
    })
    remove_stale(out, written)
    return written
