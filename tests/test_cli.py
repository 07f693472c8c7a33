"""The CLI is a thin layer: call ``main(argv)`` and check exit codes, output and files."""

import csv
import json
import re
import time

import pytest
import torch
from conftest import DATA_DIR, train_checkpoint
from PIL import Image

from advx.cli import build_parser, main


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["attack", "--help"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    assert "usage: advx" in capsys.readouterr().out


def test_every_command_and_option_has_help_text():
    for name, sub in _subcommands().items():
        assert sub.description, name
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"advx {name} {action.option_strings} has no help"


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return train_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", "--epochs", "2", "--train-size", "4000",
                            "--batch-size", "64")


def test_train_writes_a_loadable_checkpoint(tiny_checkpoint):
    from advx.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt["config"]["train_size"] == 4000 and ckpt["config"]["epochs"] == 2
    assert 0.5 < ckpt["metrics"]["test_acc"] <= 1.0


def test_attack_end_to_end(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    began = time.perf_counter()
    code = main(["attack", "--attack", "pgd", "--eps", "0.3", "--steps", "5", "--n", "60",
                 "--batch-size", "25", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(DATA_DIR),
                 "--out", str(out), "--quiet"])
    elapsed = time.perf_counter() - began
    assert code == 0
    printed = capsys.readouterr().out
    for row in ("clean accuracy", "robust accuracy", "attack success rate", "mean / max Linf", "images/s"):
        assert row in printed
    report = json.loads((out / "report.json").read_text())
    assert report["attack"]["attack"] == "PGD" and report["attack"]["steps"] == 5
    assert report["n"] == 60 and report["seed"] == 0
    results = report["results"]
    for key in ("clean_acc", "robust_acc", "success_rate", "mean_norm", "max_norm", "seconds", "images_per_s"):
        assert key in results
    assert results["robust_acc"] < results["clean_acc"]
    assert results["max_norm"] <= 0.3 + 1e-6
    assert 0 < results["seconds"] <= elapsed  # the attack's own clock, not a batch index
    assert {"torch", "torchvision", "advx"} <= set(report["environment"])
    with Image.open(out / "examples.png") as img:
        img.verify()
        assert img.size[0] > 200 and img.size[1] > 200


def test_targeted_attack(tiny_checkpoint, tmp_path, capsys):
    code = main(["attack", "--attack", "pgd", "--targeted", "--target-class", "3", "--steps", "10",
                 "--n", "40", "--checkpoint", str(tiny_checkpoint), "--data-dir", str(DATA_DIR),
                 "--out", str(tmp_path), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["target_class"] == 3 and report["attack"]["targeted"] is True
    assert report["results"]["attacked"] < 40  # the 3s are not counted in the success rate


@pytest.mark.parametrize("argv,message", [
    (["attack", "--checkpoint", "missing.pt"], "no file at missing.pt"),
    (["attack", "--eps", "-1"], "eps must be >= 0, got -1.0"),
    (["attack", "--attack", "fgsm", "--steps", "3"], "steps does not apply to attack 'fgsm'"),
    (["attack", "--targeted"], "--targeted and --target-class K go together"),
    (["attack", "--targeted", "--target-class", "12"], "--target-class must be in [0, 9], got 12"),
    (["attack", "--n", "0"], "--n must be >= 1, got 0"),
    (["train", "--epochs", "0"], "epochs must be >= 1, got 0"),
])
def test_bad_options_are_one_clear_line(argv, message, tiny_checkpoint, capsys):
    if "--checkpoint" not in argv and argv[0] == "attack":
        argv = argv + ["--checkpoint", str(tiny_checkpoint)]
    assert main(argv + ["--data-dir", str(DATA_DIR), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_cuda_on_a_machine_without_it(capsys, tiny_checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["attack", "--device", "cuda", "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err


@pytest.mark.slow
def test_adversarial_training_command(tmp_path, capsys):
    from advx.checkpoint import load_checkpoint

    path = tmp_path / "robust.pt"
    code = main(["train", "--adv", "fgsm-rs", "--epochs", "1", "--train-size", "500", "--holdout", "100",
                 "--batch-size", "100", "--final-n", "30", "--checkpoint", str(path), "--data-dir", str(DATA_DIR),
                 "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "held-out probe (APGD-CE, Square)" in out
    ckpt = load_checkpoint(path)
    assert ckpt["config"]["robust_kind"] == "fgsm-rs"
    assert {"probe_acc", "apgd_acc", "fgsm_acc", "clean_acc_holdout"} <= set(ckpt["metrics"]["best"])
    best = ckpt["metrics"]["best"]
    assert best["probe_acc"] <= best["apgd_acc"] <= best["clean_acc_holdout"]  # a cascade only removes
    final = ckpt["metrics"]["final"]  # the strong suite on the held-out images, kept with the weights
    assert (final["suite"], final["n"], final["eps"]) == ("strong", 30, 0.3)
    assert final["robust_acc"] <= final["clean_acc"]
    assert re.search(rf"held-out --suite strong \(n=30\) +{final['robust_acc']:.2%} at eps 0.3", out)
    # advx eval shows that figure beside its own, and keeps it in report.json.
    code = main(["eval", "--checkpoint", str(path), "--eps", "0.3", "--n", "20", "--data-dir", str(DATA_DIR),
                 "--out", str(tmp_path / "ev"), "--no-checks", "--quiet"])
    assert code == 0
    assert (f"the checkpoint's own figure (end of its training): --suite strong {final['robust_acc']:.2%} "
            f"at eps 0.3 on 30 held-out training images") in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "report.json").read_text())["training_final"] == final
    assert "train_state" in load_checkpoint(tmp_path / "robust.last.pt")


def test_eval_strong_suite(tiny_checkpoint, tmp_path, capsys):
    code = main(["eval", "--suite", "strong", "--eps", "0.3", "--n", "20", "--steps", "10", "--restarts", "2",
                 "--checkpoint", str(tiny_checkpoint), "--data-dir", str(DATA_DIR), "--out", str(tmp_path),
                 "--no-checks", "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["attacks"] == ["apgd", "apgd-t", "square"]
    assert report["settings"]["stages"] == ("apgd(restarts=2, near_restarts=30, near=0.5),"
                                           "apgd-t(n_target_classes=3, near_restarts=6, near=0.5),"
                                           "square(queries=5000, screen=1000, near=0.5)")
    assert list(report["robust_acc_by_attack"]["0.3"]) == ["apgd", "apgd-t", "square"]
    assert list(report["seconds_by_stage"]) == ["apgd", "apgd-t", "square"]


def test_eval_in_l0_counts_changed_pixels_and_breaks_more_with_more(tiny_checkpoint, tmp_path, capsys):
    code = main(["eval", "--norm", "0", "--attacks", "sparse-rs", "--eps", "1,20", "--n", "12",
                 "--checkpoint", str(tiny_checkpoint), "--data-dir", str(DATA_DIR), "--out", str(tmp_path),
                 "--no-checks", "--quiet"])
    assert code == 0
    assert "robust accuracy (L0, cumulative over the cascade)" in capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["norm"] == "0" and report["settings"]["attacks"] == ["sparse-rs"]
    assert report["robust_acc"]["20"] < report["robust_acc"]["1"]  # 20 pixels break what 1 cannot
    rows = list(csv.DictReader((tmp_path / "per_sample.csv").open()))
    broken = [r for r in rows if r["robust@20"] == "0" and r["attack@20"] == "sparse-rs"]
    assert broken and all(float(r["distance@20"]) <= 20 and float(r["distance@20"]).is_integer() for r in broken)


def test_eval_in_l0_runs_the_strong_l0_suite_by_default():
    from advx.cli.eval import _configs

    args = build_parser().parse_args(["eval", "--norm", "0,inf"])
    configs = _configs(args, "mnist", "cpu")
    assert [s[0] for s in configs["0"].stages()] == ["spgd", "sparse-rs"] and configs["0"].eps == (5, 10, 15, 20)
    assert [s[0] for s in configs["inf"].stages()] == ["fgsm", "pgd"]


@pytest.mark.parametrize("argv, message", [
    (["eval", "--norm", "0", "--eps", "2.5"], "--eps must be a whole number of pixels in L0, got 2.5"),
    (["eval", "--norm", "0", "--certify"], "--certify: no certificate covers --norm 0 (L0)"),
    (["eval", "--norm", "0", "--attacks", "pgd"], "--attacks: pgd cannot attack in --norm 0"),
    (["attack", "--attack", "sparse-rs", "--norm", "0", "--eps", "0.5"], "eps must be a whole number of pixels"),
    (["certify", "--norm", "0"], "--norm 0: no certificate covers L0 here"),
])
def test_l0_refusals_are_one_line(tiny_checkpoint, tmp_path, capsys, argv, message):
    code = main(argv + ["--checkpoint", str(tiny_checkpoint), "--n", "2", "--data-dir", str(DATA_DIR),
                        "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_eval_several_norms_one_report(tiny_checkpoint, tmp_path, capsys):
    code = main(["eval", "--norm", "inf,2,1", "--attacks", "apgd,fmn", "--steps", "5", "--n", "12",
                 "--checkpoint", str(tiny_checkpoint), "--data-dir", str(DATA_DIR), "--out", str(tmp_path),
                 "--no-checks", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["norms"]) == ["Linf", "L2", "L1"]
    for label, eps in (("Linf", "0.3"), ("L2", "2"), ("L1", "10")):  # each norm at its default budgets
        one = json.loads((tmp_path / label / "report.json").read_text())
        assert one["settings"]["norm"] == {"Linf": "inf", "L2": "2", "L1": "1"}[label]
        assert report["norms"][label]["robust_acc"][eps] == one["robust_acc"][eps]
        assert (tmp_path / label / "per_sample.csv").exists()
        assert re.search(rf"^ +{label} +{eps} +[\d.]+% +[\d.]+% +apgd,fmn$", out, re.M)
    assert "robust accuracy (L1, cumulative over the cascade)" in out


# ---------------------------- faults: bad paths, OS errors, conflicting options
def _no_work(*args, **kwargs):
    raise AssertionError("the work started although a check before it should have failed")


def test_attack_out_that_is_a_file_fails_before_any_work(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from advx.cli import attack

    monkeypatch.setattr(attack, "run_attack_sharded", _no_work)
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    code = main(["attack", "--checkpoint", str(tiny_checkpoint), "--out", str(blocker), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"--out must be a folder, got {blocker}, which is an existing file" in err
    assert blocker.read_text() == "not a folder"


def test_eval_out_that_is_a_file_fails_before_any_work(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from advx.cli import eval as eval_command

    monkeypatch.setattr(eval_command, "evaluate_sharded", _no_work)
    blocker = tmp_path / "taken"
    blocker.write_text("x")
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--out", str(blocker), "--quiet"]) == 2
    assert "--out must be a folder" in capsys.readouterr().err


def test_train_checkpoint_that_is_a_folder_fails_before_training(tmp_path, capsys, monkeypatch):
    from advx.cli import train

    monkeypatch.setattr(train, "train_baseline", _no_work)
    monkeypatch.setattr(train, "train_robust", _no_work)
    for extra in ([], ["--adv", "pgd"]):
        assert main(["train", "--checkpoint", str(tmp_path), "--quiet"] + extra) == 2
        err = capsys.readouterr().err
        assert f"--checkpoint must be a file path, got {tmp_path}, which is an existing folder" in err
        assert "Traceback" not in err


def test_an_os_error_is_one_line(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    from advx.report import attack as report

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "report.json"))

    monkeypatch.setattr(report, "write_json", full_disk)
    code = main(["attack", "--checkpoint", str(tiny_checkpoint), "--n", "10", "--steps", "2",
                 "--data-dir", str(DATA_DIR), "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip() == f"advx attack: error: No space left on device: {tmp_path / 'report.json'}"


def test_zero_byte_checkpoint_on_the_command_line(tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert main(["attack", "--checkpoint", str(empty), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is empty (0 bytes)" in err and "Traceback" not in err


def test_diverged_training_keeps_the_good_checkpoint(tiny_checkpoint, tmp_path, capsys):
    good = tmp_path / "good.pt"
    good.write_bytes(tiny_checkpoint.read_bytes())
    for lr, message in (("inf", "--lr must be a finite number, got inf"),
                        ("1e30", "training diverged: the loss became nan")):
        code = main(["train", "--lr", lr, "--epochs", "1", "--train-size", "256", "--checkpoint", str(good),
                     "--data-dir", str(DATA_DIR), "--quiet"])
        assert code == 2
        assert message in capsys.readouterr().err
        assert good.read_bytes() == tiny_checkpoint.read_bytes()  # NaN weights were saved here before


@pytest.mark.parametrize("argv,message", [
    (["eval", "--attacks", "fgsm,pgd,fgsm"], "--attacks must name each attack once, got fgsm more than once"),
    (["eval", "--suite", "strong", "--attacks", "fgsm"], "--suite and --attacks exclude each other"),
    (["eval", "--attacks", "fgsm", "--steps", "5"], "--steps does not apply to any attack of the cascade (fgsm)"),
    (["eval", "--eps", "0.1,0.1"], "--eps must not repeat a value, got 0.1 more than once"),
    (["eval", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["eval", "--norm", "inf,3"], "--norm must name each threat model at most once, from inf,2,1,0,patch,frame, got 'inf,3'"),
    (["eval", "--norm", "2,2"], "--norm must name each threat model at most once"),
    (["eval", "--norm", "inf,1", "--eps", "0.3"], "--eps applies to one --norm; with several norms (inf,1)"),
    (["eval", "--norm", "inf,2", "--eps", "0.1", "--dataset", "fashion-mnist"],
     "its default budgets (Fashion-MNIST inf: 0.025,0.05,0.075,0.1, 2: 0.25,0.5,0.75,1), got --eps 0.1"),
    (["eval", "--norm", "1", "--attacks", "apgd,hsj"], "--attacks: hsj cannot attack in --norm 1"),
    (["eval", "--n", "20000"], "--n must be <= 10000 (the test images), got 20000"),
    (["attack", "--n", "10001"], "--n must be <= 10000 (the test images), got 10001"),
    (["attack", "--seed", str(2**64)], "--seed must be <= 9223372036854775807"),
    (["train", "--eps", "0.1"], "--eps applies only with --adv fgsm-rs or pgd or trades or mart or ibp or crown-ibp or "
                                   "sabr or mtl-ibp or cc-ibp, got --adv none"),
    (["train", "--adv", "fgsm-rs", "--steps", "3"], "--steps applies only with --adv pgd or trades or mart or sabr or "
                                                   "mtl-ibp or cc-ibp, got --adv fgsm-rs"),
    (["train", "--adv", "pgd", "--beta", "3"], "--beta applies only with --adv trades or mart, got --adv pgd"),
    (["train", "--resume"], "--resume applies only with --adv"),
    (["train", "--adv", "trades", "--no-early-stop"], "--no-early-stop applies only with --adv pgd, got --adv trades"),
    (["train", "--final-n", "5"], "--final-n applies only with --adv fgsm-rs or pgd or trades or mart, got --adv none"),
    (["train", "--adv", "pgd", "--final-n", "-1"], "--final-n must be >= 0, got -1"),
    (["train", "--train-size", "70000"], "--train-size must be <= 60000"),
])
def test_conflicting_or_out_of_range_options(argv, message, tiny_checkpoint, tmp_path, capsys):
    if argv[0] in ("attack", "eval"):
        argv = argv + ["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "out")]
    else:
        argv = argv + ["--checkpoint", str(tmp_path / "m.pt"), "--epochs", "1"]
    assert main(argv + ["--data-dir", str(DATA_DIR), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()


def test_a_reused_output_folder_holds_no_stale_files(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--checkpoint", str(tiny_checkpoint), "--data-dir", str(DATA_DIR), "--out", str(out), "--quiet"]
    assert main(["attack", "--n", "10", "--steps", "2"] + common) == 0
    (out / "mine.txt").write_text("the user's own file")
    assert main(["eval", "--attacks", "fgsm", "--eps", "0,0.1", "--n", "20", "--no-checks"] + common) == 0
    report = json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(report["files"] + ["mine.txt"])
    assert "examples.png" not in report["files"]  # the attack's picture would have stayed before
    assert report["robust_acc"]["0"] == report["clean_acc"]
    assert main(["attack", "--n", "10", "--steps", "2"] + common) == 0
    assert sorted(p.name for p in out.iterdir()) == ["examples.png", "mine.txt", "report.json"]


# -------------------------------------------------------------- mixed precision
@pytest.mark.slow
def test_attack_and_eval_with_precision(tiny_checkpoint, tmp_path, capsys):
    common = ["--checkpoint", str(tiny_checkpoint), "--data-dir", str(DATA_DIR), "--quiet", "--n", "40"]
    assert main(["attack", "--attack", "pgd", "--steps", "3", "--precision", "bf16",
                 "--out", str(tmp_path / "a"), *common]) == 0
    assert "search precision     bf16 (success decided in fp32)" in capsys.readouterr().out
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["attack"]["precision"] == "bf16" and report["precision_used"] == "bf16"

    assert main(["eval", "--attacks", "fgsm,square", "--eps", "0.2", "--precision", "bf16",
                 "--out", str(tmp_path / "e"), *common]) == 0
    assert "search precision fgsm bf16, square fp32 (success decided in fp32)" in capsys.readouterr().out
    settings = json.loads((tmp_path / "e" / "report.json").read_text())["settings"]
    assert settings["precision"] == "bf16" and settings["precision_used"] == {"fgsm": "bf16", "square": "fp32"}


def test_precision_an_attack_refuses_is_one_clear_line(tiny_checkpoint, tmp_path, capsys):
    code = main(["attack", "--attack", "square", "--precision", "bf16", "--checkpoint", str(tiny_checkpoint),
                 "--data-dir", str(DATA_DIR), "--out", str(tmp_path / "s"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "--precision must be 'fp32' or 'auto' for this attack (its search needs fp32), got 'bf16'" in err


def test_fp16_training_on_the_cpu_is_refused_before_any_work(tmp_path, capsys):
    code = main(["train", "--precision", "fp16", "--checkpoint", str(tmp_path / "m.pt"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "precision 'fp16' trains only on a CUDA device" in err
    assert not (tmp_path / "m.pt").exists()


# ---------------------------------------------------------------- certification
def test_certify_end_to_end(tiny_checkpoint, tmp_path, capsys):
    import csv

    out = tmp_path / "cert"
    code = main(["certify", "--checkpoint", str(tiny_checkpoint), "--eps", "0.002,0.01", "--n", "40",
                 "--method", "crown-ibp", "--data-dir", str(DATA_DIR), "--out", str(out), "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "certified accuracy (crown-ibp, Linf; a proved lower bound)" in text
    report = json.loads((out / "report.json").read_text())
    cert = report["certified_acc"]
    assert set(cert) == {"0.002", "0.01"} and 0 <= cert["0.01"] <= cert["0.002"] <= report["clean_acc"]
    rows = list(csv.DictReader((out / "per_sample.csv").open()))
    assert len(rows) == 40 and {"margin_lb@0.002", "certified@0.01"} <= set(rows[0])
    certified = [int(r["certified@0.002"]) for r in rows]
    assert sum(certified) / 40 == pytest.approx(cert["0.002"])
    assert all((float(r["margin_lb@0.002"]) > 0) == bool(c) for r, c in zip(rows, certified))
    assert Image.open(out / "curve.png").size[0] > 100


def test_the_cli_certifies_at_each_sigma_and_writes_its_report(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "smooth"
    code = main(["certify", "--checkpoint", str(tiny_checkpoint), "--method", "smoothing", "--sigma", "0.5,0.25",
                 "--n", "6", "--samples", "200", "--n0", "20", "--alpha", "0.01", "--eps", "0.25,0.5",
                 "--data-dir", str(DATA_DIR), "--out", str(out), "--quiet"])
    assert code == 0
    assert "certified accuracy at L2 radius:" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["sigmas"] == [0.25, 0.5] and report["settings"]["samples"] == 200
    rows = list(csv.DictReader((out / "per_sample.csv").open()))
    assert len(rows) == 6
    for sigma in ("0.25", "0.5"):
        radius = [float(r[f"radius@{sigma}"]) for r in rows]
        answered = [r[f"prediction@{sigma}"] != "abstain" for r in rows]
        assert all((r > 0) == a for r, a in zip(radius, answered))
        right = [a and int(r[f"prediction@{sigma}"]) == int(r["label"]) for r, a in zip(rows, answered)]
        for reported, acc in report["certified_acc"][sigma].items():
            assert acc == pytest.approx(sum(ok and x >= float(reported) for ok, x in zip(right, radius)) / 6)
    assert Image.open(out / "curve.png").size[0] > 100


@pytest.mark.parametrize("options, message", [
    (["--method", "smoothing", "--norm", "inf"], "--norm must be 2 with --method smoothing"),
    (["--method", "smoothing", "--sigma", "0.5,-1"], "--sigma must be > 0, got -1"),
    (["--method", "smoothing", "--samples", "5"], "--samples must be >= 10 at alpha=0.001"),
    (["--method", "smoothing", "--n0", "0"], "--n0 must be >= 1, got 0"),
    (["--method", "smoothing", "--alpha", "0"], "--alpha must be > 0, got 0"),
    (["--method", "smoothing", "--timeout", "5"], "--timeout applies only with --method bab"),
    (["--samples", "100"], "--samples applies only with --method smoothing, got --method crown"),
])
def test_bad_smoothing_options_are_one_line_and_write_nothing(tiny_checkpoint, tmp_path, capsys, options, message):
    out = tmp_path / "smooth"
    code = main(["certify", "--checkpoint", str(tiny_checkpoint), "--n", "2", "--data-dir", str(DATA_DIR),
                 "--out", str(out), "--quiet", *options])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (out / "report.json").exists()


def test_eval_attacks_the_smoothed_model_with_eot_and_majority_votes(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "smoothed"
    code = main(["eval", "--checkpoint", str(tiny_checkpoint), "--smoothing", "0.25", "--norm", "2", "--eps", "0.5",
                 "--attacks", "pgd", "--steps", "3", "--eot", "2", "--votes", "3", "--n", "8",
                 "--data-dir", str(DATA_DIR), "--out", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "tiny.pt smoothed at sigma 0.25" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["smoothing"] == {"sigma": 0.25}
    assert report["settings"]["eot"] == 2 and report["settings"]["votes"] == 3
    assert "a randomized model" in report["settings"]["adaptations"]["eot"]  # the noise was seen, and seeded
    assert report["settings"]["attacks"][0] == "pgd" and "apgd" in report["settings"]["attacks"]


@pytest.mark.parametrize("options, message", [
    (["--smoothing", "0"], "--smoothing must be a noise level > 0, got 0"),
    (["--smoothing", "0.5", "--no-adapt"], "--smoothing needs the adaptation to a randomized model"),
    (["--smoothing", "0.5", "--certify"], "--certify bounds the network itself, not its smoothing"),
])
def test_bad_eval_smoothing_options_are_one_line_and_write_nothing(tiny_checkpoint, tmp_path, capsys, options,
                                                                    message):
    out = tmp_path / "ev"
    code = main(["eval", "--checkpoint", str(tiny_checkpoint), "--n", "2", "--data-dir", str(DATA_DIR),
                 "--out", str(out), "--quiet", *options])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_what_eval_finds_on_the_smoothed_model_respects_the_certified_radii(tmp_path, capsys):
    """A noise-trained model, certified (CERTIFY, alpha 0.01), then attacked (the adapted
    cascade with EOT, 31-draw majority verdicts) at eps 0.2: an image certified at radius
    >= 0.4 keeps the smoothed prediction within 0.2 with p_A >= Phi(0.8) ~ 0.79 (Cohen et
    al.'s bound), so a 31-draw verdict misses it with probability < 0.001. At eps 2.5, far
    beyond every radius 500 samples can certify, the same attacks break images: not a no-op."""
    sigma = "0.25"
    checkpoint = train_checkpoint(tmp_path / "noisy.pt", "--adv", "gaussian", "--sigma", sigma, "--epochs", "2",
                                  "--train-size", "6000", "--holdout", "100")
    common = ["--checkpoint", str(checkpoint), "--n", "40", "--data-dir", str(DATA_DIR), "--quiet"]
    assert main(["certify", "--method", "smoothing", "--sigma", sigma, "--n0", "50", "--samples", "500",
                 "--alpha", "0.01", "--eps", "0.4", "--out", str(tmp_path / "cert"), *common]) == 0
    assert main(["eval", "--smoothing", sigma, "--norm", "2", "--eps", "0.2,2.5", "--attacks", "pgd", "--steps", "20",
                 "--eot", "8", "--votes", "31", "--out", str(tmp_path / "ev"), *common]) == 0
    certified = list(csv.DictReader((tmp_path / "cert" / "per_sample.csv").open()))
    attacked = list(csv.DictReader((tmp_path / "ev" / "per_sample.csv").open()))
    assert [r["label"] for r in certified] == [r["label"] for r in attacked]
    sure = [a for c, a in zip(certified, attacked)
            if c[f"prediction@{sigma}"] == c["label"] and float(c[f"radius@{sigma}"]) >= 0.4]
    assert len(sure) >= 15
    assert sum(a["robust@0.2"] == "0" for a in sure) <= 1
    assert sum(a["robust@2.5"] == "0" for a in sure) >= len(sure) // 2


def test_eval_with_certify_gives_the_interval(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "ev"
    code = main(["eval", "--checkpoint", str(tiny_checkpoint), "--attacks", "pgd", "--steps", "5", "--eps", "0.002",
                 "--n", "40", "--certify", "ibp", "--data-dir", str(DATA_DIR), "--out", str(out), "--quiet"])
    assert code == 0
    assert "certified  unresolved" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["certify"] == "ibp"
    assert 0 <= report["certified_acc"]["0.002"] <= report["robust_acc"]["0.002"]
    header = (out / "per_sample.csv").read_text().splitlines()[0]
    assert "status@0.002" in header and "margin_lb@0.002" in header


@pytest.mark.parametrize("argv,message", [
    (["certify", "--eps", "-0.1"], "--eps must be comma-separated numbers >= 0"),
    (["certify", "--eps", "0.1", "--n", "0"], "--n must be >= 1"),
    (["train", "--adv", "pgd", "--kappa", "0.5"], "--kappa applies only with --adv ibp or crown-ibp or sabr"),
    (["train", "--adv", "ibp", "--kappa", "2"], "--kappa must be <= 1"),
    (["train", "--adv", "sabr", "--box-share", "0"], "--box-share (SABR's lambda) must be in (0, 1]"),
    (["train", "--adv", "cc-ibp", "--mix", "1.5"], "--mix must be <= 1, got 1.5"),
    (["train", "--adv", "ibp", "--box-share", "0.5"], "--box-share applies only with --adv sabr, got --adv ibp"),
    (["train", "--adv", "sabr", "--mix", "0.5"], "--mix applies only with --adv mtl-ibp or cc-ibp, got --adv sabr"),
])
def test_certify_and_certified_training_options(argv, message, tiny_checkpoint, tmp_path, capsys):
    extra = ["--checkpoint", str(tiny_checkpoint)] if argv[0] == "certify" else ["--checkpoint", str(tmp_path / "c.pt")]
    assert main(argv + extra + ["--data-dir", str(DATA_DIR), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_an_uncertifiable_model_is_one_clear_line(tmp_path, capsys, monkeypatch):
    from torch import nn

    import advx.models
    from advx.checkpoint import save_checkpoint

    class Smooth(nn.Module):
        def __init__(self, num_classes=10, input_shape=(1, 28, 28)):  # the contract of advx.models.MODELS
            super().__init__()
            self.fc = nn.Linear(784, num_classes)

        def forward(self, x):
            return self.fc(torch.tanh(x.flatten(1)))

    monkeypatch.setitem(advx.models.MODELS, "smooth", Smooth)
    path = tmp_path / "smooth.pt"
    save_checkpoint(path, Smooth(), model_name="smooth", config={}, metrics={})
    code = main(["certify", "--checkpoint", str(path), "--n", "5", "--data-dir", str(DATA_DIR),
                 "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    # An untrained model may be near chance: that warning comes up front, on a line of its own.
    err = "".join(line for line in err.splitlines(keepends=True) if not line.startswith("WARNING"))
    assert code == 2 and err.count("\n") == 1
    assert "tanh" in err and "supported: Conv2d, Linear, ReLU" in err


@pytest.mark.slow
def test_certified_training_command(tmp_path, capsys):
    from advx.checkpoint import load_checkpoint

    path = tmp_path / "cert.pt"
    argv = ["train", "--model", "cert", "--adv", "ibp", "--eps", "0.05", "--epochs", "2", "--train-size", "3000",
            "--holdout", "300", "--warmup-epochs", "1", "--batch-size", "100", "--lr", "2e-3",
            "--data-dir", str(DATA_DIR), "--checkpoint", str(path), "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "certified training (ibp, eps 0.05)" in text and "held-out certified accuracy (IBP)" in text
    best = load_checkpoint(path)["metrics"]["best"]
    assert 0 <= best["cert_acc"] <= best["clean_acc_holdout"]
    assert main(argv + ["--resume"]) == 0  # nothing left to do: the last epoch is on disk
    assert "held-out certified accuracy" in capsys.readouterr().out


def test_eval_certify_on_an_uncertifiable_model_fails_before_any_attack(tmp_path, capsys, monkeypatch):
    import sys

    from torch import nn

    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    program = torch.export.export(net, (torch.rand(4, 1, 28, 28),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "net.pt2")
    monkeypatch.setattr(sys.modules["advx.evaluate"], "_stage_results", _no_work)  # no attack may start
    code = main(["eval", "--model", str(tmp_path / "net.pt2"), "--certify", "crown", "--suite", "strong",
                 "--n", "20", "--data-dir", str(DATA_DIR), "--out", str(tmp_path / "o"), "--quiet"])
    err = "".join(line for line in capsys.readouterr().err.splitlines(keepends=True) if not line.startswith("WARN"))
    assert code == 2 and err.count("\n") == 1 and "cannot certify an exported program" in err


def test_fewer_norms_into_a_used_folder_leave_no_stale_norm_folders(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["eval", "--attacks", "fgsm", "--n", "10", "--checkpoint", str(tiny_checkpoint), "--data-dir",
              str(DATA_DIR), "--out", str(out), "--no-checks", "--quiet"]
    assert main([*common, "--norm", "inf,2,1"]) == 0
    (out / "L2" / "mine.txt").write_text("the user's own file")
    assert main([*common, "--norm", "inf,1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["L1", "L2", "Linf", "report.json"]
    assert [p.name for p in (out / "L2").iterdir()] == ["mine.txt"]  # advx's files went, the user's stayed
    assert main([*common, "--norm", "inf"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(report["files"] + ["L2"])
    assert report["settings"]["norm"] == "inf"


def test_an_error_inside_a_users_model_is_one_line_and_its_traceback_on_request(tmp_path, capsys, monkeypatch):
    (tmp_path / "picky.py").write_text(
        "import torch\n"
        "from torch import nn\n\n"
        "class Picky(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(784, 10)\n\n"
        "    def forward(self, x):\n"
        "        if len(x) > 2:\n"
        "            raise RuntimeError('batches of more than 2 images are not supported\\nsecond line')\n"
        "        return self.fc(x.flatten(1))\n")
    argv = ["eval", "--model", f"{tmp_path / 'picky.py'}:Picky", "--attacks", "fgsm", "--eps", "0.1", "--n", "10",
            "--data-dir", str(DATA_DIR), "--out", str(tmp_path / "o"), "--no-checks", "--quiet"]
    assert main(argv) == 1  # the 2-image check passes; the evaluation's batches of 10 do not
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("advx eval: error: RuntimeError: batches of more than 2 images are not supported "
                          "(set ADVX_TRACEBACK=1 to see where)")
    monkeypatch.setenv("ADVX_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="batches of more than 2"):
        main(argv)


def test_warnings_are_one_line_each(tiny_checkpoint, tmp_path, capsys):
    import warnings

    from advx.checkpoint import load_checkpoint

    old = tmp_path / "old.pt"
    ckpt = load_checkpoint(tiny_checkpoint)
    torch.save({k: v for k, v in ckpt.items() if k != "sha256"}, old)  # as an older advx wrote it
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert main(["attack", "--checkpoint", str(old), "--n", "5", "--steps", "1", "--data-dir", str(DATA_DIR),
                     "--out", str(tmp_path / "o"), "--quiet"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "content hash" in line]
    assert lines == [f"advx attack: warning: checkpoint: {old} holds no content hash (written by an older advx), "
                     f"so damage to its weights cannot be detected; saving it again adds one"]


@pytest.fixture(scope="module")
def cert_checkpoint(tmp_path_factory):
    """advx's certifiable CNN (no BatchNorm or max-pooling), trained briefly: fast to bound."""
    return train_checkpoint(tmp_path_factory.mktemp("cert") / "cert.pt", "--model", "cert", "--epochs", "1",
                            "--train-size", "3000", "--batch-size", "64")


def test_certify_bab_end_to_end(cert_checkpoint, tmp_path, capsys):
    import csv

    out = tmp_path / "bab"
    code = main(["certify", "--checkpoint", str(cert_checkpoint), "--eps", "0.003", "--n", "6", "--method", "bab",
                 "--timeout", "2", "--data-dir", str(DATA_DIR), "--out", str(out), "--quiet"])
    assert code == 0
    assert "branch and bound, per sample" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    counts = report["verdicts"]["0.003"]
    assert sum(counts.values()) == 6 and report["settings"]["timeout_per_sample"] == 2
    rows = list(csv.DictReader((out / "per_sample.csv").open()))
    assert all((r["verdict@0.003"] == "verified") == (r["certified@0.003"] == "1") for r in rows)
    assert sum(r["verdict@0.003"] == "falsified" for r in rows) == counts["falsified"]
    exact = report["exact_robust_acc"]["0.003"]
    assert exact is None if counts["unknown"] else exact == pytest.approx(counts["verified"] / 6)
    assert not (out / ".resume").exists()  # reported: the stored verdicts are no longer needed


@pytest.mark.slow
def test_certify_bab_resumes_what_a_killed_run_decided(cert_checkpoint, tmp_path, capsys, monkeypatch):
    """The store's mechanics, with a stand-in for branch and bound (its answers are tested in
    test_bab.py): a run killed after two verdicts keeps them; --resume decides only the rest."""
    import csv

    from advx.certify import bab, verdicts

    calls = []

    def stand_in(certifier, x, label, eps, **_):
        calls.append(label)
        if len(calls) == 3 and not resumed:
            raise KeyboardInterrupt
        return bab.Outcome("unknown", lower=-1.0, seconds=0.5)

    monkeypatch.setattr(verdicts, "branch_and_bound", stand_in)
    out = tmp_path / "bab"
    argv = ["certify", "--checkpoint", str(cert_checkpoint), "--eps", "0.1", "--n", "12", "--method", "bab",
            "--data-dir", str(DATA_DIR), "--out", str(out), "--quiet"]
    resumed = False
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "2 verdicts are kept in" in err and "add --resume" in err
    first, resumed = len(calls) - 1, True
    calls.clear()
    assert main(argv + ["--resume"]) == 0
    assert "resumed: 2 verdicts read back" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "per_sample.csv").open()))
    open_ = sum(r["verdict@0.1"] == "unknown" for r in rows)
    assert first == 2 and len(calls) == open_ - 2 > 0  # the two decided before the kill were not redone


@pytest.mark.parametrize("argv,message", [
    (["certify", "--method", "bab", "--timeout", "0"], "--timeout must be > 0 seconds per sample, got 0"),
    (["certify", "--method", "crown", "--resume"], "--resume applies only with --method bab, got --method crown"),
    (["eval", "--certify", "bab", "--timeout", "-1"], "--timeout must be > 0 seconds per sample, got -1"),
])
def test_bab_options(argv, message, cert_checkpoint, capsys):
    assert main(argv + ["--checkpoint", str(cert_checkpoint), "--data-dir", str(DATA_DIR), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
