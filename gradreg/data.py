"""Data sets as device tensors: MNIST and CIFAR-10 from their original files, and the sin(5x) toy.

Where the files live: ``--data-dir`` / the ``data_dir`` argument, else ``$GRADREG_DATA``, else
``~/.cache/gradreg``. The layout is torchvision's (``DIR/MNIST/raw/*.gz``, ``DIR/cifar-10-batches-py/``),
so an existing torchvision download can be reused. Missing files are downloaded with their checksums
verified when the internet is reachable; otherwise one GradregError says where we looked and what to do.

Data files are data, never code: CIFAR-10 batches are unpickled by an unpickler that admits only the
few globals the batch format holds (``pickle.load`` would call any function a file names). Every file is
checked for what its format promises (shapes, image count = label count, labels 0..9), so a damaged,
truncated or hostile file is one GradregError naming it, never code run or silently misaligned training.
MNIST files must match their pinned MD5s; CIFAR-10 batch files that differ from the originals' MD5s
(such as the offline subset in shared/data) are loaded after the structural checks with one warning.

Batching and augmentation are pure functions of batch tensors, run on whatever device the data are on:
no DataLoader, no workers.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib
import inspect
import math
import numbers
import os
import pickle
import tarfile
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import GradregError

MNIST_FILES = {  # file -> MD5 (the values torchvision pins for the original files)
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
CIFAR10_BATCH_MD5 = {  # batch file -> MD5 of the original file (the values torchvision pins)
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
MAX_SEED = 2**63 - 1   # the largest seed a torch.Generator takes as a signed 64-bit integer
SIN5X_MAX = 10**7      # sin(5x) points: beyond this the toy is a typo, and memory would run out first


@dataclass
class Dataset:
    """Standardised training and test tensors on one device. ``classes`` is None for regression.

    ``official``: True where the files were verified as the original ones by their MD5s, False where
    they differ (loaded after structural checks only), None for synthetic data.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: int | None
    official: bool | None = None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Dataset":
        """The same data on another device and/or floating dtype (integer labels stay integers)."""
        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        return Dataset(self.name, *(move(t) for t in (self.x_train, self.y_train, self.x_test, self.y_test)),
                       self.classes, self.official)


# ---------------------------------------------------------------- where the files are

def _expand(text: str, origin: str) -> Path:
    """``text`` as a path with a leading ``~`` / ``~user`` expanded; an unknown user is a GradregError
    (``Path.expanduser`` raises a bare RuntimeError that names neither the value nor where it came from)."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        raise GradregError(f"data directory {text!r} (from {origin}) starts with '~' but that home directory "
                           "cannot be determined (no such user?); give the folder as a full path") from None


def _default_dir() -> Path:
    """``~/.cache/gradreg``; a process without a home directory gets a GradregError saying what to set."""
    try:
        return Path.home() / ".cache" / "gradreg"
    except (RuntimeError, KeyError):
        raise GradregError("no home directory for the default data folder ~/.cache/gradreg; set "
                           "GRADREG_DATA or pass --data-dir") from None


def data_dir(explicit: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The data directory and where that choice came from (for error messages); creates nothing.

    An explicitly empty ``--data-dir ''`` is an error, not the current directory (where downloads would
    create folders); an empty ``$GRADREG_DATA`` means unset. ``explicit`` must be a str or os.PathLike.
    """
    if explicit is not None:
        text = os.fspath(explicit) if isinstance(explicit, (str, os.PathLike)) else None
        if not isinstance(text, str):  # 5, b"/tmp", a PathLike of bytes: no folder we would name right
            raise GradregError(f"--data-dir must be a path (a str or os.PathLike), got {explicit!r}")
        if not text.strip():
            raise GradregError("--data-dir is empty; give a folder that holds MNIST/raw/ or "
                               "cifar-10-batches-py/, or leave the option out to use $GRADREG_DATA or "
                               "~/.cache/gradreg")
        return _expand(text, "--data-dir"), "--data-dir"
    if os.environ.get("GRADREG_DATA"):
        return _expand(os.environ["GRADREG_DATA"], "$GRADREG_DATA"), "$GRADREG_DATA"
    return _default_dir(), "the default"


