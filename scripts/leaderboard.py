#!/usr/bin/env python
"""The leaderboard: every zoo model (and any model you add) measured the same way.

    python scripts/leaderboard.py                            # every zoo model (cached rows kept)
    python scripts/leaderboard.py --only mnist-robust        # one row again
    python scripts/leaderboard.py --checkpoint my.pt         # a row for your checkpoint
    python scripts/leaderboard.py --model pkg.nets:Net --weights w.pt --dataset fashion-mnist --name mine

Per model, at its dataset's standard Linf eps (MNIST 0.3, Fashion-MNIST 0.1), each figure by
an advx command that the row records (so a row is reproducible alone):
  clean accuracy (all 10,000):   advx certify --method ibp --n 10000
  attacked and certified:        advx eval --suite strong --certify METHOD --n N (the same images)
  models trained for smoothing:  advx certify --method smoothing --sigma S (L2, radius 2 sigma)
METHOD is the strongest certifier (CROWN, then CROWN-IBP, then IBP) whose time, timed on 8
images, fits --certify-budget on N.
A row is cached under the SHA-256 of its model's file and the settings: rerunning after one
change recomputes one row. A model whose commands fail gets a row that says why. Writes
advx/zoo/leaderboard.json (zoo rows and yours), docs/leaderboard.md, and the README's table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE, STARTUP = 8, 15  # images a certifier is timed on; seconds a command takes to start, at most


def sources(args, zoo) -> list[dict]:
    """The models to measure: ``{"name", "zoo", "argv" (the model options), "file" (hashed)}``."""
    models = []
    if args.checkpoint or args.model:
        argv = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--model", args.model]
        argv += ["--weights", args.weights] if args.weights else []
        argv += ["--dataset", args.dataset] if args.dataset else []
        hashed = args.checkpoint or args.weights or (args.model if args.model.endswith(".pt2") else None)
        name = args.name or Path(args.checkpoint or args.weights or args.model).stem
        if hashed and not Path(hashed).is_file():
            raise FileNotFoundError(f"{'--checkpoint' if args.checkpoint else '--weights'}: no file at {hashed}")
        models.append({"name": name, "zoo": False, "argv": argv, "file": hashed, "card": None})
    if not models or args.only:
        for name in args.only or zoo.shipped():
            entry = zoo.card(name)
            models.append({"name": entry["name"], "zoo": True, "argv": ["--checkpoint", f"zoo:{entry['name']}"],
                           "file": None, "card": entry})
    return models


def run_cli(argv: list[str], out: Path, timeout: float | None = None) -> dict:
    """``advx ARGV --out OUT --quiet``; its report.json, or an error naming the failure."""
    try:
        done = subprocess.run([sys.executable, "-m", "advx", *argv, "--out", str(out), "--quiet"], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"advx {argv[0]} did not finish in {timeout:g} s") from None
    if done.returncode != 0:
        errors = [line for line in done.stderr.strip().splitlines() if not line.startswith("WARNING")]
        raise RuntimeError((errors or [f"advx {argv[0]} exited with {done.returncode}"])[-1][:300])
    return json.loads((out / "report.json").read_text())


def certifier(model: dict, eps: float, n: int, settings: dict, here: Path) -> str:
    """The strongest of CROWN, CROWN-IBP and IBP whose time on ``n`` images, extrapolated from
    ``PROBE`` images, fits ``settings["certify_budget"]`` (a probe that runs past its share of
    the budget is stopped)."""
    for method in ("crown", "crown-ibp"):
        try:
            report = run_cli(["certify", *model["argv"], "--method", method, "--eps", f"{eps:g}", "--n", str(PROBE)],
                             here / f"probe-{method}", timeout=STARTUP + settings["certify_budget"] * PROBE / n)
        except TimeoutError:
            continue
        if report["seconds"][f"{eps:g}"] / PROBE * n <= settings["certify_budget"]:
            return method
    return "ibp"


def measure(model: dict, sha: str | None, settings: dict, runs: Path, datasets) -> dict:
    """One row for ``model`` (its file's SHA-256 ``sha``); ``error`` set, not raised, when a command fails."""
    card = model["card"]
    row = {"name": model["name"], "zoo": model["zoo"], "seconds": {}, "commands": []}
    if card:
        from advx.cli.zoo import trained_for
        row.update(dataset=card["dataset"], model=card["model"], trained_for=trained_for(card), sha256=card["sha256"])
    else:
        row.update(trained_for="—", sha256=sha)
    here = runs / model["name"]
    try:
        dataset = row.get("dataset") or _dataset_of(model)
        eps = datasets.get_dataset(dataset).eps["inf"]
        row.update(dataset=dataset, eps=eps)
        began = time.perf_counter()
        clean = ["certify", *model["argv"], "--method", "ibp", "--eps", f"{eps:g}", "--n", str(settings["clean_n"])]
        report = run_cli(clean, here / "clean")
        row.update(clean_acc=report["clean_acc"], clean_n=report["settings"]["n"], model=report["model"],
                   ibp_certified_acc=report["certified_acc"][f"{eps:g}"])
        method = certifier(model, eps, settings["n"], settings, here)
        row["seconds"]["clean"] = round(time.perf_counter() - began, 1)
        attack = ["eval", *model["argv"], "--suite", "strong", "--eps", f"{eps:g}", "--n", str(settings["n"]),
                  "--certify", method]
        began = time.perf_counter()
        report = run_cli(attack, here / "eval")
        row["seconds"]["attack"] = round(time.perf_counter() - began, 1)
        row.update(robust_acc=report["robust_acc"][f"{eps:g}"], certified_acc=report["certified_acc"][f"{eps:g}"],
                   certifier=method, attacked_clean_acc=report["clean_acc"], n=report["settings"]["n"])
        row["commands"] = ["advx " + " ".join(clean), "advx " + " ".join(attack)]
        sigma = card and card["trained_for"].get("sigma")
        if sigma:
            radius = 2 * sigma
            smooth = ["certify", *model["argv"], "--method", "smoothing", "--sigma", f"{sigma:g}", "--eps",
                      f"{radius:g}", "--n", str(settings["smoothing_n"]), "--samples", str(settings["samples"])]
            began = time.perf_counter()
            report = run_cli(smooth, here / "smoothing")
            row["seconds"]["smoothing"] = round(time.perf_counter() - began, 1)
            row["smoothing"] = {"sigma": sigma, "radius": radius, "n": settings["smoothing_n"],
                                "certified_acc": report["certified_acc"][f"{sigma:g}"][f"{radius:g}"]}
            row["commands"].append("advx " + " ".join(smooth))
    except (RuntimeError, TimeoutError, OSError, KeyError, ValueError) as err:
        row["error"] = str(err) or type(err).__name__
    return row


def _dataset_of(model: dict) -> str:
    """The dataset of a model given by options: ``--dataset``, else its checkpoint's, else MNIST."""
    argv = model["argv"]
    if "--dataset" in argv:
        return argv[argv.index("--dataset") + 1]
    if "--checkpoint" in argv:
        from advx.checkpoint import load_checkpoint
        return load_checkpoint(argv[argv.index("--checkpoint") + 1])["dataset"]
    return "mnist"


def main(argv: list[str] | None = None) -> int:
    from advx import __version__, datasets, zoo
    from advx.files import check_output_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="Rows are cached by model hash.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None, help="comma-separated zoo names: measure only these again")
    p.add_argument("--checkpoint", default=None, help="add a row for this advx checkpoint")
    p.add_argument("--model", default=None, help="add a row for your model (MODULE:NAME or FILE.pt2)")
    p.add_argument("--weights", default=None, help="with --model MODULE:NAME: its state_dict")
    p.add_argument("--dataset", default=None, help="with --model: its dataset (default: mnist)")
    p.add_argument("--name", default=None, help="the row's name for --checkpoint/--model (default: the file's)")
    p.add_argument("--n", type=int, default=1000, help="images the strong suite attacks (default: 1,000)")
    p.add_argument("--clean-n", type=int, default=10000, help="images for the clean accuracy (and IBP's "
                                                             "certified one; default: all 10,000)")
    p.add_argument("--certify-budget", type=float, default=300.0, metavar="SECONDS",
                   help="the certifier of a row is the strongest (CROWN, CROWN-IBP, IBP) whose time on the "
                        "attacked images, timed on 8, fits this (default: 300)")
    p.add_argument("--force", action="store_true", help="measure again even where a cached row matches")
    p.add_argument("--json", default=str(zoo.LEADERBOARD), help="the leaderboard's JSON (default: %(default)s)")
    p.add_argument("--markdown", default="docs/leaderboard.md", help="default: %(default)s")
    p.add_argument("--runs", default="runs/leaderboard", help="the commands' outputs (default: %(default)s)")
    p.add_argument("--readme", default=str(ROOT / "README.md"),
                   help="the README whose leaderboard table is rewritten (default: this repository's; '' for none)")
    args = p.parse_args(argv)
    args.only = [n.strip() for n in args.only.split(",")] if args.only else None
    if args.model and args.checkpoint:
        p.error("--model and --checkpoint exclude each other")
    if not 1 <= args.n <= 10000 or not 1 <= args.clean_n <= 10000:
        p.error(f"--n and --clean-n must be from 1 to 10,000, got {args.n} and {args.clean_n}")
    if not args.certify_budget > 0:
        p.error(f"--certify-budget must be > 0 seconds, got {args.certify_budget:g}")
    try:
        models = sources(args, zoo)
        runs = check_output_dir(args.runs, "--runs")
    except Exception as err:  # an unknown zoo name, an unwritable folder: one line
        p.error(str(err))
    settings = {"n": args.n, "clean_n": args.clean_n, "certify_budget": args.certify_budget, "smoothing_n": 500,
                "samples": 1000, "advx": __version__}
    path = Path(args.json)
    board = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    cached = {(r["name"], r.get("sha256")): r for r in board.get("rows", []) if r.get("settings") == settings}
    rows = {r["name"]: r for r in board.get("rows", [])}
    for model in models:
        sha = (model["card"]["sha256"] if model["card"] else
               zoo.file_sha256(Path(model["file"])) if model["file"] else None)
        hit = cached.get((model["name"], sha))
        if hit and not args.force and not hit.get("error"):
            print(f"{model['name']}: cached (SHA-256 {str(sha)[:12]}...)")
            continue
        print(f"{model['name']}: measuring ...", flush=True)
        row = measure(model, sha, settings, runs, datasets)
        row.update(settings=settings, commit=_commit(), date=datetime.date.today().isoformat())
        rows[model["name"]] = row
        write(rows, settings, args)  # after each row: a stopped run keeps what it measured
        print(f"{model['name']}: " + (f"not measured: {row['error']}" if row.get("error") else
                                      f"clean {row['clean_acc']:.2%}, attacked {row['robust_acc']:.2%}, "
                                      f"certified {row['certified_acc']:.2%} ({sum(row['seconds'].values()):.0f} s)"))
    print(f"wrote {', '.join(write(rows, settings, args))}")
    return 0


def write(rows: dict, settings: dict, args) -> list[str]:
    """The board's JSON, its markdown and the README's table, from ``rows``; what was written."""
    from advx import __version__, zoo
    from advx.files import atomic_write
    from advx.report import leaderboard

    order = list(zoo.cards())
    board = {"generated": datetime.date.today().isoformat(), "advx": __version__, "commit": _commit(),
             "machine": "2 CPU cores", "command": "python scripts/leaderboard.py", "settings": settings,
             "rows": sorted(rows.values(), key=lambda r: (not r["zoo"], order.index(r["name"]) if r["name"] in order
                                                          else len(order), r["name"]))}
    with atomic_write(Path(args.json), "w") as f:
        f.write(json.dumps(board, indent=2) + "\n")
    with atomic_write(Path(args.markdown), "w") as f:
        f.write(leaderboard.markdown(board) + "\n")
    written = [args.json, args.markdown]
    readme = Path(args.readme) if args.readme else None
    text = readme.read_text() if readme and readme.is_file() else ""
    if leaderboard.README_START in text:
        with atomic_write(readme, "w") as f:
            f.write(leaderboard.replace_section(text, leaderboard.readme_section(board)))
        written.append(f"{readme}'s table")
    return written


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
