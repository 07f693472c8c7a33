"""Bring your own model and data: a user's module (import string + weights), an exported
program (.pt2), input normalization (--mean/--std) and Fashion-MNIST, end to end through
the CLI, and the clear errors when something does not fit."""

import copy
import hashlib
import json
import logging
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR, train_checkpoint
from torch import nn

from advx import PGD
from advx.certify import Certifier
from advx.checkpoint import load_checkpoint
from advx.cli import main
from advx.loading import ModelLoadError, load_exported, load_weights, model_from_import
from advx.models import Normalized
from advx.subject import load_subject
from advx.validate import InputError

MEAN, STD = 0.5, 0.1  # the normalization the user's "normalized" model expects

USER_MODULE = f'''
from torch import nn


class Net(nn.Module):  # the layout of the tests' TinyCNN, so its trained weights fit
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(32 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


class ExpectsNormalized(Net):
    """Trained, in effect, on (x - {MEAN}) / {STD}: it undoes that first."""

    def forward(self, z):
        return super().forward(z * {STD} + {MEAN})


class ExpectsMinusOneToOne(Net):
    """Trained, in effect, on (x - 0.5) / 0.5, the common [-1, 1] convention."""

    def forward(self, z):
        return super().forward(z * 0.5 + 0.5)


def build():
    return Net()


def wrong_shape():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 7))


NOT_A_MODEL = 3
'''


@pytest.fixture
def user_module(tmp_path, trained_cnn, request):
    """A module file written the way a user would, with a unique name, and the trained
    weights saved as a plain state_dict beside it."""
    name = f"usernets_{hashlib.md5(request.node.nodeid.encode()).hexdigest()[:10]}"  # a fresh module each test
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    torch.save(trained_cnn.state_dict(), tmp_path / "weights.pt")
    return tmp_path, name


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def eval_args(out, *more):
    return ["eval", "--attacks", "fgsm,pgd", "--eps", "0.1,0.3", "--steps", "5", "--n", "60",
            "--data-dir", str(DATA_DIR), "--out", str(out), "--quiet", "--no-checks", *more]


def test_eval_a_module_and_its_weights_end_to_end(user_module, trained_cnn, mnist_test, capsys, monkeypatch):
    folder, name = user_module
    monkeypatch.chdir(folder)  # an import string resolves against the current folder, as python -m does
    code, out, err = run(eval_args(folder / "run", "--model", f"{name}:build", "--weights", "weights.pt"), capsys)
    assert code == 0, err
    assert "clean accuracy" in out.splitlines()[0] and "WARNING" not in err
    report = json.loads((folder / "run" / "report.json").read_text())
    assert report["model"] == f"{name}:build" and report["checkpoint"] == "weights.pt"
    assert report["dataset"] == "mnist" and report["classes"][:2] == ["0", "1"]
    with torch.no_grad():  # the figures are those of the user's weights, not of a fresh model
        expected = (trained_cnn(mnist_test.x[:60]).argmax(1) == mnist_test.y[:60]).float().mean().item()
    assert report["clean_acc"] == pytest.approx(expected)
    assert report["robust_acc"]["0.3"] < report["clean_acc"]


def test_a_module_file_path_works_too(user_module, capsys):
    folder, _ = user_module
    path = sorted(folder.glob("usernets_*.py"))[0]
    code, out, err = run(eval_args(folder / "run", "--model", f"{path}:build", "--weights",
                                   str(folder / "weights.pt")), capsys)
    assert code == 0, err
    assert json.loads((folder / "run" / "report.json").read_text())["clean_acc"] > 0.9