def _check_dir(root: Path, origin: str) -> None:
    """The data directory must be a folder; an explicitly chosen one must exist, the default one is
    created for downloads."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise GradregError(f"data directory {root} (from {origin}) is a file, not a folder; point "
                           "--data-dir or GRADREG_DATA at a folder holding MNIST/raw/ or "
                           "cifar-10-batches-py/")
    if origin != "the default" and not os.path.isdir(root):
        raise GradregError(f"data directory {root} (from {origin}) does not exist; "
                           "point --data-dir or GRADREG_DATA at a folder holding MNIST/raw/ or "
                           "cifar-10-batches-py/")


def _resolve_dir(explicit: str | os.PathLike | None) -> tuple[Path, str]:
    """``data_dir`` followed by ``_check_dir``: the checked folder and where it came from."""
    root, origin = data_dir(explicit)
    _check_dir(root, origin)
    return root, origin


def check_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The data directory the loaders would use, checked as they check it, with nothing created.

    For callers that must fail before writing anything (the experiment runner, the training loop), sin5x
    included: an empty ``explicit``, one that is not a folder or does not exist, a ``$GRADREG_DATA`` that
    is a file or missing, a default that is a file: each is the GradregError the loaders raise. The
    default ``~/.cache/gradreg`` need not exist yet (downloads create it).
    """
    return _resolve_dir(explicit)[0]


def _unreadable(path: Path, err: BaseException, what: str) -> GradregError:
    """One error for a file that cannot be opened or decoded: which file, why (one line), what to do."""
    why = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, PermissionError):
        todo = "make it readable for this user"
    elif os.path.isdir(path):
        todo = "remove that folder and put the original file in its place"
    else:
        todo = "replace it with the original file"
    return GradregError(f"{path} cannot be read as {what} ({type(err).__name__}: {why}); {todo}")


def md5(path: Path) -> str:
    """MD5 hex digest of a file, read in 1 MiB chunks; an unreadable file is a GradregError naming it."""
    h = hashlib.md5()
    if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):  # /dev/zero would never end
        raise GradregError(f"{path} is not a regular file (a pipe or a device?); put the original file in its place")
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as err:
        raise _unreadable(Path(path), err, "a data file") from None
    return h.hexdigest()


def _make_dirs(folder: Path, created: list[Path]) -> None:
    """Create ``folder`` and its missing parents, outermost first, appending each one made here to
    ``created`` as it is made (a folder another process makes meanwhile is not ours to remove)."""
    for path in [p for p in (folder, *folder.parents) if not p.exists()][::-1]:
        try:
            path.mkdir()
        except FileExistsError:
            continue
        created.append(path)


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders of ``created`` that are still empty, innermost first; others stay as they are."""
    for path in reversed(created):
        try:
            path.rmdir()  # refuses a folder that is not empty
        except OSError:
            pass


def _fetch(urls: list[str], dest: Path, checksum: str) -> None:
    """Fetch the first URL that answers into ``dest`` and verify its MD5; raise OSError if none does.
    The partial file is this process's own: several workers of a cluster node fetching the same file
    at once each write their own and rename it into place whole."""
    errors = []
    for url in urls:
        tmp = dest.with_suffix(dest.suffix + f".{os.getpid()}.part")
        try:
            urllib.request.urlretrieve(url, tmp)
        except BaseException as err:  # Ctrl-C included: no partial download left behind
            tmp.unlink(missing_ok=True)
            if not isinstance(err, OSError):
                raise
            errors.append(f"{url}: {err}")
            continue
        if md5(tmp) != checksum:
            tmp.unlink()
            errors.append(f"{url}: checksum mismatch")
            continue
        tmp.replace(dest)
        return
    raise OSError("; ".join(errors))


def _download(urls: list[str], dest: Path, checksum: str) -> None:
    """``_fetch`` into ``dest``, creating its folder; on failure (or Ctrl-C) the folders created here are
    removed again while empty, so a failed offline attempt leaves the data directory as it was."""
    created: list[Path] = []
    try:
        _make_dirs(dest.parent, created)
        _fetch(urls, dest, checksum)
    except BaseException:
        _remove_empty(created)
        raise


def _check_labels(labels: np.ndarray, path: Path) -> None:
    """Every label must be a class 0..9: anything else would train (or score) against no class."""
    bad = np.flatnonzero((labels < 0) | (labels > 9))
    if bad.size:
        raise GradregError(f"{path} has label {labels[bad[0]]} at position {bad[0]}, outside the classes "
                           "0..9; replace it with the original file")


# ---------------------------------------------------------------- MNIST (IDX files)

def _read_idx(path: Path) -> np.ndarray:
    """Parse a gzip-compressed IDX file (the original MNIST format) into a uint8 array.

    Not gzip, truncated, or a header that disagrees with the data length: one GradregError naming the file.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise _unreadable(path, err, "a gzip-compressed IDX file") from None
    magic = int.from_bytes(raw[:4], "big")
    if len(raw) < 4 or magic >> 8 != 0x08:  # 0x08 = unsigned byte data
        raise GradregError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x}); "
                           "replace it with the original file")
    ndim = magic & 0xFF
    offset = 4 + 4 * ndim
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) < offset or len(raw) - offset != math.prod(shape):
        raise GradregError(f"{path} holds {max(len(raw) - offset, 0):,} data bytes but its header promises "
                           f"{math.prod(shape):,} ({'x'.join(map(str, shape))}); the file is truncated or "
                           "damaged: replace it with the original file")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)


