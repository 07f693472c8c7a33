"""The layout of docs/architecture.md, held against the code: read from the source's own
imports (those inside functions too), so a room that moves to the wrong floor fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "advx"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """The advx modules ``path`` imports: ``from advx.x import name`` is advx.x.name when that
    is a module, else advx.x; ``import advx.x`` is advx.x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("advx")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("advx"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found & set(MODULES)


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_module_imports_itself_through_others():
    """No circle of imports (the package's face, advx/__init__.py, aside: it imports every room)."""
    cycles = sorted(name for name in GRAPH if name != "advx" and name in _reach(name))
    assert not cycles, f"modules in an import cycle: {cycles}"


@pytest.mark.parametrize("room, never", [
    ("advx.train", ("advx.evaluate", "advx.attacks", "advx.sharded", "advx.report", "advx.certify")),
    ("advx.certify", ("advx.report", "advx.figures", "advx.evaluate", "advx.sanity", "advx.attacks",
                      "advx.sharded", "advx.cli")),
    ("advx.distributed", ("advx.evaluate", "advx.dataset_attack", "advx.sharded", "advx.train")),
    ("advx.report", ("advx.cli",)),
    ("advx.sharded", ("advx.cli",)),
    ("advx.subject", ("advx.cli",)),
])
def test_a_room_stands_below_what_it_must_not_use(room, never):
    reached = set().union(*(_reach(name) | {name} for name in MODULES if name == room or name.startswith(room + ".")))
    bad = sorted(name for name in reached if any(name == n or name.startswith(n + ".") for n in never))
    assert not bad, f"{room} reaches {bad}"


def test_the_library_never_imports_the_command_line():
    users = sorted(name for name, imports in GRAPH.items()
                   if not name.startswith("advx.cli") and name != "advx.__main__"
                   and any(i.startswith("advx.cli") for i in imports))
    assert not users, users


def test_only_norms_knows_a_norm_by_its_name():
    comparison = re.compile(r"""[!=]=\s*["'](inf|0|1|2)["']""")
    offenders = [f"{name}:{n}" for name, path in MODULES.items() if not name.startswith("advx.norms")
                 for n, line in enumerate(path.read_text().splitlines(), 1) if comparison.search(line)]
    assert not offenders, offenders


def test_every_room_can_be_read_in_one_sitting():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > 310}
    assert not long, long
