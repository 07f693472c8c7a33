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


def _resave(path, ckpt):
    """``ckpt`` written with a matching hash: what a writer that got it wrong would leave."""
    torch.save({**ckpt, "sha256": ckpt_mod.content_hash(ckpt)}, path)


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


# ------------------------------- faults: damaged, foreign and interrupted files
def test_zero_byte_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "m.pt"
    path.write_bytes(b"")  # torch.load's error message is empty: an IndexError before the fix
    with pytest.raises(CheckpointError, match=r"m.pt is empty \(0 bytes\)"):
        load_checkpoint(path)


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder, expected a checkpoint file"):
        load_checkpoint(tmp_path)


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    _save(path)
    ckpt = torch.load(path, weights_only=True)
    _resave(path, {**ckpt, "version": 2})
    with pytest.raises(CheckpointError, match="written by a newer advx \\(format version 2\\)"):
        load_checkpoint(path)
    _resave(path, {**ckpt, "version": "1"})
    with pytest.raises(CheckpointError, match="has no valid format version \\(got '1'\\)"):
        load_checkpoint(path)


@pytest.mark.parametrize("change,message", [
    (lambda c: {**c, "state_dict": [1, 2]}, "'state_dict' must be a dict, got list"),
    (lambda c: {**c, "config": None}, "'config' must be a dict, got NoneType"),
    (lambda c: {**c, "state_dict": {**c["state_dict"], "features.0.weight": 3.0}},
     "state_dict entries that are not tensors: features.0.weight"),
    (lambda c: {k: v for k, v in c.items() if k != "metrics"}, "'metrics' must be a dict, got NoneType"),
])
def test_malformed_contents_are_clear_errors(change, message, tmp_path):
    path = tmp_path / "m.pt"
    _save(path)
    _resave(path, change(torch.load(path, weights_only=True)))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert message in str(info.value)


def test_non_finite_weights_are_never_saved_and_never_loaded(tmp_path):
    path = tmp_path / "good.pt"
    _save(path, seed=1)
    before = path.read_bytes()
    model = seeded_model("small", 2)
    with torch.no_grad():
        model.features[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="refusing to save .*not finite.*features.0.weight"):
        save_checkpoint(path, model, model_name="small")
    assert path.read_bytes() == before
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["classifier.1.bias"][0] = float("inf")
    _resave(path, ckpt)
    with pytest.raises(CheckpointError, match="not finite .*classifier.1.bias.*diverged"):
        load_checkpoint(path)


def test_temp_files_of_killed_saves_are_cleaned_up(tmp_path):
    path = tmp_path / "m.pt"
    _save(path)
    dead = 2**22 + 12345  # above any pid this machine hands out (pid_max is at most 2**22)
    leftovers = [tmp_path / f".m.pt.{dead}.abc123.tmp", tmp_path / ".m.pt.xyz_old.tmp"]  # the old naming too
    for f in leftovers:
        f.write_bytes(b"x" * 1000)
    live = tmp_path / f".m.pt.{os.getpid()}.live.tmp"  # a writer that is still running
    live.write_bytes(b"y")
    other = tmp_path / ".other.pt.xyz.tmp"  # another file's temp: not ours to remove
    other.write_bytes(b"z")
    _save(path)  # the next save
    assert not any(f.exists() for f in leftovers)
    assert live.exists() and other.exists()
    leftovers[0].write_bytes(b"x")
    load_checkpoint(path)  # ... or the next load
    assert not leftovers[0].exists()


def test_saved_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = tmp_path / "m.pt"
        _save(path)
        assert path.stat().st_mode & 0o777 == 0o644  # mkstemp's 0o600 before the fix
        path.chmod(0o640)
        _save(path)
        assert path.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its permissions
    finally:
        os.umask(umask)


def test_one_flipped_byte_in_a_weight_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    weight = _save(path).state_dict()["classifier.1.weight"]
    data = bytearray(path.read_bytes())
    at = data.find(weight.numpy().tobytes()[:64])  # the tensor's bytes are stored as they are
    assert at > 0
    data[at + 21] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    changed = torch.load(path, weights_only=True)["state_dict"]["classifier.1.weight"]
    assert not torch.equal(changed, weight)  # torch itself reads the other weight without complaint
    with pytest.raises(CheckpointError, match=r"m.pt is damaged: its content does not match the SHA-256"):
        load_checkpoint(path)


def test_changed_metadata_is_refused_too(tmp_path):
    path = tmp_path / "m.pt"
    _save(path, acc=0.5)
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "metrics": {"test_acc": 0.99}}, path)  # the hash kept, the figure changed
    with pytest.raises(CheckpointError, match="is damaged"):
        load_checkpoint(path)


def test_a_checkpoint_without_a_hash_loads_with_one_warning(tmp_path):
    path = tmp_path / "old.pt"
    model = _save(path)
    ckpt = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k != "sha256"}, path)  # as an older advx wrote it
    with pytest.warns(ckpt_mod.UncheckedCheckpointWarning, match="old.pt holds no content hash"):
        loaded, _ = load_model(path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per file, not at every load
        load_model(path)


def test_the_hash_covers_every_tensor_and_value_in_a_fixed_order():
    a = {"state_dict": {"w": torch.ones(3), "b": torch.zeros(2)}, "config": {"lr": 0.1}, "extra": [torch.ones(1)]}
    b = {"extra": [torch.ones(1)], "config": {"lr": 0.1}, "state_dict": {"b": torch.zeros(2), "w": torch.ones(3)}}
    assert ckpt_mod.content_hash(a) == ckpt_mod.content_hash(b)  # key order does not matter
    for changed in ({**a, "extra": [torch.ones(1) * 2]}, {**a, "config": {"lr": 0.2}},
                    {**a, "state_dict": {"w": torch.ones(3, dtype=torch.float64), "b": torch.zeros(2)}},
                    {**a, "state_dict": {"w": torch.ones(1, 3), "b": torch.zeros(2)}}):
        assert ckpt_mod.content_hash(changed) != ckpt_mod.content_hash(a)
    assert ckpt_mod.content_hash({**a, "sha256": "anything"}) == ckpt_mod.content_hash(a)