def _check_mnist(images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path) -> None:
    """Images [N, 28, 28] and labels [N] in 0..9: a mismatch would silently train on misaligned pairs."""
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise GradregError(f"{images_path} holds an array of shape {'x'.join(map(str, images.shape))}, not "
                           "N images of 28x28; replace it with the original file")
    if labels.ndim != 1:
        raise GradregError(f"{labels_path} holds an array of shape {'x'.join(map(str, labels.shape))}, not "
                           "a list of labels; replace it with the original file")
    if len(images) != len(labels):
        raise GradregError(f"{images_path} holds {len(images):,} images but {labels_path} holds "
                           f"{len(labels):,} labels; replace both with the original files")
    _check_labels(labels, labels_path)


@lru_cache(maxsize=4)
def mnist_raw(root: str | None = None) -> dict[str, Tensor]:
    """The full original MNIST as uint8 tensors: train [60000, 28, 28] and test [10000, 28, 28].

    Each file's MD5 is verified; a missing file is downloaded (with its MD5 verified) if possible.
    Shapes, counts and labels are checked as well (see ``_check_mnist``).
    """
    base, origin = _resolve_dir(root)
    raw = base / "MNIST" / "raw"
    for name, checksum in MNIST_FILES.items():
        path = raw / name
        if not path.exists():
            try:
                _download([m + name for m in MNIST_MIRRORS], path, checksum)
            except OSError as err:
                raise GradregError(
                    f"MNIST file {name} is not in {raw} (data directory from {origin}) and could not be "
                    f"downloaded ({err}). Copy the four original IDX .gz files there, or point "
                    "--data-dir / GRADREG_DATA at a folder that holds MNIST/raw/.") from None
        elif (digest := md5(path)) != checksum:
            raise GradregError(f"{path} is corrupt (MD5 {digest}, expected {checksum}); delete it "
                               "to download it again, or replace it with the original file")
    arrays = {name.split("-idx")[0]: _read_idx(raw / name) for name in MNIST_FILES}
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images"], arrays[f"{split}-labels"]
        _check_mnist(images, labels, raw / f"{split}-images-idx3-ubyte.gz",
                     raw / f"{split}-labels-idx1-ubyte.gz")
    tensors = {key: torch.from_numpy(a.copy()) for key, a in arrays.items()}
    return {"x_train": tensors["train-images"], "y_train": tensors["train-labels"].long(),
            "x_test": tensors["t10k-images"], "y_test": tensors["t10k-labels"].long()}


# ---------------------------------------------------------------- CIFAR-10 (python batches)

class _RefusedGlobal(pickle.UnpicklingError):
    """A batch file names a global outside the CIFAR-10 format; the message is its dotted name."""


