"""advx.distributed: shards cover every sample once; and data-parallel training, 2 gloo ranks
under torchrun, killed and resumed to the weights of the uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR, _kill_every_process_of

from advx.distributed import shard


@pytest.mark.parametrize("n, size", [(10, 3), (7, 7), (3, 5), (10000, 4)])
def test_shards_cover_every_sample_once(n, size):
    parts = [shard(n, rank, size) for rank in range(size)]
    assert sorted(i for part in parts for i in part) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


# ------------------------------------------------------- data-parallel training


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the ranks through /proc")
def test_two_gloo_ranks_train_adversarially_and_resume_exactly(tmp_path):
    """torchrun, 2 ranks: DistributedDataParallel with the attack on each rank's share of the
    batch (run on the module inside DDP, so it triggers no gradient sync); rank 0 saves and
    reports once. Killed after its first epoch and resumed, it ends with the weights of the
    uninterrupted run: every rank's random stream (an odd batch gives the ranks shares of
    different sizes, so the streams differ) is part of the saved state."""
    from advx.checkpoint import load_checkpoint

    def train(path, *more):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "advx",
                "train", "--adv", "pgd", "--eps", "0.1", "--steps", "3", "--epochs", "2", "--train-size", "1600",
                "--batch-size", "101", "--holdout", "100", "--final-n", "0", "--data-dir", str(DATA_DIR),
                "--checkpoint", str(path), "--quiet", *more]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(train(tmp_path / "whole.pt"), capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("robust model") == 1 and "2 ranks (data-parallel)" in run.stdout
    whole = load_checkpoint(tmp_path / "whole.last.pt")
    assert whole["config"]["robust_kind"] == "pgd" and len(whole["metrics"]["history"]) == 2
    assert whole["metrics"]["best"]["test_acc"] > 0.2  # it learned, on both ranks' shares
    assert len(whole["train_state"]["loss_fn_ranks"]) == 2

    path = tmp_path / "killed.pt"
    proc = subprocess.Popen(train(path), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not path.with_suffix(".last.pt").exists():
            time.sleep(0.005)
        _kill_every_process_of(str(path))
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert len(load_checkpoint(path.with_suffix(".last.pt"))["metrics"]["history"]) == 1
    run = subprocess.run(train(path, "--resume"), capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    resumed = load_checkpoint(path.with_suffix(".last.pt"))
    assert len(resumed["metrics"]["history"]) == 2
    for name, weights in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weights), name
