"""The model zoo: trained advx checkpoints shipped inside the package, one name to load.

``zoo:NAME`` goes wherever a checkpoint path goes (``advx eval --checkpoint zoo:mnist-robust``,
``advx.load_model("zoo:mnist-robust")``). Each entry has a **card** in ``cards.json``: the
dataset, the architecture, what it was trained for (kind, norm, eps), the file and its
SHA-256, and how it was made (the command, seed, the training data's checksums, the training
time, the commit). Loading an entry recomputes the file's SHA-256 and refuses a file that does
not match its card. Its figures (clean, attacked, certified) are the leaderboard's
(``leaderboard.json`` here, written by ``scripts/leaderboard.py``), not the card's: one source.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from advx.validate import AdvxError

HERE = Path(__file__).parent
CARDS = HERE / "cards.json"
LEADERBOARD = HERE / "leaderboard.json"
PREFIX = "zoo:"


class ZooError(AdvxError, ValueError):
    """An unknown zoo name, or a zoo file that is missing or does not match its card."""


def cards() -> dict[str, dict]:
    """Every entry's card, by name, in the order of ``cards.json``."""
    return json.loads(CARDS.read_text())


def card(name: str) -> dict:
    """The card of ``name`` (``zoo:`` optional); an unknown name lists the known ones."""
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    known = cards()
    if name not in known:
        raise ZooError(f"zoo: no model named {name!r}; the zoo has {', '.join(known) or 'none'} "
                       f"(`advx zoo` lists them)")
    return {"name": name, **known[name]}


def is_zoo(spec) -> bool:
    """Whether a checkpoint argument names a zoo entry (``zoo:NAME``)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve(spec: str) -> Path:
    """The file of the zoo entry ``spec`` (``zoo:NAME``), its SHA-256 checked against its card."""
    entry = card(spec)
    path = HERE / entry["file"]
    if entry["sha256"] is None:
        raise ZooError(f"zoo: {entry['name']} is not shipped in this version of advx (its card has its recipe: "
                       f"python scripts/train_zoo.py --name {entry['name']} trains it)")
    if not path.is_file():
        raise ZooError(f"zoo: {entry['name']}'s file {path} is missing (reinstall advx, or retrain it: "
                       f"python scripts/train_zoo.py --name {entry['name']})")
    found = file_sha256(path)
    if found != entry["sha256"]:
        raise ZooError(f"zoo: {path} does not match its card (SHA-256 {found[:16]}..., the card says "
                       f"{entry['sha256'][:16]}...): refusing to load {entry['name']}; reinstall advx")
    return path


def shipped() -> list[str]:
    """The names whose weights ship with this version (a card may hold a recipe only)."""
    return [name for name, entry in cards().items() if entry["sha256"] is not None]


def figures() -> dict:
    """The leaderboard's rows by zoo name (empty before the first run)."""
    if not LEADERBOARD.is_file():
        return {}
    return {row["name"]: row for row in json.loads(LEADERBOARD.read_text())["rows"] if row.get("zoo")}