def test_eval_an_exported_program_end_to_end(trained_cnn, mnist_test, tmp_path, capsys):
    batch = torch.export.Dim("batch")
    program = torch.export.export(copy.deepcopy(trained_cnn).eval(), (mnist_test.x[:4],),
                                  dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "tiny.pt2")
    code, out, err = run(eval_args(tmp_path / "run", "--model", str(tmp_path / "tiny.pt2")), capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["clean_acc"] > 0.9 and report["robust_acc"]["0.3"] < report["clean_acc"]

    # The attacks treat it as any module: the same images break as on the original model.
    code, out, err = run(["certify", "--model", str(tmp_path / "tiny.pt2"), "--n", "5", "--data-dir", str(DATA_DIR),
                          "--out", str(tmp_path / "c"), "--quiet"], capsys)
    assert code == 2 and "cannot certify an exported program" in err and "--model MODULE:NAME --weights" in err

    exported = load_exported(tmp_path / "tiny.pt2")
    x, y = mnist_test.x[:20], mnist_test.y[:20]
    a = PGD(exported, eps=0.1, steps=5).run(x, y)
    b = PGD(trained_cnn, eps=0.1, steps=5).run(x, y)
    assert torch.equal(a.success, b.success)
    assert torch.allclose(a.x_adv, b.x_adv, atol=1e-4)


def test_a_program_exported_in_training_mode_is_refused(bn_model, tmp_path):
    program = torch.export.export(bn_model.train(), (torch.rand(4, 1, 28, 28),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "train-mode.pt2")
    with pytest.raises(ModelLoadError, match="exported in training mode.*model.eval\\(\\) before torch.export"):
        load_exported(tmp_path / "train-mode.pt2")



def test_a_program_exported_for_one_batch_size_is_refused_and_the_advice_works(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    torch.export.save(torch.export.export(net, (torch.rand(2, 1, 28, 28),)), tmp_path / "fixed.pt2")
    with pytest.raises(ModelLoadError, match=r"fixed.pt2 was exported for batches of exactly 2 images.*"
                                             r"dynamic_shapes=\(\{0: torch.export.Dim\('batch'\)\},\)"):
        load_exported(tmp_path / "fixed.pt2")
    program = torch.export.export(net, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "dynamic.pt2")
    exported = load_exported(tmp_path / "dynamic.pt2")
    for size in (1, 2, 7):
        x = torch.rand(size, 1, 28, 28)
        assert torch.allclose(exported(x), net(x), atol=1e-6)


@pytest.mark.parametrize("kind", ["truncated", "text", "state_dict"])
def test_a_file_that_is_not_an_exported_program_is_one_error_and_no_log(kind, tmp_path, capfd, caplog):
    path = tmp_path / f"{kind}.pt2"
    if kind == "truncated":
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
        program = torch.export.export(net, (torch.rand(2, 1, 28, 28),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, tmp_path / "whole.pt2")
        whole = (tmp_path / "whole.pt2").read_bytes()
        path.write_bytes(whole[:len(whole) // 2])
    elif kind == "text":
        path.write_text("not a model\n")
    else:
        torch.save({"fc.weight": torch.zeros(10, 784)}, path)
    capfd.readouterr()
    caplog.clear()
    def loggers():
        return {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers),
                       logging.getLogger(name).propagate) for name in ("torch", "torch.export", "torch._export")}

    before = loggers()
    with pytest.raises(ModelLoadError, match=re.escape(f"model: {path} is not an exported program")):
        load_exported(path)
    assert capfd.readouterr() == ("", "")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("torch")] == []
    assert loggers() == before


def _user_file(folder, name, text):
    (folder / name).write_text(textwrap.dedent(text))
    return folder / name


def test_a_model_file_may_use_dataclasses_with_postponed_annotations(tmp_path):
    path = _user_file(tmp_path, "dc_nets.py", """
        from __future__ import annotations

        from dataclasses import dataclass

        from torch import nn


        @dataclass
        class Config:
            width: int = 8


        def build():
            return nn.Sequential(nn.Flatten(), nn.Linear(784, Config().width))
        """)
    assert model_from_import(f"{path}:build")(torch.rand(3, 1, 28, 28)).shape == (3, 8)
    broken = _user_file(tmp_path, "dc_broken.py", "raise RuntimeError('at import')\n")
    with pytest.raises(ModelLoadError, match="cannot import .*RuntimeError: at import"):
        model_from_import(f"{broken}:build")
    assert not [name for name in sys.modules if name.endswith("dc_broken")]


def test_a_model_file_imports_the_modules_beside_it(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "advx_test_layers_beside", raising=False)
    _user_file(folder, "advx_test_layers_beside.py", "from torch import nn\nHEAD = nn.Linear(784, 10)\n")
    path = _user_file(folder, "nets.py", """
        from torch import nn

        import advx_test_layers_beside


        def build():
            return nn.Sequential(nn.Flatten(), advx_test_layers_beside.HEAD)
        """)
    before = list(sys.path)
    assert model_from_import(f"{path}:build")(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert sys.path == before
    broken = _user_file(folder, "broken.py", "import advx_test_no_such_sibling\n")
    with pytest.raises(ModelLoadError, match="No module named 'advx_test_no_such_sibling'"):
        model_from_import(f"{broken}:build")
    assert sys.path == before


@pytest.mark.parametrize("mean, std, message", [
    ([0.5] * 3, [0.5] * 3, r"^mean must hold one value per channel \(MNIST images have 1 channel\), got 3 values$"),
    ([0.5], [0.5, 0.5], r"^std must hold one value per channel \(MNIST images have 1 channel\), got 2 values$"),
    ([0.5], [0.0], r"^std must hold numbers > 0, got \[0.0\]$"),
])
def test_a_normalization_that_does_not_fit_the_images_is_refused_before_the_model_loads(mean, std, message):
    with pytest.raises(InputError, match=message):
        load_subject(model="no_such_module_anywhere:build", normalization=(mean, std), data_dir=DATA_DIR)


def test_mean_std_gives_the_model_its_input_and_a_wrong_one_is_flagged(user_module, capsys, monkeypatch):
    folder, name = user_module
    monkeypatch.chdir(folder)
    model = ["--model", f"{name}:ExpectsNormalized", "--weights", "weights.pt"]

    code, out, err = run(eval_args(folder / "right", *model, "--mean", str(MEAN), "--std", str(STD)), capsys)
    assert code == 0, err
    right = json.loads((folder / "right" / "report.json").read_text())
    assert right["clean_acc"] > 0.9 and "WARNING" not in err
    assert right["normalization"] == {"mean": [MEAN], "std": [STD]}
    assert f"normalized: mean [{MEAN}], std [{STD}]" in out

    code, out, err = run(eval_args(folder / "none", *model), capsys)  # forgot --mean/--std
    assert code == 0
    forgot = json.loads((folder / "none" / "report.json").read_text())
    assert forgot["clean_acc"] < 0.2
    assert "near chance" in err and "normalization" in err and "--mean/--std" in err

    code, out, err = run(eval_args(folder / "wrong", *model, "--mean", "0.9", "--std", "0.9"), capsys)
    assert code == 0
    assert "near chance" in err and "check the --mean/--std given" in err


def test_a_model_expecting_a_usual_normalization_is_told_which(user_module, capsys, monkeypatch):
    """Not near chance, but far below what the model does on the input it expects: advx
    tries the usual normalizations (the dataset's, and [-1, 1]) and names the one that fits."""
    folder, name = user_module
    monkeypatch.chdir(folder)
    code, out, err = run(eval_args(folder / "run", "--model", f"{name}:ExpectsMinusOneToOne", "--weights",
                                   "weights.pt"), capsys)
    assert code == 0
    assert "near chance" not in err and "it most likely expects that input; pass --mean 0.5 --std 0.5" in err
    code, out, err = run(eval_args(folder / "run", "--model", f"{name}:ExpectsMinusOneToOne", "--weights",
                                   "weights.pt", "--mean", "0.5", "--std", "0.5"), capsys)
    assert code == 0 and "WARNING" not in err


def test_check_normalization_names_the_candidate_that_fits(trained_cnn, mnist_test):
    from advx.sanity import check_normalization

    expects = nn.Sequential(nn.Identity())
    expects.forward = lambda z: trained_cnn(z * 0.5 + 0.5)  # trained, in effect, on [-1, 1]
    x, y = mnist_test.x[:300], mnist_test.y[:300]
    candidates = [None, (0.1307, 0.3081), (0.5, 0.5)]
    warning = check_normalization(expects, x, y, given=None, candidates=candidates)
    assert warning is not None and "pass --mean 0.5 --std 0.5" in warning and "as pixels in [0, 1]" in warning
    assert check_normalization(expects, x, y, given=(0.5, 0.5), candidates=candidates) is None
    assert check_normalization(trained_cnn, x, y, given=None, candidates=candidates) is None
    warning = check_normalization(trained_cnn, x, y, given=(0.5, 0.5), candidates=candidates)
    assert warning is not None and "leave out --mean/--std" in warning


def test_eps_stays_in_pixel_space_behind_a_normalization(trained_cnn, mnist_test):
    """The wrapped model is the same function of the pixels: an attack on it finds the same
    perturbation, inside the same pixel-space ball, as on the model it wraps."""
    inner = nn.Sequential(nn.Identity())
    inner.forward = lambda z: trained_cnn(z * STD + MEAN)  # expects normalized input
    wrapped = Normalized(inner, MEAN, STD)
    x, y = mnist_test.x[:30], mnist_test.y[:30]
    a, b = PGD(wrapped, eps=0.1, steps=5).run(x, y), PGD(trained_cnn, eps=0.1, steps=5).run(x, y)
    assert (a.x_adv - x).abs().max() <= 0.1 + 1e-6 and a.x_adv.min() >= 0 and a.x_adv.max() <= 1
    assert torch.allclose(a.x_adv, b.x_adv, atol=1e-4) and torch.equal(a.success, b.success)


def test_certificates_see_through_the_normalization(mnist_test):
    """Bound propagation reads ``Normalized`` as a per-channel affine layer: its bounds hold
    for sampled points of the pixel-space ball (soundness), and equal those of the
    unwrapped model with the normalization folded into the first layer."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 4, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 13 * 13, 10)).eval()
    wrapped = Normalized(net, MEAN, STD).eval()
    folded = copy.deepcopy(net)
    with torch.no_grad():
        folded[0].bias += -MEAN / STD * folded[0].weight.sum((1, 2, 3))
        folded[0].weight /= STD
    x = mnist_test.x[:16]
    y = wrapped(x).argmax(1)
    lower = Certifier(wrapped, (1, 28, 28), method="crown")(x, y, eps=0.002).lower
    assert torch.allclose(lower, Certifier(folded, (1, 28, 28), method="crown")(x, y, eps=0.002).lower, atol=1e-3)
    for _ in range(20):
        xs = (x + 0.002 * (2 * torch.rand_like(x) - 1)).clamp(0, 1)
        with torch.no_grad():
            z = wrapped(xs)
        margin = (z.gather(1, y[:, None]) - z).scatter(1, y[:, None], float("inf")).amin(1)
        assert (margin >= lower - 1e-4).all()


@pytest.mark.parametrize("argv, message", [
    (["--model", "no_such_module_anywhere:build"], "--model: cannot import 'no_such_module_anywhere'"),
    (["--model", "{name}:missing"], "has no 'missing'"),
    (["--model", "{name}:NOT_A_MODEL"], "is a int, expected a function or class"),
    (["--model", "{name}:wrong_shape"], "must return logits [N, 10] (one score per class), got shape [2, 7]"),
    (["--model", "{name}:build", "--weights", "nothing.pt"], "--weights: no file at nothing.pt"),
    (["--model", "{name}:build", "--weights", "{name}.py"], "could not be read as a state_dict"),
    (["--model", "build"], "--model must be MODULE:NAME"),
    (["--model", "{name}:build", "--checkpoint", "x.pt"], "and --checkpoint x.pt exclude each other"),
    (["--weights", "weights.pt"], "--weights weights.pt goes with --model MODULE:NAME"),
    (["--model", "{name}:build", "--mean", "0.5"], "--mean and --std go together"),
    (["--model", "{name}:build", "--mean", "0.5", "--std", "0"], "--std must hold numbers > 0"),
    (["--model", "{name}:build", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"],
     "--mean must hold one value per channel (MNIST images have 1 channel), got 3 values"),
    (["--model", "missing.pt2"], "--model: no file at missing.pt2"),
])
def test_a_model_that_does_not_load_or_fit_is_one_clear_line(argv, message, user_module, capsys, monkeypatch):
    folder, name = user_module
    monkeypatch.chdir(folder)
    argv = [a.replace("{name}", name) for a in argv]
    code, out, err = run(eval_args(folder / "run", *argv), capsys)
    assert code == 2
    assert message in err and err.startswith("advx eval: error:") and err.count("\n") == 1
    assert not (folder / "run" / "report.json").exists()


def test_weights_that_do_not_fit_name_the_keys(user_module, monkeypatch):
    folder, name = user_module
    monkeypatch.chdir(folder)
    torch.save({"other.weight": torch.zeros(3)}, folder / "other.pt")
    with pytest.raises(ModelLoadError, match="weights: other.pt does not fit the model: 8 missing "
                                             "\\(net.0.weight, net.0.bias, net.2.weight, ...\\); 1 unexpected "
                                             "\\(other.weight\\)"):
        model_from_import(f"{name}:build", "other.pt")
    state = {k: v for k, v in torch.load(folder / "weights.pt").items()}
    state["net.7.weight"] = torch.zeros(5, 64)
    torch.save(state, folder / "shape.pt")
    with pytest.raises(ModelLoadError, match="1 of another shape \\(net.7.weight \\[5, 64\\] "
                                             "\\(the model's: \\[10, 64\\]\\)\\)"):
        model_from_import(f"{name}:build", "shape.pt")


# ------------------------------------------------------------------ Fashion-MNIST


@pytest.fixture(scope="module")
def fashion_checkpoint(tmp_path_factory):
    return train_checkpoint(tmp_path_factory.mktemp("fashion") / "tiny.pt", "--dataset", "fashion-mnist",
                            "--epochs", "1", "--train-size", "4000")


def test_a_checkpoint_records_its_dataset_and_commands_follow_it(fashion_checkpoint, tmp_path, capsys):
    ckpt = load_checkpoint(fashion_checkpoint)
    assert ckpt["dataset"] == "fashion-mnist" and ckpt["num_classes"] == 10 and ckpt["input_shape"] == [1, 28, 28]
    assert ckpt["config"]["dataset"] == "fashion-mnist"
    assert ckpt["metrics"]["test_acc"] > 0.6  # one epoch on 4,000 Fashion-MNIST images

    code, out, err = run(["attack", "--checkpoint", str(fashion_checkpoint), "--n", "20", "--steps", "5",
                          "--data-dir", str(DATA_DIR), "--out", str(tmp_path / "a"), "--quiet"], capsys)
    assert code == 0, err
    assert "Fashion-MNIST test images" in out
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["dataset"] == "fashion-mnist" and report["classes"][9] == "Ankle boot"
    assert report["attack"]["eps"] == 0.1  # the dataset's standard Linf budget, not MNIST's 0.3

    code, out, err = run(eval_args(tmp_path / "e", "--checkpoint", str(fashion_checkpoint)), capsys)
    assert code == 0, err
    rows = (tmp_path / "e" / "per_sample.csv").read_text().splitlines()
    assert rows[0].startswith("index,label,class,pred_clean")
    names = {line.split(",")[2] for line in rows[1:]}
    assert {"Ankle boot", "Trouser"} <= names


def test_a_dataset_that_does_not_match_the_checkpoint_is_refused(fashion_checkpoint, tmp_path, capsys):
    code, out, err = run(eval_args(tmp_path / "e", "--checkpoint", str(fashion_checkpoint), "--dataset", "mnist"),
                         capsys)
    assert code == 2
    assert "--dataset mnist does not match the checkpoint" in err and "trained on fashion-mnist" in err


# ------------------------------------------------------------------ the README's block

README = Path(__file__).resolve().parents[1] / "README.md"

MY_NETS = '''
from torch import nn


class Unnormalize(nn.Module):
    def forward(self, z):
        return z * 0.3530 + 0.2860


def my_net():
    """Stands in for the user's network: fed (x - mean) / std, it undoes that first."""
    return nn.Sequential(Unnormalize(), nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
'''


def test_the_readmes_three_ways_run(tmp_path, capsys, monkeypatch):
    """The README's "Bring your own model" block runs as written, its three models compute
    the same function, and each command it shows runs (on a few images)."""
    text = README.read_text()
    block = text.split("<!-- bring-your-own -->\n```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_nets.py").write_text(MY_NETS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ADVX_DATA", str(DATA_DIR))
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    first = Normalized(scope["net"], 0.2860, 0.3530).eval()
    with torch.no_grad():
        expected = first(scope["x"])
        for way in (scope["model"], Normalized(model_from_import("my_nets:my_net", "weights.pt"), 0.2860, 0.3530)):
            assert torch.allclose(way(scope["x"]), expected, atol=1e-5)
    assert set(scope["ev"].robust_acc) == {0.1}

    commands = [line.split("#", 1)[1].split() for line in block.splitlines() if line.startswith("#   advx ")]
    assert len(commands) == 2
    for i, command in enumerate(commands):
        argv = command[1:] + ["--attacks", "fgsm", "--eps", "0.1", "--n", "20", "--out", f"run{i}", "--quiet",
                              "--no-checks"]
        assert main(argv) == 0, capsys.readouterr().err
        report = json.loads((tmp_path / f"run{i}" / "report.json").read_text())
        assert report["dataset"] == "fashion-mnist" and report["normalization"] == {"mean": [0.286], "std": [0.353]}


def test_weights_from_a_damaged_advx_checkpoint_are_refused(tmp_path):
    from advx.checkpoint import save_checkpoint
    from advx.train import seeded_model

    path = tmp_path / "m.pt"
    model = seeded_model("small", 0)
    save_checkpoint(path, model, model_name="small")
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["classifier.1.bias"][3] += 1.0  # one weight changed, the stored hash kept
    torch.save(ckpt, path)
    with pytest.raises(ModelLoadError, match=r"weights: .*m.pt is damaged: its content does not match the SHA-256"):
        load_weights(seeded_model("small", 1), path)


@pytest.mark.parametrize("source, message", [
    ("import sys\nsys.exit(4)\n", r"model: cannot import .*odd\.py.*: SystemExit: 4$"),
    ("import sys\nfrom torch import nn\n\ndef build():\n    sys.exit(5)\n", r"calling .*build\(\) raised SystemExit: 5"),
    ("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.LazyLinear(10))\n",
     r"has lazy modules whose weights are not initialised yet \(1.weight, 1.bias\)"),
])
def test_a_model_file_that_exits_or_is_lazy_is_one_clear_line(source, message, tmp_path, capsys):
    from advx.cli import main

    (tmp_path / "odd.py").write_text(source)
    code = main(["eval", "--model", f"{tmp_path / 'odd.py'}:build", "--n", "5", "--data-dir", str(DATA_DIR),
                 "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and re.search(message, err), err


@pytest.mark.parametrize("option", ["--out", "--checkpoint"])
def test_an_empty_output_path_is_refused(option, tmp_path, capsys, monkeypatch):
    from advx.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["eval", "--out", ""] if option == "--out" else ["train", "--checkpoint", ""]
    assert main([*argv, "--data-dir", str(DATA_DIR), "--quiet"]) == 2
    assert f"{option} must name a" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


def test_importing_a_users_model_leaves_sys_path_as_it_was(tmp_path, monkeypatch):
    (tmp_path / "pkg_nets_for_path_test.py").write_text(
        "from torch import nn\n\ndef build():\n    import pkg_layers_for_path_test as layers\n"
        "    return nn.Sequential(nn.Flatten(), layers.head())\n")
    (tmp_path / "pkg_layers_for_path_test.py").write_text("from torch import nn\n\ndef head():\n"
                                                          "    return nn.Linear(784, 10)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    model = model_from_import("pkg_nets_for_path_test:build")  # its build imports a sibling late
    assert isinstance(model, torch.nn.Module) and sys.path == before
    model = model_from_import(f"{tmp_path / 'pkg_nets_for_path_test.py'}:build")
    assert isinstance(model, torch.nn.Module) and sys.path == before


@pytest.mark.parametrize("cast", ["double", "bfloat16"])
def test_a_model_in_another_precision_than_the_images_is_one_line_that_says_what_to_do(cast, tmp_path, capsys):
    from advx.cli import main

    (tmp_path / "other.py").write_text("from torch import nn\n\ndef build():\n"
                                       f"    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).{cast}()\n")
    code = main(["certify", "--model", f"{tmp_path / 'other.py'}:build", "--n", "5", "--data-dir", str(DATA_DIR),
                 "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    name = {"double": "float64", "bfloat16": "bfloat16"}[cast]
    assert code == 2 and err.count("\n") == 1
    assert f"holds {name} weights, and the images are float32: return the model in that precision" in err
