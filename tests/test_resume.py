"""Resuming a killed evaluation: a run SIGKILLed at any point (one process, or 2 ranks under
torchrun) resumes to the per-sample results of the uninterrupted run; a damaged chunk is
computed again, changed settings are refused."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import DATA_DIR, _kill_every_process_of

from advx.cli import main


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """An advx checkpoint of an untrained model: about one image in ten correct, no training to wait for."""
    from advx.checkpoint import save_checkpoint
    from advx.train import seeded_model

    path = tmp_path_factory.mktemp("untrained") / "m.pt"
    save_checkpoint(path, seeded_model("small", 0), model_name="small")
    return path


def _norms_args(checkpoint, out, *more):
    return ["eval", "--checkpoint", str(checkpoint), "--attacks", "fgsm,pgd", "--steps", "3", "--norm", "inf,2",
            "--images", "100", "--batch-size", "4", "--data-dir", str(DATA_DIR), "--out", str(out), "--quiet",
            "--no-checks", *more]


def _killed_in_the_second_norm(monkeypatch):
    """``advx eval``'s evaluation, killed (KeyboardInterrupt) as the second norm starts."""
    from advx.cli import eval as eval_command

    real, calls = eval_command.evaluate_sharded, []

    def evaluate_then_die(model, x, y, config, **kw):
        calls.append(config.norm.label)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, x, y, config, **kw)

    monkeypatch.setattr(eval_command, "evaluate_sharded", evaluate_then_die)
    return calls


def test_a_run_killed_in_its_second_norm_resumes_the_first(untrained, tmp_path, capsys, monkeypatch):
    whole = tmp_path / "whole"
    assert main(_norms_args(untrained, whole)) == 0
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        assert _killed_in_the_second_norm(patch) == [] and main(_norms_args(untrained, out)) == 130
    chunks = len(list((out / "Linf" / ".resume").glob("*.pt")))
    assert chunks > 0 and (out / "Linf" / "report.json").exists()  # reported, and its results still kept
    capsys.readouterr()
    assert main(_norms_args(untrained, out, "--resume")) == 0
    printed = capsys.readouterr().out
    assert f"resumed: {chunks} chunks of attack results read back from {out / 'Linf' / '.resume'}, 0 computed" \
        in printed
    for label in ("Linf", "L2"):
        assert (out / label / "per_sample.csv").read_text() == (whole / label / "per_sample.csv").read_text()
        assert not (out / label / ".resume").exists()  # the whole run is reported: nothing left behind


def test_a_damaged_settings_file_starts_afresh_with_one_warning(untrained, tmp_path, capsys, monkeypatch):
    from advx.resume import ChunkStore

    out, args = tmp_path / "run", _norms_args(untrained, tmp_path / "run")
    args[args.index("inf,2")] = "inf"
    real, calls = ChunkStore.run, []

    def run_then_die(store, *a, **kw):  # killed as the fourth chunk starts
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(store, *a, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(ChunkStore, "run", run_then_die)
        assert main(args) == 130
    settings = out / ".resume" / "settings.json"
    assert len(list(settings.parent.glob("*.pt"))) == 3
    assert capsys.readouterr().err.splitlines()[-1] == (f"advx eval: interrupted; 3 batches of attack results are "
                                                        f"kept in {settings.parent}: add --resume to reuse them")
    settings.write_text(settings.read_text()[:40])  # cut short
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "resumed:" not in captured.out and "Traceback" not in captured.err
    warned = [line for line in captured.err.splitlines() if "settings.json is damaged" in line]
    assert len(warned) == 1 and warned[0].startswith("advx eval: warning: resume:") and "starts afresh" in warned[0]
    assert (out / "per_sample.csv").exists() and not settings.parent.exists()


def test_a_chunk_with_a_changed_byte_is_computed_again(tmp_path):
    import torch

    from advx.resume import ChunkStore

    ids = torch.arange(40, 104)
    result = SimpleNamespace(success=torch.zeros(64, dtype=torch.bool), steps=torch.arange(64),
                             distance=torch.linspace(0, 1, 64))
    store = ChunkStore(tmp_path / "s", {"run": 1}, resume=False)
    store.run("pgd-0.1", ids, lambda: result)
    (chunk,) = (tmp_path / "s").glob("*.pt")
    data = bytearray(chunk.read_bytes())
    at = data.find(result.distance.numpy().tobytes())
    assert at > 0
    data[at + 100] ^= 0x01  # one bit of one distance: torch reads it back without complaint
    chunk.write_bytes(bytes(data))
    again = ChunkStore(tmp_path / "s", {"run": 1}, resume=True)
    calls = []
    found = again.run("pgd-0.1", ids, lambda: calls.append(1) or result)
    assert calls == [1] and again.reused == 0 and torch.equal(found.distance, result.distance)
    assert ChunkStore(tmp_path / "s", {"run": 1}, resume=True).run("pgd-0.1", ids, lambda: 1 / 0) is not None
