"""Sharded evaluation: shards keep their samples' random streams, the merge recounts every
figure, and a 2-rank gloo run under torchrun writes the per_sample.csv of one process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from advx import evaluate
from advx.cli import main
from advx.distributed import merge, shard

from conftest import DATA_DIR


@pytest.mark.parametrize("n, size", [(10, 3), (7, 7), (3, 5), (10000, 4)])
def test_shards_cover_every_sample_once(n, size):
    parts = [shard(n, rank, size) for rank in range(size)]
    assert sorted(i for part in parts for i in part) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_merged_shards_are_the_whole_evaluation(trained_cnn, mnist_test):
    x, y = mnist_test.x[:60], mnist_test.y[:60]
    options = dict(attacks=["fgsm", "pgd", "fmn"], eps=[0.05, 0.1], steps=5, batch_size=16, checks=False,
                   progress=False)
    whole = evaluate(trained_cnn, x, y, **options)
    ids = [torch.tensor(shard(60, r, 3)) for r in range(3)]
    parts = [evaluate(trained_cnn, x[i], y[i], sample_ids=i, **options) for i in ids]
    merged = merge(parts, ids)
    assert merged.n == 60 and merged.settings["ranks"] == 3
    for key in ("y", "pred_clean", "robust", "broken_by", "step"):
        assert torch.equal(merged.records[key], whole.records[key]), key
    assert torch.allclose(merged.records["norm"], whole.records["norm"], atol=1e-6)
    assert merged.robust_acc == whole.robust_acc and merged.clean_acc == whole.clean_acc
    assert merged.robust_acc_by_attack == whole.robust_acc_by_attack
    # Without the ids a shard draws other random starts: the ids are what makes sharding exact.
    unkeyed = evaluate(trained_cnn, x[20:40], y[20:40], **options)
    assert not torch.equal(unkeyed.records["step"], whole.records["step"][:, 20:40]) or \
        not torch.allclose(unkeyed.records["norm"], whole.records["norm"][:, 20:40])


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "tiny.pt"
    assert main(["train", "--epochs", "2", "--train-size", "6000", "--batch-size", "64", "--data-dir", str(DATA_DIR),
                 "--checkpoint", str(path), "--quiet"]) == 0
    return path


def test_two_gloo_ranks_write_the_per_sample_csv_of_one_process(small_checkpoint, tmp_path):
    args = ["eval", "--checkpoint", str(small_checkpoint), "--attacks", "fgsm,pgd", "--steps", "5",
            "--eps", "0.1,0.2", "--images", "50", "--batch-size", "16", "--data-dir", str(DATA_DIR), "--quiet"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "advx", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("robust accuracy") == 1  # rank 0 reports, once
    one, two = ((tmp_path / d / "per_sample.csv").read_text() for d in ("one", "two"))
    assert one == two and len(one.splitlines()) == 51


# ------------------------------------------------------------------ resuming a killed run


def _eval_args(checkpoint, out, *more):
    return ["eval", "--checkpoint", str(checkpoint), "--attacks", "fgsm,pgd,fmn", "--steps", "10", "--eps", "0.1,0.2",
            "--images", "160", "--batch-size", "8", "--data-dir", str(DATA_DIR), "--out", str(out), "--quiet",
            "--no-checks", *more]


@pytest.fixture(scope="module")
def uninterrupted(small_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    assert main(_eval_args(small_checkpoint, out)) == 0
    assert not (out / ".resume").exists()  # a complete run leaves no chunks behind
    return (out / "per_sample.csv").read_text()


@pytest.mark.parametrize("after", [1, 8, 25])
def test_a_run_killed_at_any_point_resumes_to_the_same_results(after, small_checkpoint, uninterrupted, tmp_path,
                                                              capsys):
    """SIGKILL once ``after`` chunk files exist, then --resume: the per-sample results are
    those of the uninterrupted run, and the chunks written before the kill were reused."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "advx", *_eval_args(small_checkpoint, out)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and len(list((out / ".resume").glob("*.pt"))) < after:
            time.sleep(0.005)
        proc.kill()  # SIGKILL: no cleanup, possibly mid-write
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    written = len(list((out / ".resume").glob("*.pt")))
    assert written >= after and not (out / "per_sample.csv").exists()

    assert main(_eval_args(small_checkpoint, out, "--resume")) == 0
    printed = capsys.readouterr().out
    assert f"resumed: {written} chunks" in printed or f"resumed: {written - 1} chunks" in printed
    assert (out / "per_sample.csv").read_text() == uninterrupted


