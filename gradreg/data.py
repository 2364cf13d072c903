"""Data sets as device tensors: MNIST and CIFAR-10 from their original files, and the sin(5x) toy.

Where the files live: ``--data-dir`` / the ``data_dir`` argument, else ``$GRADREG_DATA``, else
``~/.cache/gradreg``. The layout is torchvision's (``DIR/MNIST/raw/*.gz``, ``DIR/cifar-10-batches-py/``),
so an existing torchvision download can be reused. Missing files are downloaded with their checksums
verified when the internet is reachable; otherwise one GradregError says where we looked and what to do.

Batching and augmentation are pure functions of batch tensors, run on whatever device the data are on:
no DataLoader, no workers.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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


@dataclass
class Dataset:
    """Standardised training and test tensors on one device. ``classes`` is None for regression."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: int | None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Dataset":
        """The same data on another device and/or floating dtype (integer labels stay integers)."""
        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        return Dataset(self.name, *(move(t) for t in (self.x_train, self.y_train, self.x_test, self.y_test)),
                       self.classes)


# ---------------------------------------------------------------- where the files are

def data_dir(explicit: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The data directory and where that choice came from (for error messages)."""
    if explicit is not None:
        return Path(explicit).expanduser(), "--data-dir"
    if os.environ.get("GRADREG_DATA"):
        return Path(os.environ["GRADREG_DATA"]).expanduser(), "$GRADREG_DATA"
    return Path.home() / ".cache" / "gradreg", "the default"


def _check_dir(root: Path, origin: str) -> None:
    """An explicitly chosen directory must exist; the default one is created for downloads."""
    if origin != "the default" and not root.is_dir():
        raise GradregError(f"data directory {root} (from {origin}) does not exist; "
                           "point --data-dir or GRADREG_DATA at a folder holding MNIST/raw/ or "
                           "cifar-10-batches-py/")


def md5(path: Path) -> str:
    """MD5 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(urls: list[str], dest: Path, checksum: str) -> None:
    """Fetch the first URL that answers into ``dest`` and verify its MD5; raise if none does."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        tmp = dest.with_suffix(dest.suffix + ".part")
        try:
            urllib.request.urlretrieve(url, tmp)
        except OSError as err:
            errors.append(f"{url}: {err}")
            continue
        if md5(tmp) != checksum:
            tmp.unlink()
            errors.append(f"{url}: checksum mismatch")
            continue
        tmp.replace(dest)
        return
    raise OSError("; ".join(errors))


# ---------------------------------------------------------------- MNIST (IDX files)

def _read_idx(path: Path) -> np.ndarray:
    """Parse a gzip-compressed IDX file (the original MNIST format) into a uint8 array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte data
        raise GradregError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@lru_cache(maxsize=4)
def mnist_raw(root: str | None = None) -> dict[str, Tensor]:
    """The full original MNIST as uint8 tensors: train [60000, 28, 28] and test [10000, 28, 28].

    Each file's MD5 is verified; a missing file is downloaded (with its MD5 verified) if possible.
    """
    base, origin = data_dir(root)
    _check_dir(base, origin)
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
        elif md5(path) != checksum:
            raise GradregError(f"{path} is corrupt (MD5 {md5(path)}, expected {checksum}); delete it "
                               "to download it again, or replace it with the original file")
    arrays = {name.split("-idx")[0]: torch.from_numpy(_read_idx(raw / name).copy()) for name in MNIST_FILES}
    return {"x_train": arrays["train-images"], "y_train": arrays["train-labels"].long(),
            "x_test": arrays["t10k-images"], "y_test": arrays["t10k-labels"].long()}


# ---------------------------------------------------------------- CIFAR-10 (python batches)

@lru_cache(maxsize=4)
def cifar10_raw(root: str | None = None) -> dict[str, Tensor]:
    """CIFAR-10 from its "python version" batch files, as uint8 [N, 3, 32, 32] and labels [N]."""
    base, origin = data_dir(root)
    _check_dir(base, origin)
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

    def read(names: list[str]) -> tuple[Tensor, Tensor]:
        xs, ys = [], []
        for name in names:
            try:
                with open(folder / name, "rb") as f:
                    batch = pickle.load(f, encoding="latin1")
                xs.append(np.asarray(batch["data"], np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch["labels"], np.int64))
            except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
                raise GradregError(f"{folder / name} is not a readable CIFAR-10 batch ({err}); "
                                   "replace it with the original file") from None
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    x_train, y_train = read(CIFAR10_FILES[:5])
    x_test, y_test = read(CIFAR10_FILES[5:])
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


# ---------------------------------------------------------------- subsets and standardisation

def _standardise(x_train: Tensor, x_test: Tensor) -> tuple[Tensor, Tensor]:
    """Scale pixels to [0, 1], then standardise each channel with the *training subset's* statistics."""
    x_train, x_test = x_train.float() / 255, x_test.float() / 255
    dims = [0] + list(range(2, x_train.dim()))
    mean, std = x_train.mean(dims, keepdim=True), x_train.std(dims, keepdim=True)
    return (x_train - mean) / std, (x_test - mean) / std


def _subset(raw: dict[str, Tensor], n_train: int | None, seed: int, pool: int, held_out: bool,
            n_test: int | None) -> tuple[Tensor, ...]:
    """First ``n_train`` of a seed-dependent shuffle of the first ``pool`` training images; the test
    set is the official one, or (``held_out``) the training images after ``pool``."""
    perm = torch.randperm(pool, generator=torch.Generator().manual_seed(seed))
    idx = perm[: n_train or pool]
    if held_out:
        x_test, y_test = raw["x_train"][pool:], raw["y_train"][pool:]
    else:
        x_test, y_test = raw["x_test"], raw["y_test"]
    return raw["x_train"][idx], raw["y_train"][idx], x_test[:n_test], y_test[:n_test]


def mnist(n_train: int | None = None, seed: int = 0, protocol: str = "official", n_test: int | None = None,
          data_dir: str | None = None, device: str | torch.device = "cpu") -> Dataset:
    """A standardised MNIST training subset and a test set, on ``device``. Images are [N, 1, 28, 28].

    protocol "official": subset of all 60,000 training images, evaluated on the 10,000 test images.
    protocol "paper": the authors' split — subset of the first 50,000, evaluated on the last 10,000
    *training* images.
    """
    if protocol not in ("official", "paper"):
        raise GradregError(f"unknown MNIST protocol {protocol!r}; known: official, paper")
    raw = mnist_raw(None if data_dir is None else str(data_dir))
    pool = 60000 if protocol == "official" else 50000
    x_tr, y_tr, x_te, y_te = _subset(raw, n_train, seed, pool, protocol == "paper", n_test)
    x_tr, x_te = _standardise(x_tr.unsqueeze(1), x_te.unsqueeze(1))
    return Dataset("mnist", x_tr, y_tr, x_te, y_te, 10).to(device)


def cifar10(n_train: int | None = None, seed: int = 0, n_test: int | None = None,
            data_dir: str | None = None, device: str | torch.device = "cpu") -> Dataset:
    """A standardised CIFAR-10 training subset and the test set, on ``device``; images [N, 3, 32, 32]."""
    raw = cifar10_raw(None if data_dir is None else str(data_dir))
    x_tr, y_tr, x_te, y_te = _subset(raw, n_train, seed, len(raw["y_train"]), False, n_test)
    x_tr, x_te = _standardise(x_tr, x_te)
    return Dataset("cifar10", x_tr, y_tr, x_te, y_te, 10).to(device)


def sin5x(n_train: int = 100, seed: int = 0, noise: float = 0.1, n_test: int = 900,
          device: str | torch.device = "cpu") -> Dataset:
    """The synthetic set of Figure 1 (right): x ~ U(−1, 1), y = sin(5x) + N(0, noise²).

    The test set is a dense grid of ``n_test`` points on [−1, 1] with the noise-free target.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train, 1, generator=gen) * 2 - 1
    y = torch.sin(5 * x) + noise * torch.randn(n_train, 1, generator=gen)
    grid = torch.linspace(-1, 1, n_test).unsqueeze(1)
    return Dataset("sin5x", x, y, grid, torch.sin(5 * grid), None).to(device)


DATASETS = {"mnist": mnist, "cifar10": cifar10, "sin5x": sin5x}


def load(name: str, **options) -> Dataset:
    """Make a data set by registry name with its options; an unknown name raises GradregError."""
    if name not in DATASETS:
        raise GradregError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
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