def _numpy_global(module: str, name: str) -> Any:
    """``numpy._core.<module>.<name>``, or its old home ``numpy.core`` on a numpy that lacks ``_core``."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What ``_codecs.encode`` does in protocol-2 pickles of bytes by Python 3 (latin1 text to bytes),
    and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _RefusedGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# (module, name) -> the object it may stand for. Dicts, lists, str, bytes and ints are pickle opcodes and
# need no global; numpy arrays need these (``_frombuffer``: protocol-5 pickles; ``_codecs.encode`` and
# ``bytes``: bytes in protocol-2 pickles written by Python 3).
_CIFAR10_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_global("multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_global("numeric", "_frombuffer"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_bytes,
    ("builtins", "bytes"): lambda: bytes,
}
# Old module names (numpy < 2, Python 2) -> the names above; mapped here so numpy's own shim, which
# warns about its deprecation, is never imported.
_RENAMED_MODULES = {"numpy.core.multiarray": "numpy._core.multiarray",
                    "numpy.core.numeric": "numpy._core.numeric", "__builtin__": "builtins"}


class _BatchUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR-10 batch holds: dicts, lists, str/bytes, ints and numpy arrays.

    ``pickle.load`` calls whatever global a file names (``os.system`` included), so a data file could run
    code; this unpickler refuses every global outside ``_CIFAR10_GLOBALS``.
    """

    def find_class(self, module: str, name: str) -> Any:
        make = _CIFAR10_GLOBALS.get((_RENAMED_MODULES.get(module, module), name))
        if make is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return make()


def _unpickle_batch(path: Path) -> Any:
    """The object pickled in a batch file, by the restricted unpickler; any failure is one GradregError."""
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f, encoding="latin1").load()  # latin1: the originals are Python 2 pickles
    except _RefusedGlobal as err:
        raise GradregError(f"CIFAR-10 loader refuses to load {err} from {path}: not part of the CIFAR-10 "
                           "format (a data file must not run code); replace the file with the "
                           "original") from None
    except Exception as err:  # noqa: BLE001 - garbage can fail in many ways (EOFError, UnpicklingError, ...)
        raise _unreadable(path, err, "a CIFAR-10 batch") from None


def _integers(value: Any) -> np.ndarray | None:
    """``value`` as an integer numpy array, or None where it is not one (ragged, text, floats, objects)."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, MemoryError):   # ragged, odd, or a nested-list bomb
        return None
    if array.size == 0 and array.dtype.kind == "f":  # np.asarray([]) is float64: an empty list is fine here
        return array.astype(np.int64)
    return array if array.dtype.kind in "iu" else None


def _check_batch(batch: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] from an unpickled batch, or one GradregError that
    says what breaks the format: not a dict, a missing key, rows not of 3072 pixels, counts, labels."""
    def bad(what: str) -> GradregError:
        return GradregError(f"{path} is not a CIFAR-10 batch: {what}; replace it with the original file")
    if not isinstance(batch, dict):
        raise bad(f"it holds a {type(batch).__name__}, not a dict")
    missing = [repr(key) for key in ("data", "labels") if key not in batch]
    if missing:
        raise bad(f"it has no {' and no '.join(missing)} entry")
    if not isinstance(batch["data"], np.ndarray):   # the format's images are one array; a list could be a bomb
        raise bad(f"its 'data' is a {type(batch['data']).__name__}, not a numpy array")
    data, labels = _integers(batch["data"]), _integers(batch["labels"])
    if data is None or data.ndim != 2:
        raise bad(f"its 'data' ({type(batch['data']).__name__}) is not an N x 3072 array of pixel values")
    if data.shape[1] != 3072:
        raise bad(f"its 'data' rows hold {data.shape[1]:,} values, expected 3,072 (3 colour planes of 32x32)")
    if labels is None or labels.ndim != 1:
        raise bad(f"its 'labels' ({type(batch['labels']).__name__}) is not a list of integers")
    if len(data) != len(labels):
        raise bad(f"it holds {len(data):,} images but {len(labels):,} labels")
    if len(data) == 0:
        raise bad("it holds no images")
    if data.dtype != np.uint8 and (data.min() < 0 or data.max() > 255):
        raise bad("its 'data' has values outside 0..255")
    _check_labels(labels, path)
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def cifar10_differing(folder: Path) -> tuple[str, ...]:
    """The batch files in ``folder`` whose MD5 differs from the original's (empty: the official files)."""
    return tuple(name for name, checksum in CIFAR10_BATCH_MD5.items() if md5(Path(folder) / name) != checksum)


