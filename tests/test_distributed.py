"""Sharded evaluation: shards keep their samples' random streams, the merge recounts every
figure, and a 2-rank gloo run under torchrun writes the per_sample.csv of one process."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR

from advx import PGD, evaluate, run_attack
from advx.cli import main
from advx.distributed import on_shards, shard
from advx.sharded import merge_evaluations, merge_runs
from advx.validate import InputError


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
    merged = merge_evaluations(parts, ids)
    assert merged.n == 60 and merged.settings["ranks"] == 3
    for key in ("y", "pred_clean", "robust", "broken_by", "step"):
        assert torch.equal(merged.records[key], whole.records[key]), key
    assert torch.allclose(merged.records["distance"], whole.records["distance"], atol=1e-6)
    assert merged.robust_acc == whole.robust_acc and merged.clean_acc == whole.clean_acc
    assert merged.robust_acc_by_attack == whole.robust_acc_by_attack
    # Without the ids a shard draws other random starts: the ids are what makes sharding exact.
    unkeyed = evaluate(trained_cnn, x[20:40], y[20:40], **options)
    assert not torch.equal(unkeyed.records["step"], whole.records["step"][:, 20:40]) or \
        not torch.allclose(unkeyed.records["distance"], whole.records["distance"][:, 20:40])


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


# ------------------------------------------------------------------ advx attack and advx certify


def test_merged_attack_shards_are_the_whole_run(trained_cnn, mnist_test):
    """run_attack gives every sample its own random stream: shards (with their ids), any batch
    size, give the single run's per-sample results, and the whole set's first images to keep."""
    x, y = mnist_test.x[:45], mnist_test.y[:45]
    attack = PGD(trained_cnn, eps=0.1, steps=5, seed=4)
    whole = run_attack(attack, x, y, batch_size=16, keep=5, progress=False)
    other_batches = run_attack(attack, x, y, batch_size=7, keep=5, progress=False)
    ids = [torch.tensor(shard(45, r, 3)) for r in range(3)]
    merged = merge_runs([(i, run_attack(attack, x[i], y[i], batch_size=4, keep=5, sample_ids=i,
                                        progress=False)) for i in ids], keep=5)
    for run in (other_batches, merged):
        for key in ("y", "pred_clean", "pred_adv", "success"):
            assert torch.equal(getattr(run, key), getattr(whole, key)), key
        assert torch.allclose(run.distance, whole.distance, atol=1e-6)
        assert run.x_adv.shape == (5, 1, 28, 28) and torch.allclose(run.x_adv, whole.x_adv, atol=1e-6)
    assert 0 < int(whole.success.sum()) < 45  # a test that could tell a sample's stream apart
    # the ids are what makes it exact: the same images as a set of their own draw other starts
    every = run_attack(attack, x, y, keep=45, progress=False).x_adv
    keyed = run_attack(attack, x[ids[1]], y[ids[1]], keep=45, sample_ids=ids[1], progress=False).x_adv
    alone = run_attack(attack, x[ids[1]], y[ids[1]], keep=45, progress=False).x_adv
    assert torch.allclose(keyed, every[ids[1]], atol=1e-6) and not torch.allclose(alone, every[ids[1]], atol=1e-3)


def _torchrun(*args, timeout=300):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "advx", *args], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def test_two_gloo_ranks_attack_as_one_process_and_show_the_whole_job(small_checkpoint, tmp_path):
    args = ["attack", "--checkpoint", str(small_checkpoint), "--eps", "0.15", "--steps", "5", "--images", "40",
            "--batch-size", "8", "--data-dir", str(DATA_DIR)]
    assert main(args + ["--out", str(tmp_path / "one"), "--quiet"]) == 0
    run = _torchrun(*args, "--out", str(tmp_path / "two"))
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    assert two["ranks"] == 2 and one["ranks"] == 1
    for report in (one, two):
        del report["results"]["seconds"], report["results"]["images_per_s"]
    assert one["results"] == two["results"] and 0 < one["results"]["success_rate"] < 1
    assert (tmp_path / "one" / "examples.png").read_bytes() == (tmp_path / "two" / "examples.png").read_bytes()
    assert run.stdout.count("robust accuracy") == 1  # rank 0 reports, once
    # one progress bar, rank 0's, counting both ranks' images
    assert re.search(r"PGD: 100%.*\b40/40\b", run.stderr) and "20/20" not in run.stderr


def test_two_gloo_ranks_certify_as_one_process(small_checkpoint, tmp_path):
    args = ["certify", "--checkpoint", str(small_checkpoint), "--eps", "0.0005,0.002", "--method", "crown-ibp",
            "--images", "30", "--batch-size", "8", "--data-dir", str(DATA_DIR), "--quiet"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    run = _torchrun(*args, "--out", str(tmp_path / "two"))
    assert run.stdout.count("certified accuracy") >= 1
    one, two = (list(csv.DictReader((tmp_path / d / "per_sample.csv").open())) for d in ("one", "two"))
    assert len(one) == len(two) == 30
    for a, b in zip(one, two):  # a bound's last float bits may follow the batch (as with another thread count)
        margins = [k for k in a if k.startswith("margin_lb@")]
        assert {k: a[k] for k in a if k not in margins} == {k: b[k] for k in b if k not in margins}
        assert all(abs(float(a[k]) - float(b[k])) <= 1e-4 for k in margins)
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["settings"]["ranks"] == 2 and 0 < report["certified_acc"]["0.0005"] < 1


def test_fewer_images_than_ranks_is_refused(monkeypatch):
    import advx.distributed

    monkeypatch.setattr(advx.distributed, "world", lambda: (0, 2))
    with pytest.raises(InputError, match=r"n must be at least the number of ranks \(2\): every rank needs a sample, got 1"):
        on_shards(1, lambda ids: ids)


# ------------------------------------------------------------------ one progress bar for the whole job


def test_the_job_bar_counts_every_ranks_work_and_waits_for_the_last():
    """Rank 0's bar sums what every rank puts in the store, and its close() returns only once
    the other rank has closed it (rank 0 finished its share first here)."""
    import threading

    from advx.progress import JobBar

    store = torch.distributed.HashStore()
    zero = JobBar(store, 50, rank=0, size=2, key="bar", leave=False)
    one = JobBar(store, 30, rank=1, size=2, key="bar")
    assert one.tqdm is None  # only rank 0 draws
    zero.update(50)
    zero.poll_seconds = 0.01
    closing = threading.Thread(target=zero.close)
    closing.start()
    time.sleep(0.1)
    assert closing.is_alive() and zero.tqdm.n == 50 and zero.tqdm.total == 80  # waits for rank 1
    one.update(10)
    one.update(20)
    one.close()
    closing.join(timeout=5)
    assert not closing.is_alive() and zero.tqdm.n == 80


def test_the_job_bar_does_not_wait_for_a_rank_that_never_opens_it():
    from advx.progress import JobBar

    zero = JobBar(torch.distributed.HashStore(), 20, rank=0, size=2, key="bar", leave=False)
    zero.update(20)
    zero.close()  # all the counted work is done: no hang
    assert zero.tqdm.n == 20
