"""``advx zoo``: the models shipped with advx, each loadable as ``--checkpoint zoo:NAME``."""

from __future__ import annotations

import argparse
import json

from advx import zoo
from advx.report.common import format_table


def add(sub) -> None:
    z = sub.add_parser("zoo", help="list the trained models shipped with advx (load one as --checkpoint zoo:NAME)",
                       description="The model zoo: trained checkpoints shipped with advx, each with a card (what "
                                   "it was trained for, how, and its SHA-256, checked when it loads) and its "
                                   "leaderboard figures (scripts/leaderboard.py). Load one with --checkpoint "
                                   "zoo:NAME in any command, or advx.load_model('zoo:NAME').")
    z.add_argument("name", nargs="?", default=None, help="one entry: its whole card")
    z.add_argument("--json", action="store_true", help="print the cards (with their figures) as JSON")
    z.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    figures = zoo.figures()
    if args.name is not None:
        entry = zoo.card(args.name)
        entry["leaderboard"] = figures.get(entry["name"])
        print(json.dumps(entry, indent=2) if args.json else card_text(entry))
        return 0
    cards = zoo.cards()
    if args.json:
        print(json.dumps({name: {**c, "leaderboard": figures.get(name)} for name, c in cards.items()}, indent=2))
        return 0
    print(listing(cards, figures))
    return 0


def trained_for(entry: dict) -> str:
    """``"Linf 0.3, TRADES"``, ``"L2, Gaussian noise sigma 1.0"``, or ``"accuracy"``."""
    aim = entry["trained_for"]
    if aim.get("norm") is None:
        return f"clean accuracy ({aim['method']})"
    label = {"inf": "Linf", "2": "L2"}[aim["norm"]]
    budget = f"sigma {aim['sigma']:g}" if "sigma" in aim else f"eps {aim['eps']:g}"
    return f"{label} {budget}, {aim['method']}"


def row_figures(row: dict | None) -> str:
    if row is None:
        return "not yet on the leaderboard"
    if row.get("error"):
        return f"leaderboard: {row['error']}"
    return (f"clean {row['clean_acc']:.2%}; Linf {row['eps']:g}: attacked {row['robust_acc']:.2%}, certified "
            f"{row['certified_acc']:.2%} ({row['certifier']}, first {row['n']:,} images)")


def listing(cards: dict, figures: dict) -> str:
    ready = [n for n, e in cards.items() if e["sha256"] is not None]
    lines = [f"{len(ready)} models shipped; load one with --checkpoint zoo:NAME (advx zoo NAME: its card)", ""]
    width = max((len(n) for n in cards), default=4)
    for name, entry in cards.items():
        lines.append(f"zoo:{name:<{width}}  {entry['dataset']:<13}  {entry['model']:<5}  {trained_for(entry)}")
        figures_line = (row_figures(figures.get(name)) if name in ready else
                        f"not shipped in this version (python scripts/train_zoo.py --name {name} trains it)")
        lines.append(f"    {'':<{width}}  {figures_line}")
    return "\n".join(lines)


def card_text(entry: dict) -> str:
    train = entry["train"]
    if entry["sha256"] is None:
        return format_table([("dataset", entry["dataset"]), ("architecture", entry["model"]),
                             ("trained for", trained_for(entry)), ("shipped", "not in this version"),
                             ("train it", f"python scripts/train_zoo.py --name {entry['name']}")],
                            title=f"zoo:{entry['name']}")
    rows = [
        ("load", f"--checkpoint zoo:{entry['name']}  /  advx.load_model('zoo:{entry['name']}')"),
        ("dataset", entry["dataset"]),
        ("architecture", entry["model"]),
        ("trained for", trained_for(entry)),
        ("figures", row_figures(entry.get("leaderboard"))),
        ("file", f"{entry['file']} ({entry['bytes']:,} bytes)"),
        ("sha256", entry["sha256"]),
        ("trained by", train["command"]),
        ("seed", str(train["seed"])),
        ("training time", f"{train['seconds']:.0f} s ({train['machine']})"),
        ("code", f"commit {train['commit']}, {train['date']}"),
        ("training data", ", ".join(f"{k} md5 {v}" for k, v in train["data_md5"].items())),
        ("retrain", f"python scripts/train_zoo.py --name {entry['name']}"),
    ]
    if entry.get("leaderboard") and entry["leaderboard"].get("commands"):
        rows += [("measured by", c) for c in entry["leaderboard"]["commands"]]
    return format_table(rows, title=f"zoo:{entry['name']}")