_WARNED_UNOFFICIAL: set[str] = set()  # folders already warned about (once per folder and process)


def _warn_unofficial(folder: Path, differing: tuple[str, ...]) -> None:
    """One UserWarning per folder that its batch files are not the official ones. ``cifar10`` issues it
    once the data set is built, so a request that fails is one error and no warning before it."""
    key = os.path.realpath(folder)
    if key in _WARNED_UNOFFICIAL:
        return
    _WARNED_UNOFFICIAL.add(key)
    warnings.warn(f"{folder}: {', '.join(differing)} differ from the official CIFAR-10 files (MD5 mismatch); "
                  "these data are not the official CIFAR-10 files and were loaded after structural checks "
                  "only, so results are not comparable with the full data set", UserWarning, stacklevel=3)


def _read_batches(folder: Path, names: list[str]) -> tuple[Tensor, Tensor]:
    """Images and labels of the named batch files, each unpickled safely and checked, concatenated."""
    pairs = [_check_batch(_unpickle_batch(folder / name), folder / name) for name in names]
    return (torch.from_numpy(np.concatenate([x for x, _ in pairs])),
            torch.from_numpy(np.concatenate([y for _, y in pairs])))


@lru_cache(maxsize=4)
def cifar10_raw(root: str | None = None) -> dict[str, Any]:
    """CIFAR-10 from its "python version" batch files, as uint8 [N, 3, 32, 32] and labels [N].

    Keys: ``x_train``, ``y_train``, ``x_test``, ``y_test`` (tensors); ``validation_size`` (images in
    ``data_batch_5``, the last of the training images: protocol "validation" holds them out); ``official`` (bool: every batch file
    has the MD5 of the original), ``differing`` (tuple of the batch file names whose MD5 differs) and
    ``folder`` (the batch folder). Differing files are still loaded, after the structural checks; the
    offline subset in shared/data is such a case (its files are re-pickled). No warning here: ``cifar10``
    warns once the data set it was asked for has been built.
    """
    base, origin = _resolve_dir(root)
    folder = base / "cifar-10-batches-py"
    if not all((folder / f).exists() for f in CIFAR10_FILES):
        archive = base / "cifar-10-python.tar.gz"
        try:
            _download([CIFAR10_URL], archive, CIFAR10_MD5)
            with tarfile.open(archive) as tar:
                tar.extractall(base, filter="data")
        except (OSError, tarfile.TarError) as err:
            raise GradregError(
                f"CIFAR-10 batches are not in {folder} (data directory from {origin}) and could not be "
                f"downloaded ({err}). Put data_batch_1..5 and test_batch there, or point --data-dir / "
                "GRADREG_DATA at a folder that holds cifar-10-batches-py/.") from None
    differing = cifar10_differing(folder)
    x_first, y_first = _read_batches(folder, CIFAR10_FILES[:4])
    x_last, y_last = _read_batches(folder, CIFAR10_FILES[4:5])
    x_test, y_test = _read_batches(folder, CIFAR10_FILES[5:])
    return {"x_train": torch.cat([x_first, x_last]), "y_train": torch.cat([y_first, y_last]),
            "x_test": x_test, "y_test": y_test, "validation_size": len(y_last),
            "official": not differing, "differing": differing, "folder": folder}


# ---------------------------------------------------------------- subsets and standardisation

def _standardise(x_train: Tensor, x_test: Tensor, own_test_stats: bool = False) -> tuple[Tensor, Tensor]:
    """Scale pixels to [0, 1], then standardise each channel with the *training subset's* statistics.

    ``own_test_stats``: standardise the test images with the test set's own statistics instead, as
    the authors' ``evaluate()`` did (a test set then never sees the training subset's mean and std).
    """
    x_train, x_test = x_train.float() / 255, x_test.float() / 255
    dims = [0] + list(range(2, x_train.dim()))
    stats = lambda x: (x.mean(dims, keepdim=True), x.std(dims, keepdim=True))  # noqa: E731
    (mean, std), (mean_te, std_te) = stats(x_train), stats(x_test if own_test_stats else x_train)
    return (x_train - mean) / std, (x_test - mean_te) / std_te


