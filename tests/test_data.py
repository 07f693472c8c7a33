import gzip
import hashlib
import shutil
import stat
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from conftest import DATA_DIR

from advx import data as data_mod
from advx.data import (RAW_FILES, DataCorruptError, DataNotFoundError, default_data_dir, iterate_batches, load_dataset,
                       prepare)
from advx.datasets import get_dataset
from advx.idx import contents

GOOD_RAW = DATA_DIR / "MNIST" / "raw"


def copy_mnist(dest: Path, *, gz=True, extracted=False) -> Path:
    """Copy the repository's MNIST files into ``dest`` (the .gz files and/or the
    extracted ones, which are made from the .gz when absent); returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        src = GOOD_RAW / name
        if not src.exists():
            pytest.skip(f"{src} not present (run .ci/run to prepare ./data)")
        if gz:
            shutil.copyfile(src, dest / name)
        if extracted:
            (dest / name[: -len(".gz")]).write_bytes(gzip.decompress(src.read_bytes()))
    return dest


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def fresh_cache(monkeypatch):
    monkeypatch.setattr(data_mod, "_CACHE", {})


def test_shapes_dtypes_and_range(mnist_train, mnist_test):
    assert mnist_train.x.shape == (60000, 1, 28, 28)
    assert mnist_test.x.shape == (10000, 1, 28, 28)
    assert mnist_train.x.dtype == torch.float32 and mnist_train.y.dtype == torch.int64
    assert mnist_train.x.min().item() == 0.0 and mnist_train.x.max().item() == 1.0
    # Pixels are k/255 exactly: no Normalize snuck into the data path.
    assert torch.equal((mnist_test.x * 255).round() / 255, mnist_test.x)


def test_label_counts_of_the_real_files(mnist_train, mnist_test):
    assert mnist_test.y.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist_train.y.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_loading_twice_returns_the_cached_tensors(mnist_test):
    assert load_dataset("mnist", "test", DATA_DIR).x is mnist_test.x


def test_bad_split_is_a_clear_error():
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        load_dataset("mnist", "val", DATA_DIR)


def test_missing_files_offline_name_the_four_files(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", "test", tmp_path, download=False)
    message = str(info.value)
    for name in RAW_FILES:
        assert name in message
    assert str(tmp_path / "MNIST" / "raw") in message


def test_failed_download_becomes_the_same_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise URLError("network is unreachable")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(DataNotFoundError, match="could not be downloaded") as info:
        load_dataset("mnist", "train", tmp_path, download=True)
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    assert "download failed" in str(info.value)
    assert not any((tmp_path / "MNIST" / "raw").glob("*"))  # nothing half-written left


def test_download_is_verified_before_it_is_put_in_place(tmp_path, monkeypatch, fresh_cache, mnist_test):
    import torchvision.datasets.utils as tv_utils

    def from_repo(url, root, filename=None, md5=None, **kwargs):
        shutil.copyfile(GOOD_RAW / filename, Path(root) / filename)

    def truncated(url, root, filename=None, md5=None, **kwargs):
        (Path(root) / filename).write_bytes((GOOD_RAW / filename).read_bytes()[:1000])

    copy_mnist(tmp_path / "check")  # skips when ./data is not prepared
    monkeypatch.setattr(tv_utils, "download_url", truncated)
    with pytest.raises(DataNotFoundError, match="could not be downloaded.*") as info:
        load_dataset("mnist", "test", tmp_path / "a", download=True)
    assert "download failed: DataCorruptError" in str(info.value)
    assert not any((tmp_path / "a" / "MNIST" / "raw").glob("*"))

    monkeypatch.setattr(tv_utils, "download_url", from_repo)
    test = load_dataset("mnist", "test", tmp_path / "b", download=True)
    assert torch.equal(test.y, mnist_test.y)
    raw = tmp_path / "b" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_read_only_folder_is_read_in_place(tmp_path, monkeypatch, fresh_cache):
    source = copy_mnist(tmp_path / "share" / "MNIST" / "raw")
    before = snapshot(source)
    source.chmod(stat.S_IRUSR | stat.S_IXUSR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # where a cache would have gone
    monkeypatch.delenv("ADVX_CACHE", raising=False)
    try:
        test = load_dataset("mnist", "test", tmp_path / "share")
    finally:
        source.chmod(stat.S_IRWXU)
    assert len(test) == 10000
    assert snapshot(source) == before  # nothing written there
    assert not (tmp_path / "home").exists()  # nor copied anywhere else


def test_iterate_batches_covers_every_sample_once():
    x = torch.arange(10).float().view(10, 1, 1, 1)
    y = torch.arange(10)
    seen = torch.cat([yb for _, yb in iterate_batches(x, y, 3, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    assert seen.tolist() != list(range(10))  # shuffled
    assert [len(yb) for _, yb in iterate_batches(x, y, 4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        next(iterate_batches(x, y, 0))


def test_corrupt_gz_is_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_FILES:
        (raw / name).write_bytes(b"not really gzip")
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte.gz is corrupt"):
        load_dataset("mnist", "train", tmp_path)


def test_prepare_copies_from_a_source_and_checks(tmp_path):
    raw = prepare("mnist", tmp_path / "d", source=DATA_DIR)
    assert sorted(p.name for p in raw.glob("*.gz")) == sorted(RAW_FILES)
    with pytest.raises(DataNotFoundError, match="lacks train-images-idx3-ubyte.gz"):
        prepare("mnist", tmp_path / "e", source=tmp_path / "empty")


def test_head_rejects_more_samples_than_the_split_has(mnist_test):
    assert len(mnist_test.head(10000)) == 10000
    with pytest.raises(ValueError, match="n must be <= 10000, got 10001"):
        mnist_test.head(10001)


def test_empty_environment_variables_count_as_unset(monkeypatch):
    monkeypatch.setenv("ADVX_DATA", "")
    assert default_data_dir() == Path("data")
    monkeypatch.setenv("ADVX_DATA", "/somewhere")
    assert default_data_dir() == Path("/somewhere")


def test_prepare_verifies_every_source_file_before_copying_any(tmp_path, fresh_cache):
    src = copy_mnist(tmp_path / "src")
    bad = src / "t10k-labels-idx1-ubyte.gz"  # the last one copied
    bad.write_bytes(bad.read_bytes()[:2000])  # truncated
    raw = copy_mnist(tmp_path / "d" / "MNIST" / "raw", extracted=True)
    (raw / "train-labels-idx1-ubyte.gz").unlink()  # one the source would have to fill in
    before = snapshot(raw)
    with pytest.raises(DataCorruptError) as info:
        prepare("mnist", tmp_path / "d", source=src)
    message = str(info.value)
    assert str(bad) in message and "is corrupt" in message and "original MNIST files" in message
    assert "\n" not in message
    assert snapshot(raw) == before  # nothing copied, nothing replaced, no temp files


def test_prepare_from_source_repairs_corrupt_targets(tmp_path, fresh_cache, mnist_train):
    raw = copy_mnist(tmp_path / "d" / "MNIST" / "raw")
    target = raw / "train-labels-idx1-ubyte.gz"
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # same size, wrong contents
    target.write_bytes(bytes(blob))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01 stale and truncated")
    with pytest.raises(DataCorruptError, match="train-labels-idx1-ubyte.gz is corrupt.*advx data --from"):
        load_dataset("mnist", "train", tmp_path / "d")

    assert prepare("mnist", tmp_path / "d", source=GOOD_RAW.parent.parent) == raw
    assert target.read_bytes() == (GOOD_RAW / target.name).read_bytes()
    assert not (raw / "t10k-labels-idx1-ubyte").exists()  # corrupt derived file dropped
    assert sorted(p.name for p in raw.iterdir()) == sorted(RAW_FILES)
    assert torch.equal(load_dataset("mnist", "train", tmp_path / "d").y, mnist_train.y)


@pytest.mark.parametrize("damage", ["wrong magic", "truncated"])
def test_corrupt_extracted_file_is_named_with_the_repair(tmp_path, fresh_cache, damage):
    raw = copy_mnist(tmp_path / "MNIST" / "raw", gz=False, extracted=True)
    bad = raw / "t10k-labels-idx1-ubyte"
    blob = bad.read_bytes()
    bad.write_bytes(b"\x00\x00\x08\x03" + blob[4:] if damage == "wrong magic" else blob[:5000])
    with pytest.raises(DataCorruptError) as info:
        load_dataset("mnist", "test", tmp_path, download=False)
    message = str(info.value)
    assert f"MNIST file {bad} is corrupt" in message
    assert ("magic number 2051, expected 2049" if damage == "wrong magic" else "5,000 bytes") in message
    assert "advx data --from DIR" in message and "delete it" in message


def test_a_bad_gz_is_not_hidden_by_a_good_extracted_file(tmp_path, fresh_cache):
    raw = copy_mnist(tmp_path / "MNIST" / "raw", extracted=True)
    gz = raw / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(gz.read_bytes())
    blob[-10] ^= 0xFF  # same size; gzip's CRC no longer matches
    gz.write_bytes(bytes(blob))
    with pytest.raises(DataCorruptError, match="t10k-labels-idx1-ubyte.gz is corrupt"):
        load_dataset("mnist", "test", tmp_path)


def test_a_recompressed_gz_is_accepted(tmp_path, fresh_cache, mnist_test):
    raw = copy_mnist(tmp_path / "MNIST" / "raw")
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        contents = gzip.decompress((raw / name).read_bytes())
        (raw / name).write_bytes(gzip.compress(contents, compresslevel=1, mtime=0))
    assert torch.equal(load_dataset("mnist", "test", tmp_path).x, mnist_test.x)


# ------------------------------------------------------------------ Fashion-MNIST


@pytest.fixture(scope="module")
def fashion_test():
    return load_dataset("fashion-mnist", "test", DATA_DIR)


def test_fashion_mnist_loads_with_its_classes(fashion_test):
    train = load_dataset("fashion-mnist", "train", DATA_DIR)
    assert train.x.shape == (60000, 1, 28, 28) and fashion_test.x.shape == (10000, 1, 28, 28)
    assert train.y.bincount().tolist() == [6000] * 10 and fashion_test.y.bincount().tolist() == [1000] * 10
    assert fashion_test.x.min() == 0 and fashion_test.x.max() == 1
    dataset = get_dataset("fashion-mnist")
    assert dataset.num_classes == 10 and dataset.classes[0] == "T-shirt/top" and dataset.eps["inf"] == 0.1
    assert not torch.equal(fashion_test.x[:10], load_dataset("mnist", "test", DATA_DIR).x[:10])


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="dataset must be one of \\['mnist', 'fashion-mnist'\\], got 'cifar'"):
        load_dataset("cifar", "test", DATA_DIR)


def test_debians_recompressed_images_are_checked_by_their_contents():
    """Two of the shared .gz files differ from the published ones (recompressed): their
    contents' md5s are what the loader checks, so they pass, and an altered byte fails."""
    raw = DATA_DIR / "FashionMNIST" / "raw"
    blob = gzip.decompress((raw / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert hashlib.md5(blob).hexdigest() == "15d484375f8d13e6eb1aabb0c3f46965"
    altered = bytearray(blob)
    altered[100] ^= 1
    with pytest.raises(DataCorruptError, match="Fashion-MNIST file .* is corrupt \\(contents md5"):
        contents(raw / "t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte", get_dataset("fashion-mnist"),
                 blob=bytes(altered))


def test_the_other_datasets_files_are_named_as_such(tmp_path, fresh_cache):
    """Fashion-MNIST's files put where MNIST's belong: the error says what they are."""
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(DATA_DIR / "FashionMNIST" / "raw", raw)
    with pytest.raises(DataCorruptError, match="these are the Fashion-MNIST files"):
        load_dataset("mnist", "test", tmp_path)


def test_advx_data_prepares_every_dataset_the_source_holds(tmp_path, capsys, fresh_cache):
    from advx.cli import main

    assert main(["data", "--from", str(DATA_DIR), "--data-dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "MNIST ready" in out and "Fashion-MNIST ready" in out
    for folder in ("MNIST", "FashionMNIST"):
        assert sorted(p.name for p in (tmp_path / "d" / folder / "raw").iterdir()) == sorted(RAW_FILES)
    # A bare folder of one dataset's .gz files is told apart by its contents.
    assert main(["data", "--from", str(DATA_DIR / "FashionMNIST" / "raw"), "--data-dir", str(tmp_path / "e")]) == 0
    assert "Fashion-MNIST ready" in capsys.readouterr().out and not (tmp_path / "e" / "MNIST").exists()
    assert main(["data", "--from", str(tmp_path / "empty"), "--data-dir", str(tmp_path / "f")]) == 2
    assert "--from: " in capsys.readouterr().err
