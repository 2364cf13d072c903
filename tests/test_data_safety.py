"""Hostile, damaged and mis-sized data inputs: each is one GradregError naming what is wrong, data files
never run code, and the CIFAR-10 files' MD5s say whether the data are the official ones."""
from __future__ import annotations

import builtins
import gzip
import os
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from gradreg import data
from gradreg.errors import GradregError

MNIST_NAMES = list(data.MNIST_FILES)


@pytest.fixture(autouse=True)
def fresh_caches():
    """The loaders are cached and warn once per folder: start and end every test from a clean slate."""
    def clear():
        data.mnist_raw.cache_clear()
        data.cifar10_raw.cache_clear()
        data._WARNED_UNOFFICIAL.clear()
    clear()
    yield
    clear()


def one_line(err: pytest.ExceptionInfo) -> str:
    """The error's message, checked to be one line (the CLI prints it as is)."""
    message = str(err.value)
    assert "\n" not in message and message
    return message


# ---------------------------------------------------------------- crafted files

def copy_cifar(data_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the offline CIFAR-10 folder, to damage; returns its data directory."""
    shutil.copytree(data_dir / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    return tmp_path


def write_batch(root: Path, name: str, obj, protocol: int = 4) -> Path:
    path = root / "cifar-10-batches-py" / name
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def good_batch(n: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"batch_label": "crafted", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, n)]}


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file, gzip-compressed, as the MNIST originals are."""
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def crafted_mnist(tmp_path: Path, monkeypatch, n_train: int = 30, n_test: int = 10, labels_train=None,
                  train_images=None) -> Path:
    """A small MNIST folder written here, with data.MNIST_FILES patched to its MD5s so only the
    structural checks can object."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)) if train_images is None
        else train_images,
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train) if labels_train is None else labels_train,
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        write_idx(raw / name, np.asarray(array))
    monkeypatch.setattr(data, "MNIST_FILES", {name: data.md5(raw / name) for name in arrays})
    return tmp_path


class RunsCode:
    """Unpickling an instance calls ``func(*args)``: the classic pickle payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# ---------------------------------------------------------------- no code from data files

@pytest.mark.parametrize("func, refused", [(os.system, "system"), (builtins.exec, "builtins.exec")])
def test_malicious_batch_is_refused_and_runs_nothing(data_dir, tmp_path, func, refused):
    root = copy_cifar(data_dir, tmp_path)
    marker = tmp_path / "pwned"
    code = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
    batch = good_batch()
    batch["data"] = RunsCode(func, code)
    path = write_batch(root, "data_batch_1", batch)
    with pytest.raises(GradregError) as err:
        data.cifar10_raw(str(root))
    message = one_line(err)
    assert refused in message and str(path) in message and "not part of the CIFAR-10 format" in message
    assert not marker.exists()


def test_numpy_looking_globals_other_than_array_reconstruction_are_refused(data_dir, tmp_path):
    root = copy_cifar(data_dir, tmp_path)
    (tmp_path / "payload.npy").write_bytes(b"")
    path = write_batch(root, "test_batch", {"data": RunsCode(np.load, str(tmp_path / "payload.npy")),
                                            "labels": [0]})
    with pytest.raises(GradregError, match=r"refuses to load numpy\.load from .*test_batch") as err:
        data.cifar10_raw(str(root))
    assert str(path) in one_line(err)


def test_refusal_sees_the_global_even_in_a_python2_style_pickle(data_dir, tmp_path):
    root = copy_cifar(data_dir, tmp_path)
    write_batch(root, "data_batch_3", RunsCode(eval, "1"), protocol=2)  # GLOBAL '__builtin__ eval' on disk
    with pytest.raises(GradregError, match=r"refuses to load (__builtin__|builtins)\.eval"):
        data.cifar10_raw(str(root))


def test_old_numpy_module_names_and_other_protocols_load_without_warnings(data_dir, tmp_path):
    """Original batches name numpy.core.multiarray._reconstruct (numpy 1.x, Python 2); protocol 5 uses
    _frombuffer, protocol 2 from Python 3 _codecs.encode: all read, with no numpy DeprecationWarning."""
    root = copy_cifar(data_dir, tmp_path)
    old = pickle.dumps(good_batch(seed=1), protocol=2)
    old = old.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in old
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(old)
    write_batch(root, "data_batch_2", good_batch(seed=2), protocol=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)  # not the official files
        raw = data.cifar10_raw(str(root))
    assert len(raw["y_train"]) == 20 + 20 + 3 * 1017
    assert raw["x_train"][:20].reshape(20, -1).numpy().tolist() == good_batch(seed=1)["data"].tolist()


# ---------------------------------------------------------------- the official files, or not

def test_offline_subset_loads_and_is_reported_as_not_official(data_dir):
    with pytest.warns(UserWarning) as record:
        raw = data.cifar10_raw(str(data_dir))
        data.cifar10_raw.cache_clear()
        data.cifar10_raw(str(data_dir) + "/")  # the same folder, spelt differently: no second warning
        d = data.cifar10(100, data_dir=str(data_dir))
    ours = [w for w in record if "official CIFAR-10" in str(w.message)]
    assert len(ours) == 1
    message = str(ours[0].message)
    assert all(name in message for name in data.CIFAR10_FILES) and "structural checks only" in message
    assert raw["x_train"].shape == (5085, 3, 32, 32) and raw["x_test"].shape == (1017, 3, 32, 32)
    assert raw["y_train"].min() == 0 and raw["y_train"].max() == 9 and len(raw["y_test"]) == 1017
    assert raw["official"] is False and raw["differing"] == tuple(data.CIFAR10_FILES)
    assert d.official is False and d.to("cpu").official is False


def test_files_with_the_official_md5s_are_reported_official(data_dir, monkeypatch):
    folder = data_dir / "cifar-10-batches-py"
    actual = {name: data.md5(folder / name) for name in data.CIFAR10_FILES}
    monkeypatch.setattr(data, "CIFAR10_BATCH_MD5", actual)
    assert data.cifar10_differing(folder) == ()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raw = data.cifar10_raw(str(data_dir))
    assert raw["official"] is True and raw["differing"] == ()


def test_one_differing_file_is_named_alone(data_dir, monkeypatch):
    folder = data_dir / "cifar-10-batches-py"
    table = {name: data.md5(folder / name) for name in data.CIFAR10_FILES}
    table["data_batch_4"] = data.CIFAR10_BATCH_MD5["data_batch_4"]
    monkeypatch.setattr(data, "CIFAR10_BATCH_MD5", table)
    assert data.cifar10_differing(folder) == ("data_batch_4",)


def test_mnist_is_reported_official(data_dir):
    assert data.mnist(100, data_dir=str(data_dir)).official is True


# ---------------------------------------------------------------- inconsistent contents

def damaged(**change):
    batch = good_batch()
    batch.update(change)
    return {k: v for k, v in batch.items() if v is not None}


@pytest.mark.parametrize("obj, expected", [
    (damaged(labels=list(range(10)) * 2 + [1]), "20 images but 21 labels"),
    (damaged(labels=[3] * 19 + [10]), "label 10 at position 19"),
    (damaged(labels=[-1] + [3] * 19), "label -1 at position 0"),
    (damaged(labels=[0.5] * 20), "'labels' (list) is not a list of integers"),
    (damaged(data=np.zeros((20, 3000), np.uint8)), "rows hold 3,000 values, expected 3,072"),
    (damaged(data=np.full((20, 3072), 256)), "values outside 0..255"),
    (damaged(data="pixels"), "'data' (str) is not an N x 3072 array"),
    (damaged(labels=None), "no 'labels' entry"),
    ([np.zeros((20, 3072), np.uint8), [0] * 20], "it holds a list, not a dict"),
    (damaged(data=np.zeros((0, 3072), np.uint8), labels=[]), "it holds no images"),
])
def test_inconsistent_batch_is_one_error(data_dir, tmp_path, obj, expected):
    root = copy_cifar(data_dir, tmp_path)
    path = write_batch(root, "data_batch_2", obj)
    with pytest.raises(GradregError) as err:
        data.cifar10(data_dir=str(root))
    message = one_line(err)
    assert expected in message and str(path) in message and "replace it with the original file" in message


def test_lossless_integer_data_is_accepted(data_dir, tmp_path):
    root = copy_cifar(data_dir, tmp_path)
    batch = good_batch()
    write_batch(root, "test_batch", dict(batch, data=batch["data"].astype(np.int64).tolist()))
    with pytest.warns(UserWarning, match="official"):
        raw = data.cifar10_raw(str(root))
    assert raw["x_test"].shape == (20, 3, 32, 32) and raw["x_test"].reshape(20, -1).numpy().tolist() == \
        batch["data"].tolist()


def test_mnist_label_outside_the_classes_is_one_error(tmp_path, monkeypatch):
    root = crafted_mnist(tmp_path, monkeypatch, labels_train=np.array([1] * 29 + [10]))
    with pytest.raises(GradregError, match=r"train-labels-idx1-ubyte\.gz has label 10 at position 29"):
        data.mnist(10, data_dir=str(root))


def test_mnist_count_mismatch_is_one_error(tmp_path, monkeypatch):
    root = crafted_mnist(tmp_path, monkeypatch, labels_train=np.zeros(29))
    with pytest.raises(GradregError, match=r"holds 30 images but .*train-labels.* holds 29 labels") as err:
        data.mnist(10, data_dir=str(root))
    one_line(err)


def test_mnist_images_of_the_wrong_size_are_one_error(tmp_path, monkeypatch):
    root = crafted_mnist(tmp_path, monkeypatch, train_images=np.zeros((30, 32, 32)))
    with pytest.raises(GradregError, match=r"train-images.*shape 30x32x32, not N images of 28x28"):
        data.mnist_raw(str(root))


def test_crafted_consistent_mnist_loads(tmp_path, monkeypatch):
    raw = data.mnist_raw(str(crafted_mnist(tmp_path, monkeypatch)))
    assert raw["x_train"].shape == (30, 28, 28) and raw["y_test"].shape == (10,)


def test_mnist_idx_whose_header_disagrees_with_its_length_is_one_error(tmp_path, monkeypatch):
    root = crafted_mnist(tmp_path, monkeypatch)
    path = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as f:
        content = f.read()
    with gzip.open(path, "wb") as f:
        f.write(content[:-100])
    monkeypatch.setitem(data.MNIST_FILES, path.name, data.md5(path))
    expected = r"t10k-images.*holds 7,740 data bytes but its header promises 7,840 "
    with pytest.raises(GradregError, match=expected):
        data.mnist_raw(str(root))


# ---------------------------------------------------------------- files that cannot be read

def test_directory_in_place_of_an_mnist_file(data_dir, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(data_dir / "MNIST" / "raw", raw)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    (raw / "t10k-labels-idx1-ubyte.gz").mkdir()
    with pytest.raises(GradregError) as err:
        data.mnist(100, data_dir=str(tmp_path))
    message = one_line(err)
    assert str(raw / "t10k-labels-idx1-ubyte.gz") in message and "remove that folder" in message


def test_directory_in_place_of_a_cifar_batch(data_dir, tmp_path):
    root = copy_cifar(data_dir, tmp_path)
    path = root / "cifar-10-batches-py" / "data_batch_5"
    path.unlink()
    path.mkdir()
    with pytest.raises(GradregError) as err:
        data.cifar10(data_dir=str(root))
    assert str(path) in one_line(err) and "IsADirectoryError" in str(err.value)


def refuse_to_open(monkeypatch, victim: Path) -> None:
    """``open`` raises PermissionError for ``victim`` (tests run as root, so chmod 000 would not stop it)."""
    real_open = builtins.open

    def fake_open(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(victim):
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", fake_open)


def test_permission_denied_on_a_cifar_batch(data_dir, tmp_path, monkeypatch):
    root = copy_cifar(data_dir, tmp_path)
    victim = root / "cifar-10-batches-py" / "test_batch"
    refuse_to_open(monkeypatch, victim)
    with pytest.raises(GradregError) as err:
        data.cifar10_raw(str(root))
    message = one_line(err)
    assert str(victim) in message and "PermissionError" in message and "readable" in message


def test_permission_denied_when_unpickling_a_cifar_batch(data_dir, tmp_path, monkeypatch):
    """The MD5 read succeeds, the second open (to unpickle) fails: that path is covered too."""
    root = copy_cifar(data_dir, tmp_path)
    victim = root / "cifar-10-batches-py" / "data_batch_2"
    monkeypatch.setattr(data, "cifar10_differing", lambda folder: ())
    refuse_to_open(monkeypatch, victim)
    with pytest.raises(GradregError, match="PermissionError") as err:
        data.cifar10_raw(str(root))
    assert str(victim) in one_line(err)


def test_permission_denied_on_an_mnist_file(data_dir, tmp_path, monkeypatch):
    victim = data_dir / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    refuse_to_open(monkeypatch, victim)
    with pytest.raises(GradregError) as err:
        data.mnist_raw(str(data_dir))
    assert str(victim) in one_line(err) and "PermissionError" in str(err.value)


def test_permission_denied_when_decompressing_an_mnist_file(data_dir, monkeypatch):
    victim = data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    real_open = gzip.open

    def fake_open(path, *args, **kwargs):
        if Path(path) == victim:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(gzip, "open", fake_open)
    with pytest.raises(GradregError) as err:
        data.mnist_raw(str(data_dir))
    assert str(victim) in one_line(err) and "make it readable" in str(err.value)


def test_truncated_pickle_is_one_error(data_dir, tmp_path):
    root = copy_cifar(data_dir, tmp_path)
    path = root / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(GradregError, match="cannot be read as a CIFAR-10 batch") as err:
        data.cifar10_raw(str(root))
    assert str(path) in one_line(err)


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", b"\x80\x04\x95garbage"])
def test_garbage_pickle_is_one_error(data_dir, tmp_path, content):
    root = copy_cifar(data_dir, tmp_path)
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(content)
    with pytest.raises(GradregError, match="cannot be read as a CIFAR-10 batch") as err:
        data.cifar10_raw(str(root))
    assert str(path) in one_line(err)


@pytest.mark.parametrize("content", [b"this is not gzip", None])
def test_garbage_or_truncated_gzip_is_one_error(tmp_path, monkeypatch, content):
    root = crafted_mnist(tmp_path, monkeypatch)
    path = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(content if content is not None else path.read_bytes()[:-40])
    monkeypatch.setitem(data.MNIST_FILES, path.name, data.md5(path))
    with pytest.raises(GradregError, match="cannot be read as a gzip-compressed IDX file") as err:
        data.mnist_raw(str(root))
    assert str(path) in one_line(err)


# ---------------------------------------------------------------- the data directory itself

def test_empty_data_dir_is_an_error_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "MNIST_MIRRORS", ["http://127.0.0.1:9/"])  # were it to try, nothing listens
    for attempt in (lambda: data.data_dir(""), lambda: data.mnist(100, data_dir=""),
                    lambda: data.cifar10(100, data_dir=""), lambda: data.data_dir("  ")):
        with pytest.raises(GradregError, match=r"^--data-dir is empty; give a folder") as err:
            attempt()
        one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_empty_environment_variable_means_unset(monkeypatch):
    monkeypatch.setenv("GRADREG_DATA", "")
    assert data.data_dir() == (Path.home() / ".cache" / "gradreg", "the default")


@pytest.mark.parametrize("via_env", [False, True])
def test_data_dir_that_is_a_file_is_an_error(tmp_path, monkeypatch, via_env):
    not_a_dir = tmp_path / "data.txt"
    not_a_dir.write_text("hello")
    if via_env:
        monkeypatch.setenv("GRADREG_DATA", str(not_a_dir))
    with pytest.raises(GradregError, match=r"is a file, not a folder") as err:
        data.mnist(100, data_dir=None if via_env else str(not_a_dir))
    message = one_line(err)
    assert str(not_a_dir) in message and ("$GRADREG_DATA" if via_env else "--data-dir") in message


# ---------------------------------------------------------------- sizes beyond the data

@pytest.mark.parametrize("options, expected", [
    (dict(n_train=70000), "n_train=70000 asks for more than the 60,000 training images"),
    (dict(n_train=50001, protocol="paper"), "n_train=50001 asks for more than the 50,000 training images"),
    (dict(n_train=100, n_test=20000), "n_test=20000 asks for more than the 10,000 test images"),
    (dict(n_train=100, n_test=10001, protocol="paper"), "n_test=10001 asks for more than the 10,000 test"),
])
def test_mnist_sizes_beyond_the_data_are_errors(data_dir, options, expected):
    with pytest.raises(GradregError, match="use n_") as err:
        data.mnist(data_dir=str(data_dir), **options)
    assert expected in one_line(err)


def test_mnist_sizes_at_the_limit_are_fine(data_dir):
    d = data.mnist(50000, protocol="paper", n_test=10000, data_dir=str(data_dir))
    assert len(d.y_train) == 50000 and len(d.y_test) == 10000


@pytest.mark.parametrize("options, expected", [
    (dict(n_train=6000), "n_train=6000 asks for more than the 5,085 training images"),
    (dict(n_train=100, n_test=20000), "n_test=20000 asks for more than the 1,017 test images"),
])
def test_cifar_sizes_beyond_the_offline_subset_are_errors(data_dir, options, expected):
    with pytest.warns(UserWarning, match="official"), pytest.raises(GradregError) as err:
        data.cifar10(data_dir=str(data_dir), **options)
    message = one_line(err)
    assert expected in message and "differ from the official" in message