def _check_size(option: str, n: int | None, available: int, what: str) -> None:
    """Asking for more points than the data hold is an error, never a silent clip to what is there."""
    if n is not None and n > available:
        raise GradregError(f"{option}={n} asks for more than the {available:,} {what}; "
                           f"use {option}={available} or fewer")


def _subset(raw: dict[str, Any], n_train: int | None, seed: int, pool: int, held_out: bool,
            n_test: int | None, name: str = "the data set") -> tuple[Tensor, ...]:
    """First ``n_train`` of a seed-dependent shuffle of the first ``pool`` training images; the test
    set is the official one, or (``held_out``) the training images after ``pool``. Sizes beyond the
    available images are a GradregError that names ``name`` and the available count."""
    if held_out:
        x_test, y_test = raw["x_train"][pool:], raw["y_train"][pool:]
    else:
        x_test, y_test = raw["x_test"], raw["y_test"]
    _check_size("n_train", n_train, pool, f"training images available in {name}")
    _check_size("n_test", n_test, len(y_test), f"test images available in {name}")
    perm = torch.randperm(pool, generator=torch.Generator().manual_seed(seed))
    idx = perm[: n_train or pool]
    return raw["x_train"][idx], raw["y_train"][idx], x_test[:n_test], y_test[:n_test]


# ---------------------------------------------------------------- the loaders' arguments

def _is_int(value: Any) -> bool:
    """A Python or numpy integer, but not a bool (``True`` would silently mean 1)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_count(option: str, value: Any, optional: bool, most: int | None) -> None:
    """A number of points: an integer >= 1 (and <= ``most``), or None (all) where ``optional``.
    0 and negative values are errors, never "all" or "all but a few" by slicing."""
    if optional and value is None:
        return
    if not _is_int(value) or value < 1 or (most is not None and value > most):
        bounds = f"from 1 to {most:,}" if most is not None else ">= 1"
        none = " or None (all)" if optional else ""
        raise GradregError(f"{option} must be an integer {bounds}{none}, got {value!r}")


def _device(device: Any) -> torch.device:
    """``device`` as a torch.device that works here: a name torch knows, and CUDA only where available
    (else torch fails late with a bare RuntimeError or AssertionError)."""
    try:
        checked = torch.device(device) if not isinstance(device, bool) else None
    except (RuntimeError, TypeError, ValueError):
        checked = None
    if checked is None:
        raise GradregError(f"device {device!r} is not a device torch knows; use device='cpu' or 'cuda'")
    if checked.type == "cuda" and not torch.cuda.is_available():
        raise GradregError(f"device {device!r} needs CUDA, but torch.cuda.is_available() is False; "
                           "use device='cpu'")
    if checked.type != "cpu":
        try:
            torch.empty(0, device=checked)  # "cuda:7" on one GPU, "mps" without one: fail here, named
        except Exception as err:  # noqa: BLE001 - backends fail with RuntimeError, AssertionError, ...
            why = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise GradregError(f"device {device!r} cannot be used here ({type(err).__name__}: {why}); "
                               "use device='cpu'") from None
    return checked


def _check_args(n_train: Any, n_test: Any, seed: Any, device: Any, *, optional: bool = True,
                most: int | None = None) -> torch.device:
    """The arguments every loader shares, checked before any file is read; returns the device.

    ``optional``: None means "all points" (MNIST, CIFAR-10); ``most``: an upper bound on the sizes where
    the data set has none of its own (sin5x). Each failure is one GradregError naming the argument.
    """
    _check_count("n_train", n_train, optional, most)
    _check_count("n_test", n_test, optional, most)
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise GradregError(f"seed must be an integer from 0 to 2**63-1, got {seed!r}")
    return _device(device)


def _root_key(data_dir: str | os.PathLike | None) -> str | None:
    """The data directory argument checked (``check_dir``) and spelt as the raw loaders' cache key."""
    check_dir(data_dir)
    return None if data_dir is None else os.fspath(data_dir)


