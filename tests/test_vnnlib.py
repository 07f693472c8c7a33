"""advx.vnnlib: VNN-LIB properties (box + disjunction of linear output constraints) and result files."""

from __future__ import annotations

import re

import pytest
import torch

from advx.validate import InputError
from advx.vnnlib import SUBSET, VERDICTS, Property, read_vnnlib, write_result, write_vnnlib

# The shape of VNN-COMP's mnistfc / eran properties: declarations, a box with comments, then the unsafe region.
MNISTFC = """; Mnist property with label: 7.
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)

(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)

; Input constraints:
(assert (<= X_0 0.03))
(assert (>= X_0 0.0))
(assert (and (<= X_1 .5) (>= X_1 -0.5)))   ; both bounds in one assert
(assert (<= 1e-3 X_2))
(assert (>= 2.5E-1 X_2))

; Output constraints:
(assert (or
    (and (>= Y_0 Y_2))
    (and (<= Y_1 0.5) (>= Y_1 Y_2))
))
"""


def _write(tmp_path, text: str, name: str = "prop.vnnlib"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_written_robustness_property_reads_back_exactly(tmp_path):
    g = torch.Generator().manual_seed(0)
    center = torch.rand(1, 3, 3, generator=g)
    lower, upper = (center - 0.1).clamp(0, 1), (center + 0.1).clamp(0, 1)
    path = tmp_path / "robust.vnnlib"
    write_vnnlib(path, lower, upper, label=2, num_outputs=4)
    prop = read_vnnlib(path, num_inputs=9, num_outputs=4)
    assert isinstance(prop, Property)
    assert prop.lower.dtype == prop.upper.dtype == torch.float32
    assert torch.equal(prop.lower, lower.flatten()) and torch.equal(prop.upper, upper.flatten())
    assert len(prop.disjuncts) == 3
    for (C, d), j in zip(prop.disjuncts, (0, 1, 3)):
        expected = torch.zeros(1, 4)
        expected[0, j], expected[0, 2] = -1.0, 1.0  # Y_j >= Y_2: -Y_j + Y_2 <= 0
        assert torch.equal(C, expected) and torch.equal(d, torch.zeros(1))
    y = torch.tensor([[0.0, 1.0, 5.0, 2.0], [0.0, 1.0, 5.0, 5.0], [9.0, 1.0, 5.0, 2.0]])
    assert prop.unsafe(y).tolist() == [False, True, True]  # a tie with the label is unsafe
    assert prop.contains(torch.stack([center, center + 0.2])).tolist() == [True, False]


def test_a_hand_written_mnistfc_property_with_comments_and_number_forms(tmp_path):
    prop = read_vnnlib(_write(tmp_path, MNISTFC), num_inputs=3, num_outputs=3)
    assert prop.lower.tolist() == pytest.approx([0.0, -0.5, 1e-3], abs=1e-7)
    assert prop.upper.tolist() == pytest.approx([0.03, 0.5, 0.25], abs=1e-7)
    assert (prop.lower.double() <= torch.tensor([0.0, -0.5, 1e-3], dtype=torch.float64)).all()  # rounded outward
    assert (prop.upper.double() >= torch.tensor([0.03, 0.5, 0.25], dtype=torch.float64)).all()
    (C0, d0), (C1, d1) = prop.disjuncts
    assert C0.tolist() == [[-1.0, 0.0, 1.0]] and d0.tolist() == [0.0]
    assert C1.tolist() == [[0.0, 1.0, 0.0], [0.0, -1.0, 1.0]] and d1.tolist() == [0.5, 0.0]


def test_top_level_assertions_on_y_are_anded_into_every_disjunct(tmp_path):
    text = MNISTFC + "(assert (>= Y_0 (- 2)))\n(assert (<= Y_1 Y_0))\n"
    (C0, d0), (C1, d1) = read_vnnlib(_write(tmp_path, text), 3, 3).disjuncts
    assert C0.tolist() == [[-1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]] and d0.tolist() == [2.0, 0.0, 0.0]
    assert C1.tolist()[:2] == C0.tolist()[:2] and len(C1) == 4
    single = MNISTFC.split("; Output")[0] + "(assert (>= Y_0 Y_1))\n"
    [(C, d)] = read_vnnlib(_write(tmp_path, single, "single.vnnlib"), 3, 3).disjuncts
    assert C.tolist() == [[-1.0, 1.0, 0.0]] and d.tolist() == [0.0]


HEADER = """(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (<= X_0 1))
(assert (>= X_0 0))
(assert (<= X_1 1))
(assert (>= X_1 0))
"""  # 8 lines: what follows is on line 10 (after one blank line)


def _outside(construct: str) -> str:
    return f"'{construct}' is outside the supported VNN-LIB subset ({SUBSET})"


@pytest.mark.parametrize("line, message", [
    ("(assert (<= (* 2 Y_0) Y_1))", _outside("(* 2 Y_0)")),
    ("(assert (or (and (<= X_0 0.5)) (and (>= Y_0 Y_1))))",
     f"'(<= X_0 0.5)' inside (or ...) is outside the supported VNN-LIB subset ({SUBSET}, inputs bounded by a box)"),
    ("(assert (not (<= Y_0 Y_1)))", _outside("(not (<= Y_0 Y_1))")),
    ("(declare-fun f () Real)", _outside("(declare-fun f () Real)")),
    ("(declare-const Y_2 Int)", _outside("(declare-const Y_2 Int)")),
    ("(assert (< Y_0 Y_1))", _outside("(< Y_0 Y_1)")),
    ("(assert (<= X_0 X_1))", _outside("(<= X_0 X_1)")),
    ("(assert (<= X_0 Y_1))", _outside("(<= X_0 Y_1)")),
    ("(assert (<= 1 2))", _outside("(<= 1 2)")),
    ("(assert (<= Z_0 Y_1))", _outside("Z_0")),
    ("(assert (<= Y_0 Y_1 Y_0))", _outside("(<= Y_0 Y_1 Y_0)")),
    ("(assert (or (and (<= Y_0 0) (or (>= Y_1 0)))))", _outside("(or (>= Y_1 0))")),
    ("(declare-const Y_2 Real)", "'Y_2' is outside the 2 outputs (Y_0 to Y_1)"),
    ("(declare-const X_5 Real)", "'X_5' is outside the 2 inputs (X_0 to X_1)"),
    ("(assert (<= X_0 0.5)", "'(' is never closed"),
    ("(assert (<= X_0 0.5)))", "')' closes nothing"),
])
def test_each_construct_outside_the_subset_is_one_error_with_its_line(line, message, tmp_path):
    path = _write(tmp_path, HEADER + "\n" + line + "\n(assert (>= Y_0 Y_1))\n")
    with pytest.raises(InputError, match="^" + re.escape(f"{path} line 10: {message}") + "$"):
        read_vnnlib(path, num_inputs=2, num_outputs=2)


def test_an_undeclared_variable_is_named_with_its_line(tmp_path):
    text = HEADER.replace("(declare-const Y_1 Real)\n", "") + "(assert (or\n  (and (>= Y_1 Y_0))))\n"
    path = _write(tmp_path, text)
    with pytest.raises(InputError, match="^" + re.escape(
            f"{path} line 9: unknown variable 'Y_1' (declare it first: (declare-const Y_1 Real))") + "$"):
        read_vnnlib(path, num_inputs=2, num_outputs=2)


@pytest.mark.parametrize("box, message", [
    ("(assert (<= X_0 0.2))\n(assert (>= X_0 0.5))",
     "the input box is empty: X_0 has lower bound 0.5 > upper bound 0.2"),
    ("(assert (<= X_0 0.2))", "X_0 has no lower bound (every input needs (assert (>= X_0 c)) and (assert (<= X_0 c)))"),
    ("", "X_0 has no lower and no upper bound (every input needs (assert (>= X_0 c)) and (assert (<= X_0 c)))"),
])
def test_an_empty_or_open_box_names_the_input(box, message, tmp_path):
    text = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n" + box + "\n(assert (>= Y_0 0))\n"
    path = _write(tmp_path, text)
    with pytest.raises(InputError, match="^" + re.escape(f"{path}: {message}") + "$"):
        read_vnnlib(path, num_inputs=1, num_outputs=1)


def test_a_property_without_output_constraints_or_file_is_refused(tmp_path):
    path = _write(tmp_path, HEADER)
    with pytest.raises(InputError, match=re.escape(f"{path}: it asserts nothing on the outputs Y")):
        read_vnnlib(path, 2, 2)
    with pytest.raises(InputError, match=re.escape(f"property: no file at {tmp_path / 'nope.vnnlib'}")):
        read_vnnlib(tmp_path / "nope.vnnlib", 2, 2)
    with pytest.raises(InputError, match="num_inputs must be >= 1, got 0"):
        read_vnnlib(path, 0, 2)


def _parse_result(text: str):
    verdict, _, rest = text.partition("\n")
    pairs = re.findall(r"\(([XY])_(\d+) ([^()\s]+)\)", rest)
    return verdict, {(kind, int(i)): float(v) for kind, i, v in pairs}


def test_write_result_writes_the_vnn_comp_format_exactly(tmp_path):
    x = torch.tensor([0.1, -0.25, 1 / 3])
    y = torch.tensor([1e-8, 2.5])
    path = tmp_path / "out" / "result.txt"
    write_result(path, "sat", (x, y))
    text = path.read_text()
    assert text.startswith("sat\n((X_0 ") and text.endswith(")\n")
    assert text.splitlines()[2].startswith(" (X_1 ") and text.count("\n") == 1 + 5
    verdict, values = _parse_result(text)
    assert verdict == "sat"
    assert [values["X", i] for i in range(3)] == x.tolist() and [values["Y", j] for j in range(2)] == y.tolist()
    for verdict in ("unsat", "timeout", "unknown"):
        write_result(path, verdict)
        assert path.read_text() == verdict + "\n"
    assert [p.name for p in path.parent.iterdir()] == ["result.txt"]  # no temp file left behind
    assert VERDICTS == ("unsat", "sat", "timeout", "unknown")


@pytest.mark.parametrize("verdict, counterexample, message", [
    ("safe", None, "verdict must be one of ['unsat', 'sat', 'timeout', 'unknown'], got 'safe'"),
    ("sat", None, "counterexample must be given with verdict 'sat' and only then, got verdict 'sat' and no"),
    ("unsat", (torch.zeros(1), torch.zeros(1)), "counterexample must be given with verdict 'sat' and only then"),
    ("sat", (torch.tensor([float("nan")]), torch.zeros(1)), "counterexample must hold finite, non-empty x and y"),
])
def test_write_result_refuses_a_bad_verdict_or_counterexample(verdict, counterexample, message, tmp_path):
    with pytest.raises(InputError, match=re.escape(message)):
        write_result(tmp_path / "r.txt", verdict, counterexample)
    assert not (tmp_path / "r.txt").exists()


def test_write_vnnlib_refuses_a_bad_box_or_label(tmp_path):
    with pytest.raises(InputError, match="lower and upper must be finite with lower <= upper everywhere"):
        write_vnnlib(tmp_path / "p.vnnlib", torch.ones(3), torch.zeros(3), label=0, num_outputs=2)
    with pytest.raises(InputError, match=re.escape("label must be <= 1, got 2")):
        write_vnnlib(tmp_path / "p.vnnlib", torch.zeros(3), torch.ones(3), label=2, num_outputs=2)
