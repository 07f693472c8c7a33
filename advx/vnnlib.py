"""VNN-LIB properties (the subset VNN-COMP's classification benchmarks use) and result files.

A property names inputs ``X_i`` and outputs ``Y_j`` (``declare-const``), bounds every input
by a box, and asserts the *unsafe* region over the outputs: the network is safe on the box
when no input in it reaches that region. ``read_vnnlib`` reads it as a ``Property``: the box
``lower``/``upper`` and the unsafe region as an OR over ``disjuncts`` of (AND over rows:
``C @ Y <= d``). Anything else (a product, a ``not``, an OR over inputs, a ``declare-fun``) is
one ``InputError`` with its line. ``write_vnnlib`` writes a robustness property,
``write_result`` the VNN-COMP result file (``sat`` with its counterexample, ``unsat``, ...).

    >>> prop = read_vnnlib("prop_7_0.03.vnnlib", num_inputs=784, num_outputs=10)
    >>> prop.unsafe(model(x).reshape(1, -1))            # tensor([False])
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from advx.files import atomic_write
from advx.validate import InputError, check_number

SUBSET = "linear comparisons of X_i/Y_j with constants"
VERDICTS = ("unsat", "sat", "timeout", "unknown")
_TOKEN = re.compile(r"\s+|;[^\n]*|[()]|[^\s();]+")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_VARIABLE = re.compile(r"([XY])_(\d+)")


@dataclass(frozen=True, eq=False)
class Property:
    """A VNN-LIB property: the input box ``lower <= x <= upper`` (float32 [num_inputs], rounded
    outward from the file's numbers) and the unsafe region, the OR over ``disjuncts`` of the AND
    of the rows of ``C @ y <= d`` (each ``(C, d)``: float32 [m, num_outputs] and [m], ``d``
    rounded up). A counterexample is an ``x`` in the box whose output ``y`` is unsafe."""

    lower: torch.Tensor
    upper: torch.Tensor
    disjuncts: list

    def unsafe(self, y: torch.Tensor) -> torch.Tensor:
        """Whether each output row of ``y`` [N, num_outputs] lies in the unsafe region: bool [N]."""
        y = y.reshape(-1, self.disjuncts[0][0].shape[1]).to(torch.float32)
        return torch.stack([(y @ C.T <= d).all(dim=1) for C, d in self.disjuncts]).any(dim=0)

    def contains(self, x: torch.Tensor) -> torch.Tensor:
        """Whether each input row of ``x`` [N, num_inputs] (any shape per row) lies in the box: bool [N]."""
        x = x.reshape(-1, self.lower.numel())
        return ((x >= self.lower) & (x <= self.upper)).all(dim=1)


class _Node(NamedTuple):
    line: int
    value: object  # an atom (str) or a list of _Node


def read_vnnlib(path: str | os.PathLike, num_inputs: int, num_outputs: int) -> Property:
    """The property in the VNN-LIB file ``path`` for a network of ``num_inputs`` inputs (the
    flattened input) and ``num_outputs`` outputs. Raises ``InputError`` naming the line of
    anything outside the supported subset, an unknown variable, or a missing or empty bound."""
    num_inputs = check_number("num_inputs", num_inputs, minimum=1, integer=True)
    num_outputs = check_number("num_outputs", num_outputs, minimum=1, integer=True)
    return _Reader(Path(path), {"X": num_inputs, "Y": num_outputs}).read()


class _Reader:
    def __init__(self, path: Path, sizes: dict) -> None:
        self.path, self.sizes, self.declared = path, sizes, set()
        self.lower = torch.full((sizes["X"],), -float("inf"), dtype=torch.float64)
        self.upper = torch.full((sizes["X"],), float("inf"), dtype=torch.float64)
        self.rows: list = []  # the AND of top-level assertions on Y: (coefficients, d) rows
        self.ors: list = []  # each (assert (or ...)): a list of conjunctions of rows

    def error(self, node: _Node, what: str = "") -> InputError:
        return InputError(f"{self.path} line {node.line}: " + (what or f"'{_text(node)}' is outside the "
                                                                        f"supported VNN-LIB subset ({SUBSET})"))

    def read(self) -> Property:
        if not self.path.is_file():
            raise InputError(f"property: no file at {self.path}" if not self.path.is_dir()
                             else f"property: {self.path} is a folder, expected a .vnnlib file")
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"property: cannot read {self.path} as text ({err})") from None
        for form in self.parse(text):
            head = form.value[0].value if isinstance(form.value, list) and form.value else None
            if head == "declare-const" and len(form.value) == 3 and form.value[2].value == "Real":
                self.declare(form.value[1])
            elif head == "assert" and len(form.value) == 2:
                self.assertion(form.value[1])
            else:
                raise self.error(form)
        return Property(*self.box(), self.disjuncts())

    def parse(self, text: str) -> list[_Node]:
        """The top-level s-expressions of ``text``, each node with the line it starts on."""
        stack, opened, line = [[]], [], 1
        for match in _TOKEN.finditer(text):
            token = match.group()
            if token[0].isspace() or token[0] == ";":
                line += token.count("\n")
            elif token == "(":
                stack.append([])
                opened.append(line)
            elif token == ")":
                if len(stack) == 1:
                    raise self.error(_Node(line, ")"), "')' closes nothing")
                items = stack.pop()
                stack[-1].append(_Node(opened.pop(), items))
            else:
                stack[-1].append(_Node(line, token))
        if opened:
            raise self.error(_Node(opened[-1], "("), "'(' is never closed")
        return stack[0]

    def declare(self, node: _Node) -> None:
        kind, index = self.variable(node, declaring=True)
        self.declared.add((kind, index))

    def variable(self, node: _Node, declaring: bool = False) -> tuple[str, int]:
        found = _VARIABLE.fullmatch(node.value) if isinstance(node.value, str) else None
        if found is None:
            raise self.error(node)
        kind, index, size = found.group(1), int(found.group(2)), self.sizes[found.group(1)]
        if index >= size:
            raise self.error(node, f"'{node.value}' is outside the {size} {'inputs' if kind == 'X' else 'outputs'} "
                                   f"({kind}_0 to {kind}_{size - 1})")
        if not declaring and (kind, index) not in self.declared:
            raise self.error(node, f"unknown variable '{node.value}' (declare it first: "
                                   f"(declare-const {node.value} Real))")
        return kind, index

    def assertion(self, node: _Node) -> None:
        head = node.value[0].value if isinstance(node.value, list) and node.value else None
        if head == "or":
            disjuncts = []
            for part in node.value[1:]:
                atoms = self.conjunction(part)
                x_atom = next((a for a, kind, _ in atoms if kind == "X"), None)
                if x_atom is not None:  # a disjunction over the inputs: not a box
                    raise self.error(x_atom, f"'{_text(x_atom)}' inside (or ...) is outside the supported "
                                             f"VNN-LIB subset ({SUBSET}, inputs bounded by a box)")
                disjuncts.append([row for _, _, row in atoms])
            if not disjuncts:
                raise self.error(node)
            self.ors.append(disjuncts)
            return
        for atom, kind, row in self.conjunction(node):
            if kind == "Y":
                self.rows.append(row)
            else:
                self.bound(atom, row)

    def conjunction(self, node: _Node) -> list:
        """An atom or an (and ...) of atoms (nested ands flattened): [(atom, "X"/"Y", row)]."""
        if isinstance(node.value, list) and node.value and node.value[0].value == "and":
            return [atom for part in node.value[1:] for atom in self.conjunction(part)]
        return [(node, *self.comparison(node))]

    def comparison(self, node: _Node) -> tuple[str, tuple[dict, float]]:
        """``(<= a b)`` or ``(>= a b)`` as ``sum(coefficients[v] * v) <= d``, and which of X, Y it is on."""
        if not (isinstance(node.value, list) and len(node.value) == 3 and node.value[0].value in ("<=", ">=")):
            raise self.error(node)
        left, right = node.value[1:] if node.value[0].value == "<=" else node.value[:0:-1]
        coefficients, d = {}, 0.0
        for operand, sign in ((left, 1.0), (right, -1.0)):
            number = self.number(operand)
            if number is not None:
                d -= sign * number
            else:
                key = self.variable(operand)
                coefficients[key] = coefficients.get(key, 0.0) + sign
        kinds = {kind for kind, _ in coefficients}
        if len(kinds) != 1 or (kinds == {"X"} and (len(coefficients) != 1 or 0.0 in coefficients.values())):
            raise self.error(node)  # X with Y, two numbers, X_i against X_j
        return kinds.pop(), (coefficients, d)

    def number(self, node: _Node) -> float | None:
        value = node.value
        if isinstance(value, list) and len(value) == 2 and value[0].value == "-":  # (- 0.5)
            inner = self.number(value[1])
            return None if inner is None else -inner
        if isinstance(value, str) and _NUMBER.fullmatch(value):
            return float(value)
        if isinstance(value, str) and _VARIABLE.fullmatch(value):
            return None
        raise self.error(node)

    def bound(self, atom: _Node, row: tuple[dict, float]) -> None:
        ((_, index), coefficient), d = next(iter(row[0].items())), row[1]
        if coefficient > 0:  # X_i <= d
            self.upper[index] = min(self.upper[index].item(), d)
        else:  # -X_i <= d: X_i >= -d (+ 0.0: no -0.0)
            self.lower[index] = max(self.lower[index].item(), -d + 0.0)

    def box(self) -> tuple[torch.Tensor, torch.Tensor]:
        for i in range(self.sizes["X"]):
            lo, hi = self.lower[i].item(), self.upper[i].item()
            missing = [side for side, v in (("lower", lo), ("upper", hi)) if abs(v) == float("inf")]
            if missing:
                raise InputError(f"{self.path}: X_{i} has no {' and no '.join(missing)} bound "
                                 f"(every input needs (assert (>= X_{i} c)) and (assert (<= X_{i} c)))")
            if lo > hi:
                raise InputError(f"{self.path}: the input box is empty: X_{i} has lower bound {lo!r} > "
                                 f"upper bound {hi!r}")
        return _rounded(self.lower, up=False), _rounded(self.upper, up=True)

    def disjuncts(self) -> list:
        if not self.rows and not self.ors:
            raise InputError(f"{self.path}: it asserts nothing on the outputs Y (expected e.g. "
                             f"(assert (or (and (>= Y_1 Y_0)) ...)))")
        result = []
        for choice in itertools.product(*self.ors):
            rows = self.rows + [row for conjunction in choice for row in conjunction]
            C = torch.zeros(len(rows), self.sizes["Y"], dtype=torch.float32)
            for r, (coefficients, _) in enumerate(rows):
                for (_, j), value in coefficients.items():
                    C[r, j] = value
            d = _rounded(torch.tensor([d for _, d in rows], dtype=torch.float64), up=True)
            result.append((C, d))
        return result


def _text(node: _Node) -> str:
    """The s-expression as written (whitespace normalised), cut at 80 characters."""
    text = node.value if isinstance(node.value, str) else "(" + " ".join(_text(n) for n in node.value) + ")"
    return text if len(text) <= 80 else text[:77] + "..."


def _rounded(values: torch.Tensor, *, up: bool) -> torch.Tensor:
    """float64 -> float32, rounded up (``up``) or down, so that the box or region only grows."""
    rounded = values.float()
    off = rounded.double() < values if up else rounded.double() > values
    limit = torch.full_like(rounded, float("inf") if up else -float("inf"))
    return torch.where(off, torch.nextafter(rounded, limit), rounded)


def write_vnnlib(path: str | os.PathLike, lower: torch.Tensor, upper: torch.Tensor, label: int,
                 num_outputs: int) -> None:
    """Write the robustness property of class ``label``: every input ``lower <= X <= upper``
    (flattened, float numbers written exactly) and the unsafe region "some other class
    ``Y_j >= Y_label``". Written atomically."""
    num_outputs = check_number("num_outputs", num_outputs, minimum=2, integer=True)
    label = check_number("label", label, minimum=0, maximum=num_outputs - 1, integer=True)
    lower, upper = (torch.as_tensor(v).detach().double().reshape(-1).cpu() for v in (lower, upper))
    if lower.shape != upper.shape:
        raise InputError(f"lower and upper must hold as many numbers, got {lower.numel()} and {upper.numel()}")
    if not (torch.isfinite(lower).all() and torch.isfinite(upper).all()) or (lower > upper).any():
        raise InputError("lower and upper must be finite with lower <= upper everywhere")
    lines = [f"; robustness of class {label}: {lower.numel()} inputs, {num_outputs} outputs"]
    lines += [f"(declare-const X_{i} Real)" for i in range(lower.numel())]
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_outputs)]
    for i, (lo, hi) in enumerate(zip(lower.tolist(), upper.tolist())):
        lines += [f"(assert (<= X_{i} {hi!r}))", f"(assert (>= X_{i} {lo!r}))"]
    lines.append("; unsafe: another class scores at least as high as the label")
    lines.append("(assert (or")
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(num_outputs) if j != label]
    lines.append("))")
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_result(path: str | os.PathLike, verdict: str, counterexample=None) -> None:
    """Write a VNN-COMP result file: ``verdict`` (one of ``VERDICTS``) on the first line; for
    ``sat``, the counterexample ``(x, y)`` (flat tensors: the input and the network's output)
    as ``((X_0 v)\\n (X_1 v)\\n ... (Y_0 w) ...)``, numbers written exactly. Written atomically."""
    if verdict not in VERDICTS:
        raise InputError(f"verdict must be one of {list(VERDICTS)}, got {verdict!r}")
    if (verdict == "sat") != (counterexample is not None):
        raise InputError(f"counterexample must be given with verdict 'sat' and only then, got verdict "
                         f"{verdict!r} and {'a' if counterexample is not None else 'no'} counterexample")
    text = verdict + "\n"
    if counterexample is not None:
        if not (isinstance(counterexample, (tuple, list)) and len(counterexample) == 2):
            raise InputError(f"counterexample must be a pair (x, y) of tensors, got {type(counterexample).__name__}")
        x, y = (torch.as_tensor(v).detach().double().reshape(-1).cpu() for v in counterexample)
        if not (torch.isfinite(x).all() and torch.isfinite(y).all()) or not x.numel() or not y.numel():
            raise InputError("counterexample must hold finite, non-empty x and y")
        entries = [f"(X_{i} {v!r})" for i, v in enumerate(x.tolist())]
        entries += [f"(Y_{j} {v!r})" for j, v in enumerate(y.tolist())]
        text += "(" + "\n ".join(entries) + ")\n"
    with atomic_write(path, "w") as f:
        f.write(text)