# ---------------------------------------------------------------- the data sets

def mnist(n_train: int | None = None, seed: int = 0, protocol: str = "official", n_test: int | None = None,
          data_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Dataset:
    """A standardised MNIST training subset and a test set, on ``device``. Images are [N, 1, 28, 28].

    protocol "official": subset of all 60,000 training images, evaluated on the 10,000 test images.
    protocol "paper": the authors' split and evaluation — subset of the first 50,000, evaluated on
    the last 10,000 *training* images, which are standardised with their own statistics (the
    authors' ``evaluate()``; "official" uses the training subset's for both).
    ``n_train`` / ``n_test``: None for all, else an integer >= 1.
    """
    device = _check_args(n_train, n_test, seed, device)
    if protocol not in ("official", "paper"):
        raise GradregError(f"unknown MNIST protocol {protocol!r}; known: official, paper")
    raw = mnist_raw(_root_key(data_dir))
    available = len(raw["y_train"])  # 60,000 in the MD5-verified original files
    pool = available if protocol == "official" else 50000
    if protocol == "paper" and available <= pool:
        raise GradregError(f"MNIST protocol 'paper' holds out the training images after the first 50,000, "
                           f"but the training files hold only {available:,}; use protocol 'official' or the "
                           "original files")
    x_tr, y_tr, x_te, y_te = _subset(raw, n_train, int(seed), pool, protocol == "paper", n_test,
                                     f"MNIST (protocol {protocol!r})")
    x_tr, x_te = _standardise(x_tr.unsqueeze(1), x_te.unsqueeze(1), own_test_stats=protocol == "paper")
    return Dataset("mnist", x_tr, y_tr, x_te, y_te, 10, official=True).to(device)


def cifar10(n_train: int | None = None, seed: int = 0, n_test: int | None = None, protocol: str = "official",
            data_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Dataset:
    """A standardised CIFAR-10 training subset and a test set, on ``device``; images [N, 3, 32, 32].

    protocol "official": subset of all training images, evaluated on the test batch.
    protocol "validation": for choosing weights without looking at the test batch — subset of the
    first four training batch files, evaluated on the fifth (``data_batch_5``: 10,000 images of the
    full set, 1,017 of the offline subset; a fifth of the training images either way).
    ``Dataset.official`` records whether the batch files had the originals' MD5s (see ``cifar10_raw``);
    where they did not, one UserWarning per folder says so, once the data set has been built.
    """
    device = _check_args(n_train, n_test, seed, device)
    if protocol not in ("official", "validation"):
        raise GradregError(f"unknown CIFAR-10 protocol {protocol!r}; known: official, validation")
    raw = cifar10_raw(_root_key(data_dir))
    name = "CIFAR-10" if raw["official"] else "CIFAR-10 (files that differ from the official ones)"
    available = len(raw["y_train"])
    pool = available if protocol == "official" else available - raw["validation_size"]
    if protocol == "validation":
        name += " without its validation batch"
    x_tr, y_tr, x_te, y_te = _subset(raw, n_train, int(seed), pool, protocol == "validation", n_test, name)
    x_tr, x_te = _standardise(x_tr, x_te)
    dataset = Dataset("cifar10", x_tr, y_tr, x_te, y_te, 10, official=raw["official"]).to(device)
    if raw["differing"]:
        _warn_unofficial(raw["folder"], raw["differing"])
    return dataset


def sin5x(n_train: int = 100, seed: int = 0, noise: float = 0.1, n_test: int = 900,
          device: str | torch.device = "cpu") -> Dataset:
    """The synthetic set of Figure 1 (right): x ~ U(−1, 1), y = sin(5x) + N(0, noise²).

    The test set is a dense grid of ``n_test`` points on [−1, 1] with the noise-free target. Sizes are
    integers from 1 to ``SIN5X_MAX``; ``noise`` is a finite number >= 0 (the standard deviation).
    """
    device = _check_args(n_train, n_test, seed, device, optional=False, most=SIN5X_MAX)
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not (
            math.isfinite(noise) and noise >= 0):
        raise GradregError(f"noise must be a finite number >= 0, got {noise!r}")
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.rand(int(n_train), 1, generator=gen) * 2 - 1
    y = torch.sin(5 * x) + float(noise) * torch.randn(int(n_train), 1, generator=gen)
    grid = torch.linspace(-1, 1, int(n_test)).unsqueeze(1)
    return Dataset("sin5x", x, y, grid, torch.sin(5 * grid), None).to(device)


SPARSE_FEATURES, SPARSE_SUPPORT, SPARSE_NOISE = 100, 5, 0.1


def sparse_beta(seed: int) -> Tensor:
    """β* of ``sparse_linear`` for a seed: ``SPARSE_SUPPORT`` entries equal to 1 at random places, the
    other ``SPARSE_FEATURES`` − k entries 0 (float64)."""
    gen = torch.Generator().manual_seed(int(seed))
    beta = torch.zeros(SPARSE_FEATURES, dtype=torch.float64)
    beta[torch.randperm(SPARSE_FEATURES, generator=gen)[:SPARSE_SUPPORT]] = 1.0
    return beta


def sparse_linear(n_train: int = 40, seed: int = 0, n_test: int = 1000,
                  device: str | torch.device = "cpu") -> Dataset:
    """Sparse linear regression, the data of Karakida et al.'s diagonal-network analysis (and of
    Woodworth et al. 2020): d = 100 features x ~ N(0, I_d), a k = 5 sparse β* (``sparse_beta``),
    y = ⟨x, β*⟩ + N(0, 0.1²). With n_train < d the training set has many interpolating β; which one
    training finds is the implicit bias. Test targets are noise-free, so the test loss is the
    excess risk ‖β − β*‖² up to sampling of the test points. β*, X and the noise depend on the seed."""
    device = _check_args(n_train, n_test, seed, device, optional=False, most=SIN5X_MAX)
    beta = sparse_beta(seed)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    x = torch.randn(int(n_train), SPARSE_FEATURES, generator=gen, dtype=torch.float64)
    y = x @ beta + SPARSE_NOISE * torch.randn(int(n_train), generator=gen, dtype=torch.float64)
    x_test = torch.randn(int(n_test), SPARSE_FEATURES, generator=gen, dtype=torch.float64)
    dtype = torch.get_default_dtype()
    return Dataset("sparse_linear", x.to(dtype), y[:, None].to(dtype), x_test.to(dtype),
                   (x_test @ beta)[:, None].to(dtype), None).to(device)


DATASETS = {"mnist": mnist, "cifar10": cifar10, "sin5x": sin5x, "sparse_linear": sparse_linear}


def load(name: str, **options: Any) -> Dataset:
    """Make a data set by registry name with its options. An unknown name, or an option the loader does
    not take, is a GradregError that lists what is known (not a TypeError from the call)."""
    if not isinstance(name, str):
        raise GradregError(f"dataset name must be a string ({', '.join(DATASETS)}), got {name!r}")
    if name not in DATASETS:
        raise GradregError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    accepted = list(inspect.signature(DATASETS[name]).parameters)
    unknown = [key for key in options if key not in accepted]
    if unknown:
        raise GradregError(f"dataset {name!r} takes no option {', '.join(map(repr, unknown))}; "
                           f"accepted: {', '.join(accepted)}")
    return DATASETS[name](**options)


# ---------------------------------------------------------------- batching and augmentation

def batch_indices(n: int, batch_size: int, generator: torch.Generator):
    """Endless minibatch indices: a fresh random permutation each epoch, sliced into batches."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i: i + batch_size]
        if n < batch_size:
            yield perm


def random_shift(x: Tensor, pixels: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to ``pixels`` in each direction, zero filling (pad, random crop)."""
    B, C, H, W = x.shape
    padded = F.pad(x, (pixels,) * 4)
    dy, dx = (torch.randint(2 * pixels + 1, (2, B), generator=generator)).to(x.device)
    rows = (torch.arange(H, device=x.device) + dy[:, None])[:, None, :, None].expand(B, C, H, W + 2 * pixels)
    cols = (torch.arange(W, device=x.device) + dx[:, None])[:, None, None, :].expand(B, C, H, W)
    return padded.gather(2, rows).gather(3, cols)


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)