def test_a_damaged_chunk_is_computed_again_and_changed_settings_are_refused(small_checkpoint, uninterrupted,
                                                                            tmp_path, capsys):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "advx", *_eval_args(small_checkpoint, out)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and len(list((out / ".resume").glob("*.pt"))) < 4:
        time.sleep(0.005)
    proc.kill()
    proc.wait(timeout=60)
    chunks = sorted((out / ".resume").glob("*.pt"))
    chunks[0].write_bytes(chunks[0].read_bytes()[:100])  # truncated: must not be taken for complete
    chunks[1].write_bytes(b"not a torch file")

    assert main(_eval_args(small_checkpoint, out, "--resume", "--seed", "1")) == 2
    err = capsys.readouterr().err
    assert "resume:" in err and "other settings (config changed)" in err and "without --resume" in err
    assert main(_eval_args(small_checkpoint, out, "--resume")) == 0
    assert (out / "per_sample.csv").read_text() == uninterrupted


def _kill_every_process_of(marker: str) -> None:
    """SIGKILL every process whose command line holds ``marker``, and wait until none is left."""
    def matching():
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    yield int(entry.name)
            except OSError:
                continue
    for _ in range(200):
        pids = list(matching())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"processes of {marker} survived SIGKILL")


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the ranks through /proc")
def test_a_killed_sharded_run_resumes_to_the_same_results(small_checkpoint, uninterrupted, tmp_path):
    """torchrun with 2 ranks, the whole job SIGKILLed mid-way, then resumed with 2 ranks:
    each rank reads back its own batches and redoes the rest."""
    out = tmp_path / "run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "advx"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*launch, *_eval_args(small_checkpoint, out)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and len(list((out / ".resume").glob("*.pt"))) < 10:
            time.sleep(0.005)
        _kill_every_process_of(str(out))  # torchrun and both ranks (they run in groups of their own)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (out / "per_sample.csv").exists()
    run = subprocess.run([*launch, *_eval_args(small_checkpoint, out, "--resume")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "resumed:" in run.stdout
    assert (out / "per_sample.csv").read_text() == uninterrupted


# ------------------------------------------------------------------ data-parallel training


def test_two_gloo_ranks_train_adversarially(tmp_path):
    """torchrun, 2 ranks: DistributedDataParallel with the attack on each rank's share of the
    batch (run on the module inside DDP, so it triggers no gradient sync); rank 0 saves and
    reports once."""
    path = tmp_path / "ddp.pt"
    train = ["train", "--adv", "pgd", "--eps", "0.1", "--steps", "3", "--epochs", "1", "--train-size", "4000",
             "--holdout", "200", "--final-n", "0", "--data-dir", str(DATA_DIR), "--checkpoint", str(path), "--quiet"]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "advx", *train], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("robust model") == 1 and "2 ranks (data-parallel)" in run.stdout
    from advx.checkpoint import load_checkpoint
    ckpt = load_checkpoint(path)
    assert ckpt["config"]["robust_adv"] == "pgd" and len(ckpt["metrics"]["history"]) == 1
    assert ckpt["metrics"]["best"]["test_acc"] > 0.2  # it learned, on both ranks' shares


@pytest.mark.parametrize("command", ["attack", "certify"])
def test_commands_that_do_not_shard_refuse_to_run_on_several_ranks(command, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([command, "--n", "5", "--data-dir", str(DATA_DIR)]) == 2
    err = capsys.readouterr().err
    assert f"advx {command} runs in one process" in err and "use advx eval" in err and "WORLD_SIZE=2" in err
