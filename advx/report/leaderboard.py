"""The leaderboard's tables, rendered from its JSON (``scripts/leaderboard.py`` writes both):
``docs/leaderboard.md`` whole, and the README's table between its two markers. Neither is
edited by hand: the tests check that the README's table is this rendering of the JSON."""

from __future__ import annotations

README_START = "<!-- leaderboard:start (scripts/leaderboard.py writes this table) -->"
README_END = "<!-- leaderboard:end -->"


def percent(value) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def table(rows: list[dict], *, brief: bool = False) -> list[str]:
    """Markdown lines: one row per model; ``brief`` leaves out the settings columns."""
    head = ["model", "dataset, Linf ε", "trained for", "clean", "attacked (strong suite)", "certified"]
    if not brief:
        head += ["certifier", "smoothing, certified (L2)", "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        name = f"`zoo:{row['name']}`" if row.get("zoo") else f"`{row['name']}`"
        where = f"{row.get('dataset', '?')}, {row['eps']:g}" if row.get("eps") is not None else row.get("dataset", "?")
        if row.get("error"):
            cells = [name, where, row.get("trained_for", "—"), f"not measured: {row['error']}"]
            cells += [""] * (len(head) - len(cells))
        else:
            cells = [name, where, row.get("trained_for", "—"), percent(row["clean_acc"]),
                     f"**{percent(row['robust_acc'])}**", percent(row.get("certified_acc"))]
            if not brief:
                smooth = row.get("smoothing")
                cells += [row.get("certifier", "—"),
                          "—" if not smooth else f"{percent(smooth['certified_acc'])} at r = {smooth['radius']:g} "
                                                 f"(σ = {smooth['sigma']:g})",
                          f"{sum(row['seconds'].values()):.0f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def by_dataset(board: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in board["rows"]:
        groups.setdefault(row.get("dataset", "?"), []).append(row)
    return groups


def markdown(board: dict) -> str:
    """``docs/leaderboard.md``: every row, with how each figure was measured."""
    s = board["settings"]
    lines = ["# Leaderboard", "",
             f"Generated {board['generated']} by `{board['command']}` (advx {board['advx']}, code of "
             f"{board['commit']}; {board['machine']}). Do not edit: rerun the command.", "",
             f"Each model is measured the same way, at its dataset's standard Linf ε (MNIST 0.3, "
             f"Fashion-MNIST 0.1). **clean**: accuracy on the first {s['clean_n']:,} test images (`advx certify "
             f"--method ibp`). **attacked** and **certified**: on the first {s['n']:,}, by one command (`advx "
             f"eval --suite strong --certify METHOD`): the strong suite's robust accuracy (an upper bound) and "
             f"the share proved robust (a lower bound); the robust accuracy of those images lies between them. "
             f"The certifier is the strongest of CROWN, CROWN-IBP and IBP whose time on those images, timed on "
             f"8, fits {s['certify_budget']:g} s. Models trained for randomized smoothing also get the smoothed "
             f"classifier's certified L2 accuracy at radius 2σ (`advx certify --method smoothing`, first "
             f"{s['smoothing_n']:,} images, {s['samples']:,} noise samples). Each row's commands are in "
             f"`advx/zoo/leaderboard.json` and in `advx zoo NAME`. Measuring every row took "
             f"{sum(sum(r['seconds'].values()) for r in board['rows']):.0f} s in all.", ""]
    for dataset, rows in by_dataset(board).items():
        title = {"mnist": "MNIST, Linf ε = 0.3", "fashion-mnist": "Fashion-MNIST, Linf ε = 0.1"}.get(dataset, dataset)
        lines += [f"## {title}", "", *table(rows), ""]
    return "\n".join(lines)


def readme_section(board: dict) -> str:
    """The README's table: the zoo's rows, brief, between the markers."""
    rows = [r for r in board["rows"] if r.get("zoo")]
    return "\n".join([README_START, *table(rows, brief=True), README_END])


def replace_section(text: str, section: str) -> str:
    """``text`` with the part between the markers (inclusive) replaced by ``section``."""
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    return text[:start] + section + text[end:]
