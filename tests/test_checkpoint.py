import os

import pytest
import torch

from advx import checkpoint as ckpt_mod
from advx.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from advx.train import seeded_model


def _save(path, seed=0, acc=0.5):
    model = seeded_model("small", seed)
    save_checkpoint(path, model, model_name="small", config={"seed": seed}, metrics={"test_acc": acc})
    return model


def test_round_trip(tmp_path):
    path = tmp_path / "m.pt"
    model = _save(path, seed=1, acc=0.9)
    loaded, ckpt = load_model(path)
    assert ckpt["config"] == {"seed": 1} and ckpt["metrics"] == {"test_acc": 0.9}
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(CheckpointError, match="no file at .*scripts/train_baseline.py"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "m.pt"
    _save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a torch file"):
        load_checkpoint(path)


def test_foreign_files_are_clear_errors(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(text)
    plain = tmp_path / "plain.pt"
    torch.save(seeded_model("small", 0).state_dict(), plain)  # a bare state_dict, not ours
    with pytest.raises(CheckpointError, match="is not an advx checkpoint"):
        load_checkpoint(plain)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "advx-checkpoint", "payload": os.getcwd, "model_name": "small"}, path)
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, seeded_model("madry", 0), model_name="small")
    with pytest.raises(CheckpointError, match="do not fit model 'small'"):
        load_model(path)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    first = _save(path, seed=1)
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, seeded_model("small", 2), model_name="small")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]  # no temp file left behind
    loaded, _ = load_model(path)
    assert torch.equal(loaded.state_dict()["features.0.weight"], first.state_dict()["features.0.weight"])
