"""Sharded runs: the merged shards of an evaluation or an attack are the whole run, and 2 gloo
ranks under torchrun evaluate, attack and certify as one process would."""

import csv
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import DATA_DIR

from advx import PGD, evaluate, run_attack
from advx.cli import main
from advx.distributed import on_shards, shard
from advx.sharded import merge_evaluations, merge_runs
from advx.validate import InputError


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


def test_shards_that_certify_first_merge_into_the_whole_interval(trained_cnn, mnist_test, monkeypatch):
    monkeypatch.setattr(sys.modules["advx.evaluate"], "SPOT_CHECK", 5)
    x, y = mnist_test.x[:60], mnist_test.y[:60]
    options = dict(attacks=["fgsm", "pgd"], eps=[0.01, 0.05], steps=5, batch_size=16, checks=False,
                   progress=False, certify="crown")
    whole = evaluate(trained_cnn, x, y, **options)
    ids = [torch.tensor(shard(60, r, 3)) for r in range(3)]
    parts = [evaluate(trained_cnn, x[i], y[i], sample_ids=i, **options) for i in ids]
    merged = merge_evaluations(parts, ids)
    assert merged.robust_acc == whole.robust_acc and merged.certified_acc == whole.certified_acc
    assert torch.equal(merged.records["broken_by"], whole.records["broken_by"])
    counts = [p.settings["spot_checked"] for p in parts]
    assert merged.settings["spot_checked"] == [sum(c[k] for c in counts) for k in range(2)]
    assert merged.settings["spot_checked"] == [15, 15] and whole.settings["spot_checked"] == [5, 5]  # per shard


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


def test_fewer_images_than_ranks_is_refused(monkeypatch):
    import advx.distributed

    monkeypatch.setattr(advx.distributed, "world", lambda: (0, 2))
    with pytest.raises(InputError, match=r"n must be at least the number of ranks \(2\): every rank needs a sample, got 1"):
        on_shards(1, lambda ids: ids)


# -------------------------------------------------- 2 gloo ranks under torchrun


def _torchrun(*args, timeout=300):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "advx", *args], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
