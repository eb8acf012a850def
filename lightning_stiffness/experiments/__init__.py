"""The paper's experiments as reusable parts (Fort et al. 2019, v1/v3; docs/reproducing.md): architectures
(:mod:`.models`), LightningModules (:mod:`.lit`), datamodules with the paper's preprocessing
(:mod:`.datamodules`) and the LightningCLI entry point (:mod:`.cli`) behind ``examples/train.py``
and the YAML configs in ``examples/configs``.

Needs the ``examples`` extra (torchvision, transformers, jsonargparse): ``pip install 'lightning-stiffness[examples]'``.
"""

from lightning_stiffness.experiments.datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    MNISTDataModule,
    MNLIDataModule,
    StandardizeUnitNorm,
)
from lightning_stiffness.experiments.lit import SequenceClassifier, StiffnessClassifier
from lightning_stiffness.experiments.models import (
    ARCHITECTURES,
    CNN_V1_CHANNELS,
    CNN_V3_CHANNELS,
    FC_V1_HIDDEN,
    FC_V3_HIDDEN,
    PaperCNN,
    ResNet20,
    build_model,
    fully_connected,
    representation_layers,
)

__all__ = [
    "ARCHITECTURES",
    "CNN_V1_CHANNELS",
    "CNN_V3_CHANNELS",
    "FC_V1_HIDDEN",
    "FC_V3_HIDDEN",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "MNISTDataModule",
    "MNLIDataModule",
    "PaperCNN",
    "ResNet20",
    "SequenceClassifier",
    "StandardizeUnitNorm",
    "StiffnessClassifier",
    "build_model",
    "fully_connected",
    "representation_layers",
]
