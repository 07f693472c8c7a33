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
import torch.distributed as dist
from conftest import DATA_DIR, _kill_every_process_of

from advx import distributed
from advx.cli import main
from advx.distributed import init, shard
from advx.validate import InputError

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.parametrize("n, size", [(10, 3), (7, 7), (3, 5), (10000, 4)])
def test_shards_cover_every_sample_once(n, size):
    parts = [shard(n, rank, size) for rank in range(size)]
    assert sorted(i for part in parts for i in part) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1



@pytest.fixture
def environment(monkeypatch):
    """No torchrun variable but those a test sets."""
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_leftover_world_size_runs_as_one_process_with_one_warning(environment):
    environment.setenv("WORLD_SIZE", "2")
    with pytest.warns(RuntimeWarning) as caught:
        assert init("cpu") == "cpu"
    assert not dist.is_initialized()
    assert [str(w.message) for w in caught] == [
        "WORLD_SIZE=2 is set, but not RANK, MASTER_ADDR or MASTER_PORT (torchrun sets them all): running as one "
        "process; unset WORLD_SIZE, or launch with torchrun"]


@pytest.mark.parametrize("variables, message", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE must be a whole number >= 1 (torchrun sets it), got 'two'"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE must be a whole number >= 1 (torchrun sets it), got '0'"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, ("WORLD_SIZE=2 and RANK are set, but not MASTER_ADDR and MASTER_PORT: "
                                        "launch with torchrun, which sets them all, or unset WORLD_SIZE")),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
     "WORLD_SIZE=2 and MASTER_ADDR, MASTER_PORT are set, but not RANK: launch with torchrun"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
     "RANK must be a whole number from 0 to 1 (WORLD_SIZE=2), got '2'"),
])
def test_a_partial_torchrun_environment_is_one_clear_error(variables, message, environment):
    for name, value in variables.items():
        environment.setenv(name, value)
    with pytest.raises(InputError) as caught:
        init("cpu")
    assert str(caught.value).startswith(message)
    assert not dist.is_initialized()


def test_a_failed_join_is_one_clear_error(environment):
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "nowhere", "MASTER_PORT": "29500"}.items():
        environment.setenv(name, value)

    def refused(backend):
        raise RuntimeError("The client socket has failed to connect to nowhere:29500\nmore details")

    environment.setattr(distributed.dist, "init_process_group", refused)
    with pytest.raises(InputError, match="^joining torchrun's process group \\(gloo, rank 1 of 2, nowhere:29500\\) "
                                         "failed: RuntimeError: The client socket has failed to connect to "
                                         "nowhere:29500$"):
        init("cpu")


def test_a_command_with_a_leftover_world_size_runs_as_one_process(environment, tmp_path, capsys):
    environment.setenv("WORLD_SIZE", "2")
    (tmp_path / "flat.py").write_text("from torch import nn\n\n\ndef build():\n"
                                      "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n")
    code = main(["eval", "--model", f"{tmp_path / 'flat.py'}:build", "--attacks", "fgsm", "--eps", "0.1", "--n", "8",
                 "--data-dir", str(DATA_DIR), "--out", str(tmp_path / "run"), "--quiet", "--no-checks"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (tmp_path / "run" / "report.json").exists() and not dist.is_initialized()
    assert [line for line in err.splitlines() if "WORLD_SIZE" in line] == [
        "advx eval: warning: WORLD_SIZE=2 is set, but not RANK, MASTER_ADDR or MASTER_PORT (torchrun sets them all): "
        "running as one process; unset WORLD_SIZE, or launch with torchrun"]


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
