"""``advx verify MODEL.onnx PROPERTY.vnnlib``: the verification competitions' question, answered
by branch and bound, in their formats (ONNX network, VNN-LIB property, result file)."""

from __future__ import annotations

import argparse

import torch

from advx.cli.common import CLIError
from advx.files import check_output_file
from advx.onnx_models import load_onnx
from advx.verify import verify_property
from advx.vnnlib import read_vnnlib, write_result


def add(sub) -> None:
    v = sub.add_parser("verify", help="verify a VNN-LIB property of an ONNX network (sat / unsat / timeout)",
                       description="Can an input in the property's box reach its unsafe output region? "
                                   "unsat: proved impossible (α-CROWN, then branch and bound over ReLU splits); "
                                   "sat: a counterexample, confirmed by the network's own forward pass; "
                                   "timeout: no answer within --timeout. ONNX networks of Gemm/MatMul+Add, "
                                   "Conv, Relu, Flatten/Reshape, pooling and Sub/Div normalisation "
                                   "(export with opset_version <= 17). Writes the VNN-COMP result file.")
    v.add_argument("model", help="the network, an .onnx file")
    v.add_argument("property", help="the property, a .vnnlib file")
    v.add_argument("--timeout", type=float, default=300.0, help="seconds before the answer is timeout (default: 300)")
    v.add_argument("--milp", type=float, default=0.0, metavar="SHARE",
                   help="the share of --timeout kept for an exact MILP (HiGHS through SciPy) when branch "
                        "and bound has not answered; for small networks (default: 0)")
    v.add_argument("--out", default=None, help="write the result file here (VNN-COMP format), e.g. result.txt")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise CLIError(f"--timeout must be > 0 seconds, got {args.timeout:g}")
    if not 0 <= args.milp < 1:
        raise CLIError(f"--milp must be a share of --timeout in [0, 1), got {args.milp:g}")
    out = check_output_file(args.out, "--out") if args.out is not None else None
    model = load_onnx(args.model)
    inputs = 1
    for d in model.input_shape:
        inputs *= d
    with torch.no_grad():
        outputs = model(torch.zeros(1, *model.input_shape)).shape[-1]
    prop = read_vnnlib(args.property, num_inputs=inputs, num_outputs=outputs)
    result, counterexample, seconds = verify_property(model, model.input_shape, prop, timeout=args.timeout,
                                                        milp=args.milp)
    print(f"{result}  ({seconds:.2f} s; {args.model}, {args.property})")
    if counterexample is not None:
        x, y = counterexample
        print(f"counterexample: x in the box, outputs {[round(v, 6) for v in y.tolist()]}")
    if out is not None:
        write_result(out, result, counterexample)
        print(f"wrote {out}")
    return 0

