"""The model zoo (cards, shipped weights checked by SHA-256, ``zoo:NAME`` everywhere a checkpoint
goes), its retraining recipes, and the leaderboard rendered from its JSON."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DATA_DIR

import advx
from advx import zoo
from advx.checkpoint import load_checkpoint
from advx.cli import main
from advx.report import leaderboard

ROOT = Path(__file__).resolve().parent.parent
CARDS = zoo.cards()
SHIPPED = zoo.shipped()


def script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_card_is_complete_and_its_recipe_names_a_script():
    kinds = {"baseline", "robust", "certified", "smoothing"}
    assert {f"{d}-{k}" for d in ("mnist", "fashion-mnist") for k in kinds} == set(CARDS)
    for name, entry in CARDS.items():
        assert entry["dataset"] in advx.DATASETS and entry["model"] in advx.MODELS
        assert entry["file"] == f"weights/{name}.pt"
        train = entry["train"]
        assert (ROOT / "scripts" / train["script"]).is_file() and isinstance(train["args"], list)
        assert train["args"][train["args"].index("--seed") + 1] == str(train["seed"])
        if entry["dataset"] != "mnist":
            assert train["args"][train["args"].index("--dataset") + 1] == entry["dataset"]
        aim = entry["trained_for"]
        assert aim["norm"] in (None, "inf", "2") and aim["method"]
    listed = script("train_zoo")
    for name, entry in CARDS.items():  # the command list: one complete command per card
        argv = listed.command(entry, "out.pt")
        assert argv[:2] == ["python", f"scripts/{entry['train']['script']}"] and argv[-2:] == ["--checkpoint", "out.pt"]


def test_shipped_weights_match_their_cards_and_stay_small():
    assert SHIPPED, "the zoo ships no model"
    total = 0
    for name in SHIPPED:
        entry = CARDS[name]
        path = zoo.HERE / entry["file"]
        assert zoo.file_sha256(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
        ckpt = load_checkpoint(f"zoo:{name}")
        assert ckpt["dataset"] == entry["dataset"] and ckpt["model_name"] == entry["model"]
        train = entry["train"]
        assert train["command"].startswith(f"python scripts/{train['script']} {' '.join(train['args'])}")
        assert train["seconds"] > 0 and train["commit"] and train["date"]
        assert train["data_md5"] == {k: v for k, v in advx.get_dataset(entry["dataset"]).md5.items()
                                     if k.startswith("train")}
        total += path.stat().st_size
    assert total <= 10 * 2 ** 20


def test_a_zoo_name_loads_anywhere_a_checkpoint_goes():
    name = SHIPPED[0]
    model, ckpt = advx.load_model(f"zoo:{name}")
    assert not model.training and ckpt["dataset"] == CARDS[name]["dataset"]
    subject, test = advx.load_subject(f"zoo:{name}", n=200, data_dir=DATA_DIR)
    assert subject.source["checkpoint"] == f"zoo:{name}" and subject.clean_acc > 0.8 and len(test.y) == 200


def test_the_cli_loads_a_zoo_model(tmp_path, capsys):
    name = SHIPPED[0]
    code = main(["attack", "--checkpoint", f"zoo:{name}", "--attack", "fgsm", "--n", "20",
                 "--data-dir", str(DATA_DIR), "--out", str(tmp_path / "a"), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["checkpoint"] == f"zoo:{name}" and report["dataset"] == CARDS[name]["dataset"]


@pytest.mark.parametrize("spec, message", [
    ("zoo:nope", "zoo: no model named 'nope'; the zoo has mnist-baseline, "),
    ("zoo:", "zoo: no model named ''"),
])
def test_an_unknown_zoo_name_lists_the_known_ones(spec, message, tmp_path, capsys):
    with pytest.raises(zoo.ZooError, match=message):
        advx.load_model(spec)
    code = main(["attack", "--checkpoint", spec, "--n", "2", "--out", str(tmp_path / "a"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and not (tmp_path / "a" / "report.json").exists()


def test_a_zoo_file_that_does_not_match_its_card_is_refused(tmp_path, monkeypatch):
    name = SHIPPED[0]
    copy = tmp_path / "zoo"
    shutil.copytree(zoo.HERE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    path = copy / CARDS[name]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "HERE", copy)
    with pytest.raises(zoo.ZooError, match=f"zoo: {path} does not match its card .*refusing to load {name}"):
        advx.load_model(f"zoo:{name}")
    path.unlink()
    with pytest.raises(zoo.ZooError, match=f"zoo: {name}'s file {path} is missing"):
        advx.load_model(f"zoo:{name}")


def test_advx_zoo_lists_every_card_and_shows_one(capsys):
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert f"{len(SHIPPED)} models shipped" in out and all(f"zoo:{name}" in out for name in CARDS)
    assert main(["zoo", SHIPPED[0]]) == 0
    out = capsys.readouterr().out
    assert CARDS[SHIPPED[0]]["sha256"] in out and f"train_zoo.py --name {SHIPPED[0]}" in out
    assert main(["zoo", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(CARDS)


def test_the_readme_table_is_the_leaderboards_json():
    """Regenerated, never hand-edited: the README's table is the rendering of the JSON."""
    board = json.loads(zoo.LEADERBOARD.read_text())
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(leaderboard.README_START), readme.index(leaderboard.README_END)
    assert readme[start:end + len(leaderboard.README_END)] == leaderboard.readme_section(board)
    assert (ROOT / "docs" / "leaderboard.md").read_text() == leaderboard.markdown(board) + "\n"
    assert {row["name"] for row in board["rows"] if row["zoo"]} <= set(CARDS)
    for row in board["rows"]:
        if row["zoo"] and not row.get("error"):
            assert row["sha256"] == CARDS[row["name"]]["sha256"]  # measured on the model that ships
            assert row["certified_acc"] <= row["robust_acc"] <= row["attacked_clean_acc"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CARDS))
