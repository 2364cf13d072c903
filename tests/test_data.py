"""Loaders on the offline copies in shared/data, and the clear errors for missing or broken files."""
from __future__ import annotations

import gzip
import shutil

import pytest
import torch

from gradreg import data
from gradreg.errors import GradregError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_files_match_their_checksums(data_dir):
    for name, checksum in data.MNIST_FILES.items():
        assert data.md5(data_dir / "MNIST" / "raw" / name) == checksum


def test_mnist_raw_shapes_and_label_counts(data_dir):
    raw = data.mnist_raw(str(data_dir))
    assert raw["x_train"].shape == (60000, 28, 28) and raw["x_train"].dtype == torch.uint8
    assert raw["x_test"].shape == (10000, 28, 28)
    assert torch.bincount(raw["y_train"]).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(raw["y_test"]).tolist() == MNIST_TEST_COUNTS


def test_mnist_subset_is_seeded_and_standardised(data_dir):
    a = data.mnist(2000, seed=1, data_dir=str(data_dir))
    b = data.mnist(2000, seed=1, data_dir=str(data_dir))
    c = data.mnist(2000, seed=2, data_dir=str(data_dir))
    assert a.x_train.shape == (2000, 1, 28, 28) and a.x_test.shape == (10000, 1, 28, 28)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.y_train, c.y_train)
    assert abs(a.x_train.mean().item()) < 1e-5 and abs(a.x_train.std().item() - 1) < 1e-4


def test_mnist_paper_protocol_holds_out_the_last_training_images(data_dir):
    raw = data.mnist_raw(str(data_dir))
    d = data.mnist(500, seed=0, protocol="paper", data_dir=str(data_dir))
    assert torch.equal(d.y_test, raw["y_train"][50000:])
    with pytest.raises(GradregError, match="unknown MNIST protocol"):
        data.mnist(500, protocol="kaggle", data_dir=str(data_dir))


def test_cifar10_subset_reads_in_the_original_layout(data_dir):
    data.cifar10_raw.cache_clear()
    data._WARNED_UNOFFICIAL.clear()
    with pytest.warns(UserWarning, match="differ from the official CIFAR-10 files"):   # the offline subset
        d = data.cifar10(seed=0, data_dir=str(data_dir))
    assert d.official is False
    assert d.x_train.shape == (5085, 3, 32, 32) and d.x_test.shape == (1017, 3, 32, 32)
    assert set(d.y_train.unique().tolist()) == set(range(10))
    channel_means = d.x_train.mean((0, 2, 3))
    assert channel_means.abs().max() < 1e-4


def test_missing_directory_is_one_clear_error(tmp_path):
    with pytest.raises(GradregError, match="does not exist"):
        data.mnist(100, data_dir=str(tmp_path / "nowhere"))


def test_missing_file_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MNIST_MIRRORS", ["http://127.0.0.1:9/"])  # nothing listens there
    with pytest.raises(GradregError, match=r"is not in .*MNIST/raw.*--data-dir"):
        data.mnist(100, data_dir=str(tmp_path))


def test_corrupt_file_is_detected(tmp_path, data_dir):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(data_dir / "MNIST" / "raw", raw)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"garbage")
    with pytest.raises(GradregError, match="corrupt"):
        data.mnist(100, data_dir=str(tmp_path))


def test_sin5x_matches_its_definition():
    d = data.sin5x(100, seed=0)
    assert d.x_train.shape == (100, 1) and d.x_train.abs().max() <= 1
    residual = d.y_train - torch.sin(5 * d.x_train)
    assert 0.05 < residual.std().item() < 0.15          # N(0, 0.1²) noise
    assert torch.allclose(d.y_test, torch.sin(5 * d.x_test)) and len(d.x_test) == 900


def test_random_shift_translates_and_fills_with_zeros():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6) + 1
    gen = torch.Generator().manual_seed(0)
    out = data.random_shift(x, 2, gen)
    dy, dx = torch.randint(5, (2, 2), generator=torch.Generator().manual_seed(0))
    for i in range(2):  # out[i] = x[i] shifted by (2 − dy, 2 − dx), zeros where it came from outside
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        assert torch.equal(out[i], padded[:, dy[i]: dy[i] + 6, dx[i]: dx[i] + 6])


def test_random_flip_mirrors_about_half():
    x = torch.randn(1000, 1, 2, 2)
    out = data.random_flip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(3)).all((1, 2, 3)) & ~(out == x).all((1, 2, 3))
    assert 400 < flipped.sum() < 600


def test_batch_indices_cover_each_epoch_once():
    it = data.batch_indices(10, 5, torch.Generator().manual_seed(0))
    epoch = torch.cat([next(it), next(it)])
    assert sorted(epoch.tolist()) == list(range(10))
