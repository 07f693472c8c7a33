#!/usr/bin/env python
"""Library overhead of advx PGD: advx PGD-40 vs a bare torch.autograd.grad loop doing the
same 40 steps, side by side in one process, on 1,000 MNIST test images and the baseline.

    python scripts/bench_attacks.py [--checkpoint checkpoints/baseline.pt] [--repeats 5]

Prints the median wall time of each, their ratio (target: <= 1.05) and the peak extra
memory of each run (CPU: resident set size sampled every 1 ms; CUDA: max allocated).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch
import torch.nn.functional as F

from advx import PGD
from advx.attacks import frozen
from advx.subject import load_subject


def bare_pgd(model, x, y, *, eps, alpha, steps, generator):
    """The reference: PGD-Linf written out by hand, nothing else."""
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = (x + (2 * noise - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(fn, device):
    """Run ``fn`` once; return (seconds, peak extra memory in bytes, result)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated() - base, out
    base, peak, done = _rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return seconds, max(peak[0] - base, 0), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/baseline.pt")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()

    subject, test = load_subject(args.checkpoint, n=args.n, data_dir=args.data_dir, device=args.device, check=False)
    model = subject.model  # and the first n test images of its dataset
    x, y = test.x.to(args.device), test.y.to(args.device)
    attack = PGD(model, eps=args.eps, alpha=args.alpha, steps=args.steps, seed=0)

    def run_advx():
        return attack(x, y)

    def run_bare():
        gen = torch.Generator(device=args.device).manual_seed(0)
        with frozen(model):
            return bare_pgd(model, x, y, eps=args.eps, alpha=args.alpha, steps=args.steps, generator=gen)

    run_advx(), run_bare()  # warm-up
    times = {"advx": [], "bare": []}
    memory = {"advx": 0, "bare": 0}
    outputs = {}
    for r in range(args.repeats):
        order = [("advx", run_advx), ("bare", run_bare)]
        for name, fn in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
            seconds, peak, outputs[name] = measure(fn, args.device)
            times[name].append(seconds)
            memory[name] = max(memory[name], peak)

    with torch.no_grad():
        acc = {k: (model(v).argmax(1) == y).float().mean().item() for k, v in outputs.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"PGD-{args.steps} Linf eps={args.eps} alpha={args.alpha} on {args.n} images, "
          f"{args.device}, {torch.get_num_threads()} threads, {args.repeats} repeats (median)")
    print(f"{'':6} {'seconds':>8} {'robust acc':>11} {'peak extra MiB':>15}")
    for k in ("advx", "bare"):
        print(f"{k:6} {med[k]:8.2f} {acc[k]:11.2%} {memory[k] / 2**20:15.1f}")
    print(f"ratio advx / bare = {med['advx'] / med['bare']:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
