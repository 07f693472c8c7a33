"""advx verify on a VNN-COMP benchmark folder, side by side with a published results file.

A VNN-COMP benchmark is a folder of ONNX networks and VNN-LIB properties with an
``*_instances.csv`` (network, property, timeout per line). This runs advx's verifier on
each instance (in this process, one after the other), writes ``results.csv`` in the
competition's columns, and, given the competition's published results of another verifier
(``--published``, its CSV: benchmark, network, property, prepare time, result, run time),
counts what each solved and lists every disagreement. A disagreement where advx says sat
is settled by its counterexample, which advx has checked with the network's own forward
pass; one where advx says unsat against another tool's sat is a wrong answer of one of them.

    python scripts/bench_vnncomp.py --benchmark ../vnncomp2021/benchmarks/mnistfc \\
        --published ../vnncomp2021_results/results_csv/a-b-CROWN.csv --out runs/vnncomp-mnistfc

The benchmark files are not part of advx (github.com/stanleybak/vnncomp2021, and the
results in github.com/stanleybak/vnncomp2021_results).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

from advx.files import atomic_write, check_output_dir
from advx.onnx_models import load_onnx
from advx.progress import bar as progress_bar
from advx.verify import verify_property
from advx.vnnlib import read_vnnlib, write_result

SOLVED = {"sat": "sat", "violated": "sat", "unsat": "unsat", "holds": "unsat"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", required=True, help="the benchmark folder (with *_instances.csv)")
    p.add_argument("--published", default=None, help="a published results CSV to compare with")
    p.add_argument("--timeout-cap", type=float, default=None,
                   help="cap every instance's timeout at this many seconds (default: the instances' own)")
    p.add_argument("--milp", type=float, default=0.0, metavar="SHARE",
                   help="the share of each timeout kept for an exact MILP (advx verify --milp; default: 0)")
    p.add_argument("--only", default=None, help="run only instances whose network name contains this text")
    p.add_argument("--out", default="runs/vnncomp", help="output folder (default: runs/vnncomp)")
    args = p.parse_args(argv)
    folder = Path(args.benchmark)
    listing = sorted(folder.glob("*instances.csv"))
    if not listing:
        p.error(f"--benchmark: {folder} holds no *_instances.csv")
    if not 0 <= args.milp < 1:
        p.error(f"--milp must be a share of the timeout in [0, 1), got {args.milp:g}")
    out = check_output_dir(args.out, "--out")
    instances = [row for row in csv.reader(listing[0].open()) if row and (args.only or "") in row[0]]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    published = _published(args.published) if args.published else {}
    rows, bar = [], progress_bar(len(instances), desc="vnncomp", unit="instance")
    models = {}
    for network, prop_file, timeout in instances:
        timeout = float(timeout) if args.timeout_cap is None else min(float(timeout), args.timeout_cap)
        start = time.perf_counter()
        if network not in models:
            models[network] = load_onnx(folder / network)
        model = models[network]
        prepare = time.perf_counter() - start
        inputs = 1
        for d in model.input_shape:
            inputs *= d
        with torch.no_grad():
            outputs = model(torch.zeros(1, *model.input_shape)).shape[-1]
        prop = read_vnnlib(folder / prop_file, num_inputs=inputs, num_outputs=outputs)
        result, counterexample, seconds = verify_property(model, model.input_shape, prop, timeout=timeout,
                                                            milp=args.milp)
        write_result(out / f"{Path(network).stem}-{Path(prop_file).stem}.txt", result, counterexample)
        theirs = published.get((Path(network).name, Path(prop_file).name))
        rows.append({"network": network, "property": prop_file, "timeout": timeout, "prepare_s": f"{prepare:.3f}",
                     "result": result, "seconds": f"{seconds:.2f}", "published": theirs or ""})
        bar.set_postfix(_counts(rows), refresh=False)
        bar.update(1)
    bar.close()
    with atomic_write(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(_summary(rows, bool(published)))
    print(f"wrote {out / 'results.csv'}")
    return 0


def _published(path: str) -> dict:
    found = {}
    for row in csv.reader(open(path)):
        if len(row) >= 5:
            found[(Path(row[1]).name, Path(row[2]).name)] = row[4].strip().lower()
    return found


def _counts(rows) -> dict:
    counts = {"unsat": 0, "sat": 0, "other": 0}
    for r in rows:
        counts[r["result"] if r["result"] in ("sat", "unsat") else "other"] += 1
    return counts


def _summary(rows, compared: bool) -> str:
    lines = []
    by_net: dict = {}
    for r in rows:
        by_net.setdefault(Path(r["network"]).name, []).append(r)
    lines.append(f"{'network':<24} {'instances':>9} {'advx unsat':>10} {'advx sat':>8} {'advx s':>8}"
                 + (f" {'pub. unsat':>10} {'pub. sat':>8}" if compared else ""))
    for net, items in by_net.items():
        mine = _counts(items)
        seconds = sum(float(r["seconds"]) for r in items)
        line = f"{net:<24} {len(items):>9} {mine['unsat']:>10} {mine['sat']:>8} {seconds:>8.1f}"
        if compared:
            pub = [SOLVED.get(r["published"]) for r in items]
            line += f" {pub.count('unsat'):>10} {pub.count('sat'):>8}"
        lines.append(line)
    if compared:
        clashes = [r for r in rows if r["result"] in ("sat", "unsat") and SOLVED.get(r["published"]) not in
                   (None, r["result"])]
        lines.append(f"disagreements with the published results: {len(clashes)}")
        lines += [f"  {r['network']} {r['property']}: advx {r['result']}, published {r['published']}" for r in clashes]
    total = _counts(rows)
    lines.append(f"advx solved {total['unsat'] + total['sat']} of {len(rows)} ({total['unsat']} unsat, "
                 f"{total['sat']} sat) in {sum(float(r['seconds']) for r in rows):.1f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