def test_a_short_version_of_each_recipe_runs(name, tmp_path):
    out = tmp_path / f"{name}.pt"
    done = subprocess.run([sys.executable, "scripts/train_zoo.py", "--name", name, "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = load_checkpoint(out)
    assert ckpt["dataset"] == CARDS[name]["dataset"] and ckpt["model_name"] == CARDS[name]["model"]
    assert ckpt["config"]["seed"] == CARDS[name]["train"]["seed"]


def _env():
    import os

    return {**os.environ, "ADVX_DATA": str(DATA_DIR)}


def test_train_zoo_refuses_what_would_lose_a_shipped_model(capsys):
    train_zoo = script("train_zoo")
    with pytest.raises(SystemExit):
        train_zoo.main(["--name", SHIPPED[0], "--install"])
    assert "is shipped already; give --replace" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_zoo.main(["--name", SHIPPED[0], "--install", "--quick"])
    assert "--install cannot go with --quick" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_zoo.main(["--name", "nope"])
    assert "no model named 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_the_leaderboard_measures_a_row_caches_it_and_reports_a_failure(small_checkpoint, tmp_path):
    """A row for a checkpoint (one command), kept on the second run; a broken checkpoint gets
    a row that says why; the markdown is the rendering of the JSON."""
    files = ["--json", str(tmp_path / "lb.json"), "--markdown", str(tmp_path / "lb.md"), "--runs",
             str(tmp_path / "runs"), "--readme", "", "--n", "10", "--clean-n", "50", "--certify-budget", "5"]
    run = lambda *extra: subprocess.run([sys.executable, "scripts/leaderboard.py", *files, *extra], cwd=ROOT,  # noqa: E731
                                        capture_output=True, text=True, env=_env())
    first = run("--checkpoint", str(small_checkpoint), "--name", "tiny")
    assert first.returncode == 0, first.stderr[-2000:]
    board = json.loads((tmp_path / "lb.json").read_text())
    (row,) = board["rows"]
    assert row["name"] == "tiny" and not row["zoo"] and row["clean_n"] == 50 and row["n"] == 10
    assert 0 <= row["certified_acc"] <= row["robust_acc"] <= row["attacked_clean_acc"] <= 1
    assert row["certifier"] in ("crown", "crown-ibp", "ibp") and len(row["commands"]) == 2
    assert (tmp_path / "lb.md").read_text() == leaderboard.markdown(board) + "\n"
    again = run("--checkpoint", str(small_checkpoint), "--name", "tiny")
    assert again.returncode == 0 and "tiny: cached" in again.stdout
    broken = tmp_path / "broken.pt"
    broken.write_bytes(small_checkpoint.read_bytes()[:1000])
    third = run("--checkpoint", str(broken))
    assert third.returncode == 0, third.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads((tmp_path / "lb.json").read_text())["rows"]}
    assert set(rows) == {"tiny", "broken"} and "could not be read as an advx checkpoint" in rows["broken"]["error"]
    assert "not measured" in (tmp_path / "lb.md").read_text()
