import shutil
import stat
from urllib.error import URLError

import pytest
import torch

from advx import data as data_mod
from advx.data import RAW_FILES, DataNotFoundError, iterate_batches, load_mnist

from conftest import DATA_DIR


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
    assert load_mnist("test", DATA_DIR).x is mnist_test.x


def test_bad_split_is_a_clear_error():
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        load_mnist("val", DATA_DIR)


def test_missing_files_offline_name_the_four_files(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_mnist("test", tmp_path, download=False)
    message = str(info.value)
    for name in RAW_FILES:
        assert name in message
    assert str(tmp_path / "MNIST" / "raw") in message


def test_failed_download_becomes_the_same_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    def offline(*args, **kwargs):
        raise URLError("network is unreachable")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    with pytest.raises(DataNotFoundError, match="could not be downloaded") as info:
        load_mnist("train", tmp_path, download=True)
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    assert "download failed" in str(info.value)


def test_read_only_folder_is_copied_to_a_writable_cache(tmp_path, monkeypatch):
    source = tmp_path / "share" / "MNIST" / "raw"
    source.mkdir(parents=True)
    for name in RAW_FILES:
        src = DATA_DIR / "MNIST" / "raw" / name
        if not src.exists():
            pytest.skip(f"{src} not present (run .ci/run to prepare ./data)")
        shutil.copyfile(src, source / name)
    source.chmod(stat.S_IRUSR | stat.S_IXUSR)
    monkeypatch.setenv("ADVX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data_mod, "_CACHE", {})
    try:
        test = load_mnist("test", tmp_path / "share")
    finally:
        source.chmod(stat.S_IRWXU)
    assert len(test) == 10000
    assert sorted(p.name for p in source.iterdir()) == sorted(RAW_FILES)  # nothing written there
    assert (tmp_path / "cache" / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists()


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
        load_mnist("train", tmp_path)


def test_prepare_copies_from_a_source_and_checks(tmp_path):
    from advx.data import prepare_mnist

    raw = prepare_mnist(tmp_path / "d", source=DATA_DIR)
    assert sorted(p.name for p in raw.glob("*.gz")) == sorted(RAW_FILES)
    with pytest.raises(DataNotFoundError, match="lacks train-images-idx3-ubyte.gz"):
        prepare_mnist(tmp_path / "e", source=tmp_path / "empty")
