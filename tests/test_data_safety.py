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
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cifar10_raw itself never warns: cifar10 does, once built
        raw = data.cifar10_raw(str(data_dir))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        d = data.cifar10(100, data_dir=str(data_dir))
        data.cifar10_raw.cache_clear()
        data.cifar10(100, data_dir=str(data_dir) + "/")  # the same folder, spelt differently: no second warning
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
    (damaged(data="pixels"), "its 'data' is a str, not a numpy array"),
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
    write_batch(root, "test_batch", dict(batch, data=batch["data"].astype(np.int64)))
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
    """One error and no warning before it (the CLI would print both: three lines for one mistake)."""
    with warnings.catch_warnings(record=True) as record, pytest.raises(GradregError) as err:
        warnings.simplefilter("always")
        data.cifar10(data_dir=str(data_dir), **options)
    message = one_line(err)
    assert expected in message and "differ from the official" in message
    assert [str(w.message) for w in record] == []


def test_unofficial_warning_comes_once_the_data_set_is_built(data_dir):
    """A failed request neither warns nor uses up the one warning per folder; the next good one warns."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(GradregError):
            data.cifar10(6000, data_dir=str(data_dir))
        assert record == []
        d = data.cifar10(50, data_dir=str(data_dir))
        data.cifar10(60, data_dir=str(data_dir))
    assert len(d.y_train) == 50
    assert len(record) == 1 and "differ from the official CIFAR-10 files" in str(record[0].message)
    assert record[0].category is UserWarning


# ---------------------------------------------------------------- the data directory argument

@pytest.mark.parametrize("via_env", [False, True])
def test_unknown_user_in_a_tilde_path_is_one_error(monkeypatch, via_env):
    value = "~nosuchuser_gradreg/x"
    if via_env:
        monkeypatch.setenv("GRADREG_DATA", value)
    for attempt in (lambda: data.data_dir(None if via_env else value),
                    lambda: data.check_dir(None if via_env else value),
                    lambda: data.mnist(100, data_dir=None if via_env else value)):
        with pytest.raises(GradregError, match="home directory cannot be determined") as err:
            attempt()
        message = one_line(err)
        assert repr(value) in message and ("$GRADREG_DATA" if via_env else "--data-dir") in message


def test_tilde_of_a_known_user_still_expands(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.data_dir("~/x") == (tmp_path / "x", "--data-dir")


def test_no_home_directory_for_the_default_is_one_error(monkeypatch):
    monkeypatch.delenv("GRADREG_DATA", raising=False)

    def no_home(cls=None):
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.setattr(data.Path, "home", classmethod(no_home))
    with pytest.raises(GradregError, match="set GRADREG_DATA or pass --data-dir") as err:
        data.check_dir()
    one_line(err)


class BytesPath:
    def __fspath__(self):
        return b"/tmp"


@pytest.mark.parametrize("value", [5, b"/tmp", 1.5, ["/tmp"], BytesPath()])
def test_data_dir_that_is_not_a_path_is_one_error(value, data_dir):
    for attempt in (lambda: data.data_dir(value), lambda: data.check_dir(value),
                    lambda: data.mnist(100, data_dir=value), lambda: data.cifar10(100, data_dir=value)):
        with pytest.raises(GradregError, match=r"^--data-dir must be a path \(a str or os.PathLike\)") as err:
            attempt()
        one_line(err)


def test_data_dir_may_be_a_pathlike(data_dir):
    assert len(data.mnist(100, data_dir=data_dir).y_train) == 100


# ---------------------------------------------------------------- check_dir: checks, creates nothing

def tree(root: Path) -> list[str]:
    """Every path under ``root`` (relative), to compare before and after."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_check_dir_resolves_as_the_loaders_do(tmp_path, monkeypatch, data_dir):
    monkeypatch.delenv("GRADREG_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.check_dir() == tmp_path / ".cache" / "gradreg"   # the default need not exist yet...
    assert tree(tmp_path) == []                                   # ...and is not created
    assert data.check_dir(str(data_dir)) == data_dir
    monkeypatch.setenv("GRADREG_DATA", str(data_dir))
    assert data.check_dir() == data_dir


@pytest.mark.parametrize("case, expected", [
    ("empty", "--data-dir is empty"),
    ("missing", "does not exist"),
    ("file", "is a file, not a folder"),
    ("env missing", "does not exist"),
    ("env file", "is a file, not a folder"),
    ("default file", "is a file, not a folder"),
])
def test_check_dir_raises_what_the_loaders_raise_and_creates_nothing(tmp_path, monkeypatch, case, expected):
    monkeypatch.delenv("GRADREG_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home" / ".cache").mkdir(parents=True)
    (tmp_path / "a_file").write_text("x")
    explicit = {"empty": "", "missing": str(tmp_path / "nowhere" / "deeper"), "file": str(tmp_path / "a_file")}
    if case == "env missing":
        monkeypatch.setenv("GRADREG_DATA", str(tmp_path / "nowhere"))
    elif case == "env file":
        monkeypatch.setenv("GRADREG_DATA", str(tmp_path / "a_file"))
    elif case == "default file":
        (tmp_path / "home" / ".cache" / "gradreg").write_text("x")
    before = tree(tmp_path)
    for attempt in (lambda: data.check_dir(explicit.get(case)),
                    lambda: data.mnist(100, data_dir=explicit.get(case)),
                    lambda: data.cifar10(100, data_dir=explicit.get(case))):
        with pytest.raises(GradregError, match=expected) as err:
            attempt()
        one_line(err)
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- failed downloads leave no folders

def offline(monkeypatch) -> None:
    """Every mirror points where nothing listens, so a download fails at once."""
    monkeypatch.setattr(data, "MNIST_MIRRORS", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(data, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")


@pytest.mark.parametrize("loader", ["mnist", "cifar10"])
@pytest.mark.parametrize("how", ["explicit", "env", "default"])
def test_failed_download_leaves_the_data_folder_as_it_was(tmp_path, monkeypatch, loader, how):
    offline(monkeypatch)
    monkeypatch.delenv("GRADREG_DATA", raising=False)
    folder = tmp_path / "data"
    folder.mkdir()
    if how == "env":
        monkeypatch.setenv("GRADREG_DATA", str(folder))
    if how == "default":
        monkeypatch.setenv("HOME", str(folder))   # ~/.cache/gradreg/... would be created, then removed
    with pytest.raises(GradregError, match="could not be downloaded") as err:
        data.load(loader, n_train=10, data_dir=str(folder) if how == "explicit" else None)
    one_line(err)
    assert tree(tmp_path) == ["data"]


def test_failed_download_keeps_folders_and_files_that_were_there(tmp_path, monkeypatch):
    offline(monkeypatch)
    (tmp_path / "MNIST").mkdir()                       # existed before: stays, though empty
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "notes.txt").write_text("mine")
    before = tree(tmp_path)
    with pytest.raises(GradregError, match="could not be downloaded"):
        data.mnist(10, data_dir=str(tmp_path))
    with pytest.raises(GradregError, match="could not be downloaded"):
        data.cifar10(10, data_dir=str(tmp_path))
    assert tree(tmp_path) == before and (tmp_path / "cifar-10-batches-py" / "notes.txt").read_text() == "mine"


def test_interrupted_download_removes_its_folders_too(tmp_path, monkeypatch):
    def interrupt(url, filename):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(data.urllib.request, "urlretrieve", interrupt)
    with pytest.raises(KeyboardInterrupt):
        data.mnist(10, data_dir=str(tmp_path))
    assert tree(tmp_path) == []   # neither the .part file nor the folders made for it


# ---------------------------------------------------------------- the loaders' arguments

@pytest.mark.parametrize("options, expected", [
    (dict(n_train=-5), "n_train must be an integer >= 1 or None (all), got -5"),
    (dict(n_train=0), "n_train must be an integer >= 1 or None (all), got 0"),
    (dict(n_train=100, n_test=-1), "n_test must be an integer >= 1 or None (all), got -1"),
    (dict(n_train=100, n_test=0), "n_test must be an integer >= 1 or None (all), got 0"),
    (dict(n_train=True), "n_train must be an integer >= 1 or None (all), got True"),
    (dict(n_train=2.5), "n_train must be an integer >= 1 or None (all), got 2.5"),
    (dict(n_train="100"), "n_train must be an integer >= 1 or None (all), got '100'"),
    (dict(n_train=100, seed=1.5), "seed must be an integer from 0 to 2**63-1, got 1.5"),
    (dict(n_train=100, seed=2**64), f"seed must be an integer from 0 to 2**63-1, got {2**64}"),
    (dict(n_train=100, seed=-1), "seed must be an integer from 0 to 2**63-1, got -1"),
    (dict(n_train=100, seed=True), "seed must be an integer from 0 to 2**63-1, got True"),
    (dict(n_train=100, device="tpu"), "device 'tpu' is not a device torch knows; use device='cpu' or 'cuda'"),
    (dict(n_train=100, device=None), "device None is not a device torch knows; use device='cpu' or 'cuda'"),
    (dict(n_train=100, device=True), "device True is not a device torch knows; use device='cpu' or 'cuda'"),
])
@pytest.mark.parametrize("loader", ["mnist", "cifar10"])
def test_image_loader_arguments_are_checked_before_any_file(tmp_path, loader, options, expected):
    """The folder does not exist: the argument error must come first, naming the argument."""
    with pytest.raises(GradregError) as err:
        data.load(loader, data_dir=str(tmp_path / "nowhere"), **options)
    assert one_line(err) == expected


@pytest.mark.parametrize("loader", ["mnist", "cifar10", "sin5x"])
def test_cuda_without_cuda_is_one_error(monkeypatch, data_dir, loader):
    monkeypatch.setattr(data.torch.cuda, "is_available", lambda: False)
    options = {} if loader == "sin5x" else dict(data_dir=str(data_dir))
    for device in ("cuda", "cuda:0", data.torch.device("cuda")):
        with pytest.raises(GradregError, match=r"needs CUDA, but torch\.cuda\.is_available\(\) is False; "
                                               r"use device='cpu'$") as err:
            data.load(loader, n_train=10, device=device, **options)
        one_line(err)


def test_a_device_that_cannot_be_used_is_one_error(monkeypatch):
    """cuda:999 exists on no machine; without CUDA compiled in, the probe fails as well: either way named."""
    monkeypatch.setattr(data.torch.cuda, "is_available", lambda: True)
    with pytest.raises(GradregError, match=r"^device 'cuda:999' cannot be used here \(.*\); use device='cpu'$") as err:
        data.sin5x(10, device="cuda:999")
    one_line(err)


@pytest.mark.parametrize("options, expected", [
    (dict(n_train=-1), "n_train must be an integer from 1 to 10,000,000, got -1"),
    (dict(n_train=0), "n_train must be an integer from 1 to 10,000,000, got 0"),
    (dict(n_train=None), "n_train must be an integer from 1 to 10,000,000, got None"),
    (dict(n_train=10**7 + 1), "n_train must be an integer from 1 to 10,000,000, got 10000001"),
    (dict(n_test=0), "n_test must be an integer from 1 to 10,000,000, got 0"),
    (dict(n_test=2.0), "n_test must be an integer from 1 to 10,000,000, got 2.0"),
    (dict(noise=float("nan")), "noise must be a finite number >= 0, got nan"),
    (dict(noise=float("inf")), "noise must be a finite number >= 0, got inf"),
    (dict(noise=-0.1), "noise must be a finite number >= 0, got -0.1"),
    (dict(noise="0.1"), "noise must be a finite number >= 0, got '0.1'"),
    (dict(noise=True), "noise must be a finite number >= 0, got True"),
    (dict(seed=2**63), f"seed must be an integer from 0 to 2**63-1, got {2**63}"),
    (dict(device="tpu"), "device 'tpu' is not a device torch knows; use device='cpu' or 'cuda'"),
])
def test_sin5x_arguments_are_checked(options, expected):
    with pytest.raises(GradregError) as err:
        data.sin5x(**options)
    assert one_line(err) == expected


def test_valid_arguments_at_their_limits_still_work(data_dir):
    d = data.mnist(None, seed=2**63 - 1, n_test=None, data_dir=str(data_dir), device=data.torch.device("cpu"))
    assert len(d.y_train) == 60000 and len(d.y_test) == 10000
    d = data.mnist(np.int64(7), seed=np.int64(3), n_test=np.int32(5), data_dir=str(data_dir))
    assert len(d.y_train) == 7 and len(d.y_test) == 5
    assert torch_equal(d.y_train, data.mnist(7, seed=3, data_dir=str(data_dir)).y_train)
    s = data.sin5x(1, seed=0, noise=0, n_test=1)
    assert s.x_train.shape == (1, 1) and torch_equal(s.y_train, data.torch.sin(5 * s.x_train))
    assert len(data.sin5x(3, noise=np.float32(0.5)).y_train) == 3


def torch_equal(a, b) -> bool:
    return bool(data.torch.equal(a, b))


def test_load_keeps_the_calls_the_training_loop_makes(data_dir):
    """gradreg.train.load_data: sin5x directly, the others through load with these keys."""
    cpu = data.torch.device("cpu")
    d = data.load("mnist", n_train=20, seed=1, n_test=None, data_dir=str(data_dir), device=cpu, protocol="paper")
    assert len(d.y_train) == 20 and len(d.y_test) == 10000
    with pytest.warns(UserWarning, match="official"):   # the offline subset
        d = data.load("cifar10", n_train=None, seed=0, n_test=None, data_dir=str(data_dir), device=cpu)
    assert len(d.y_train) == 5085 and len(d.y_test) == 1017
    n_train, n_test = None, None   # cfg.n_train, cfg.n_test left at "all"
    assert len(data.sin5x(n_train or 100, 0, n_test=n_test or 900, device=cpu).y_test) == 900


@pytest.mark.parametrize("name", [["mnist"], None, 5, b"mnist"])
def test_load_with_a_name_that_is_not_a_string_is_one_error(name):
    with pytest.raises(GradregError, match=r"^dataset name must be a string \(mnist, cifar10, sin5x, sparse_linear\), got ") as err:
        data.load(name)
    one_line(err)


@pytest.mark.parametrize("name, options, expected", [
    ("mnist", dict(bogus=1),
     "dataset 'mnist' takes no option 'bogus'; accepted: n_train, seed, protocol, n_test, data_dir, device"),
    ("cifar10", dict(augment="shift", n_train=5),
     "dataset 'cifar10' takes no option 'augment'; accepted: n_train, seed, n_test, protocol, data_dir, device"),
    ("sin5x", dict(data_dir="/tmp", colour=1),
     "dataset 'sin5x' takes no option 'data_dir', 'colour'; accepted: n_train, seed, noise, n_test, device"),
])
def test_load_with_an_unknown_option_is_one_error(name, options, expected):
    with pytest.raises(GradregError) as err:
        data.load(name, **options)
    assert one_line(err) == expected


def test_load_with_an_unknown_name_is_one_error():
    with pytest.raises(GradregError) as err:
        data.load("imagenet")
    assert one_line(err) == "unknown dataset 'imagenet'; known: mnist, cifar10, sin5x, sparse_linear"


def test_a_nested_list_bomb_in_place_of_the_images_is_refused_at_once(data_dir, tmp_path):
    """16 KB of pickle that np.asarray would spend hours expanding (shared references): refused by type."""
    import time
    root = copy_cifar(data_dir, tmp_path)
    row = [0] * 3072
    write_batch(root, "data_batch_2", {"data": [[row] * 1000] * 4000, "labels": [0]})
    start = time.time()
    with pytest.raises(GradregError, match="its 'data' is a list, not a numpy array"):
        data.cifar10_raw(str(root))
    assert time.time() - start < 30
