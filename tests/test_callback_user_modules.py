"""StiffnessCallback on LightningModules written the way users write them (issue: drop-in on the
user's own module): no validation loader, the network in ``self.model`` with dict batches and no
``forward``, tuple outputs, too large ``per_class``, no TensorBoard logger, gradient
accumulation, and stiffness as a metric for EarlyStopping / ModelCheckpoint."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_stiffness import StiffnessCallback, per_example_gram
from tests.lightning_helpers import TinyClassifier, loaders, tiny_data, trainer


class DictData(Dataset):
    """``{"image": x, "label": y}`` examples, as torchvision-style pipelines and HF datasets give."""

    def __init__(self, n: int = 96, seed: int = 0) -> None:
        self.x, self.y = tiny_data(n, seed).tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.x[i], "label": self.y[i]}


class NoForwardModule(L.LightningModule):
    """The network lives in ``self.model``; ``training_step`` reads the dict; no ``forward``."""

    def __init__(self, head: bool = False) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        if head:  # a second network that also accepts the inputs: which one to measure is ambiguous
            self.other = nn.Sequential(nn.Linear(8, 3))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self.model(batch["image"]), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _callback(**kwargs: Any) -> StiffnessCallback:
    settings: dict[str, Any] = dict(every_n_steps=3, per_class=4, log_images=False, max_overhead=None)
    settings.update(kwargs)
    return StiffnessCallback(**settings)


def test_no_validation_loader_probes_the_training_data(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cb = _callback()
    L.seed_everything(0, verbose=False)
    train, _ = loaders()
    with caplog.at_level(logging.INFO):
        trainer(tmp_path, [cb], max_steps=6).fit(TinyClassifier(), train)
    assert [m.step for m in cb.measurements] == [0, 3, 6] and not cb.failures
    assert cb.measurements[0].split_names == ("train",)
    assert sum("no validation data" in r.getMessage() for r in caplog.records) == 1


def test_explicit_val_split_without_val_data_is_refused(tmp_path: Path) -> None:
    train, _ = loaders()
    with pytest.raises(MisconfigurationException, match=r"no \['val'\] data"):
        trainer(tmp_path, [_callback(splits=("train", "val"))], max_steps=2).fit(TinyClassifier(), train)


def test_dict_batches_and_network_in_self_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No forward, ``{"image", "label"}`` batches: the dry forward finds ``self.model`` called with
    ``batch["image"]``, says so once, and every measurement is the exact Gram of ``self.model``."""
    cb = _callback()
    L.seed_everything(0, verbose=False)
    module = NoForwardModule()
    initial = NoForwardModule()
    initial.load_state_dict(module.state_dict())
    with caplog.at_level(logging.INFO):
        trainer(tmp_path, [cb], max_steps=6).fit(module, DataLoader(DictData(), batch_size=8))
    assert [m.step for m in cb.measurements] == [0, 3, 6] and not cb.failures
    adopted = [r.getMessage() for r in caplog.records if "module_attr='model'" in r.getMessage()]
    assert len(adopted) == 1 and "batch['image']" in adopted[0]
    data = DictData()
    idx = cb.probe_spec.indices["train"]
    x, y = data.x[idx], data.y[idx]
    expected = per_example_gram(initial.model, x, y, method="loop")
    torch.testing.assert_close(cb.measurements[0].gram, expected, rtol=1e-5, atol=1e-6)
    assert "input/sign/zero_crossing" in cb.measurements[0].critical_lengths  # tensor inputs: distances work


def test_ambiguous_module_is_refused_once_with_the_line_to_write(tmp_path: Path) -> None:
    cb = _callback()
    with pytest.raises(MisconfigurationException, match=r"module_attr='model'") as err:
        trainer(tmp_path, [cb], max_steps=6).fit(NoForwardModule(head=True), DataLoader(DictData(), batch_size=8))
    assert "several of its children" in str(err.value) and "'other'" in str(err.value)
    assert cb.measurements == [] and cb.failures == []  # refused at the start, never retried per step


def test_unusable_inputs_are_refused_with_a_batch_adapter_line(tmp_path: Path) -> None:
    class TwoInputs(NoForwardModule):
        def forward(self, a: Tensor, b: Tensor) -> Tensor:
            return self.model(a + b)

    data = [{"a": x, "b": x, "label": y} for x, y in zip(*tiny_data(48, 0).tensors)]
    with pytest.raises(MisconfigurationException, match=r"batch_adapter=lambda b: \(b\['a'\], b\['label'\]\)"):
        trainer(tmp_path, [_callback(module_attr="model")], max_steps=2).fit(TwoInputs(), DataLoader(data, 8))


def test_tuple_output_with_logits_not_first_names_loss_fn(tmp_path: Path) -> None:
    class FeaturesAndLogits(TinyClassifier):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            features = self.net[1](self.net[0](x))
            return features, self.net[3](features)

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            x, y = batch
            return F.cross_entropy(self(x)[1], y)

    train, val = loaders()
    with pytest.raises(MisconfigurationException, match=r"could be logits.*loss_fn="):
        trainer(tmp_path, [_callback()], max_steps=2).fit(FeaturesAndLogits(), train, val)
    # with the loss_fn the message asks for, it measures
    cb = _callback(loss_fn=lambda out, y: F.cross_entropy(out[1], y, reduction="none"))
    trainer(tmp_path, [cb], max_steps=3).fit(FeaturesAndLogits(), train, val)
    assert len(cb.measurements) == 2 and not cb.failures


def test_per_class_larger_than_the_data_warns_with_counts(tmp_path: Path) -> None:
    cb = _callback(per_class=40)  # 96 train examples: 32 per class
    train, _ = loaders()
    with pytest.warns(UserWarning, match=r"per_class=40.*'train'.*\{0: 32, 1: 32, 2: 32\}.*96 examples instead of 120"):
        trainer(tmp_path, [cb], max_steps=1).fit(TinyClassifier(), train)
    assert cb.measurements[0].num_examples == 96


@pytest.mark.parametrize("logger", ["none", "csv"])
def test_default_images_without_tensorboard_logger(
    tmp_path: Path, logger: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Images are on by default; with no logger that takes them the run still measures, logs its
    scalars where it can, and says once that images are skipped."""
    cb = StiffnessCallback(every_n_steps=3, per_class=4, max_overhead=None)  # the exact schedule
    lg: Any = False if logger == "none" else CSVLogger(str(tmp_path))
    train, val = loaders()
    with caplog.at_level(logging.INFO):
        fit = trainer(tmp_path, [cb], max_steps=6, logger=lg)
        fit.fit(TinyClassifier(), train, val)
    assert [m.step for m in cb.measurements] == [0, 3, 6] and not cb.failures
    assert sum("heatmaps and figures are skipped" in r.getMessage() for r in caplog.records) == 1
    if logger == "csv":
        header = (Path(fit.logger.log_dir) / "metrics.csv").read_text().splitlines()[0]
        assert "stiffness/sign/within" in header


class RecordingClassifier(TinyClassifier):
    def __init__(self) -> None:
        super().__init__(dropout=0.0)
        self.losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self.losses.append(float(loss.detach()))
        return loss


def test_gradient_accumulation_uses_the_true_training_loss(tmp_path: Path) -> None:
    """Lightning hands callbacks ``loss / accumulate_grad_batches``; thresholds and the smoothed
    loss must see the loss ``training_step`` returned (k=4 used to fire every threshold at step 1)."""
    cb = _callback(every_n_steps=1, loss_smoothing=0.0, at_start=False, loss_thresholds=(0.01,))
    module = RecordingClassifier()
    train, val = loaders(batch_size=8)
    trainer(tmp_path, [cb], max_steps=3, accumulate_grad_batches=4).fit(module, train, val)
    assert [m.step for m in cb.measurements] == [1, 2, 3]
    for m in cb.measurements:  # with smoothing 0: the loss of the step's last micro-batch
        assert m.train_loss == pytest.approx(module.losses[4 * m.step - 1], rel=1e-6)
    assert all(m.train_loss > 0.5 for m in cb.measurements)
    assert cb.schedule.crossed == []  # the true loss never reached 0.01


def test_stiffness_is_a_metric_for_early_stopping_and_checkpointing(tmp_path: Path) -> None:
    key = "stiffness/sign/all"
    cb = _callback(every_n_steps=2, at_epoch_end=True)
    stop = EarlyStopping(monitor=key, mode="max", patience=0, min_delta=10.0, check_on_train_epoch_end=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor=key, mode="max", save_top_k=1)
    train, val = loaders()
    fit = trainer(tmp_path, [cb, stop, ckpt], max_epochs=20, enable_checkpointing=True)
    fit.fit(TinyClassifier(), train, val)
    # min_delta=10 cannot be met: patience 0 stops after the second epoch's check
    assert fit.current_epoch < 20 and stop.stopped_epoch > 0
    assert float(fit.callback_metrics[key]) == pytest.approx(cb.measurements[-1].summaries["sign"]["all"].all)
    assert ckpt.best_model_path and math.isfinite(float(ckpt.best_model_score))
    best = max(m.summaries["sign"]["all"].all for m in cb.measurements if m.trigger.endswith("epoch_end"))
    assert float(ckpt.best_model_score) <= best + 1e-6


class Regressor(L.LightningModule):
    """Float targets of shape (N,) or (N, k), trained with MSE."""

    def __init__(self, outputs: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, outputs))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.mse_loss(self(x).reshape(y.shape), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x).reshape(y.shape), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _regression_data(n: int, k: int | None, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x[:, :1].repeat(1, k or 1) * 0.7 + 0.1 * torch.randn(n, k or 1, generator=g)
    return torch.utils.data.TensorDataset(x, y if k else y[:, 0])


# the loss_fn of docs/quickstart.md ("Targets that are not class labels"), verbatim
DOCS_MSE = lambda out, y: F.mse_loss(out.reshape(y.shape), y, reduction="none").reshape(len(y), -1).mean(1)  # noqa: E731
DOCS_BCE = lambda out, y: F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(1)  # noqa: E731


@pytest.mark.parametrize("k", [None, 2])
def test_regression_targets_measure_without_class_statistics(
    tmp_path: Path, k: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    """MSE regression, targets (N,) and (N, k): a seeded random probe (never float targets
    truncated to classes), the exact Gram, overall stiffness, ξ over all pairs, no class stats."""
    cb = _callback(loss_fn=DOCS_MSE, per_class=3)
    L.seed_everything(0, verbose=False)
    module = Regressor(outputs=k or 1)
    initial = Regressor(outputs=k or 1)
    initial.load_state_dict(module.state_dict())
    train, val = _regression_data(96, k, 0), _regression_data(48, k, 1)
    with caplog.at_level(logging.INFO):
        trainer(tmp_path, [cb], max_steps=6).fit(module, DataLoader(train, 8), DataLoader(val, 16))
    assert [m.step for m in cb.measurements] == [0, 3, 6] and not cb.failures
    assert sum("not class labels" in r.getMessage() for r in caplog.records) == 1
    assert {name: len(idx) for name, idx in cb.probe_spec.indices.items()} == {"train": 30, "val": 30}
    m = cb.measurements[0]
    assert m.class_statistics is False and m.class_sign.numel() == 0
    summary = m.summaries["sign"]["all"]
    assert math.isnan(summary.within) and math.isnan(summary.between) and math.isfinite(summary.all)
    assert "stiffness/sign/all" in _logged(cb, m) and "stiffness/sign/within" not in _logged(cb, m)
    x = torch.cat([train.tensors[0][cb.probe_spec.indices["train"]], val.tensors[0][cb.probe_spec.indices["val"]]])
    y = torch.cat([train.tensors[1][cb.probe_spec.indices["train"]], val.tensors[1][cb.probe_spec.indices["val"]]])
    expected = per_example_gram(initial.double(), x.double(), y.double(), loss_fn=DOCS_MSE, method="loop")
    torch.testing.assert_close(m.gram.double(), expected, rtol=1e-5, atol=1e-7)
    off = ~torch.eye(60, dtype=torch.bool)
    assert summary.all == pytest.approx(float(torch.sign(expected)[off].mean()), abs=1e-6)
    assert {key.split("/")[-1] for key in m.curves} == {"all"}
    assert "input/sign/zero_crossing" in m.critical_lengths


def _logged(cb: StiffnessCallback, m: Any) -> dict[str, float]:
    return cb._logged_scalars(m)


class DomainData(Dataset):
    """Multi-label targets (N, 4) with a ``domain`` key to group by."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x[:, :4] > 0).float()
        self.domain = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "labels": self.y[i], "domain": self.domain[i]}


class MultiLabel(Regressor):
    def __init__(self) -> None:
        super().__init__(outputs=4)

    def forward(self, x: Tensor, domain: Tensor | None = None) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.binary_cross_entropy_with_logits(self(batch["x"]), batch["labels"])


def test_multilabel_targets_grouped_by_a_key(tmp_path: Path) -> None:
    """BCE multi-label targets with ``groups="domain"``: the probe is stratified by domain and
    the domains play the role of classes in the class statistics."""
    cb = _callback(loss_fn=DOCS_BCE, groups="domain", splits=("train",))
    trainer(tmp_path, [cb], max_steps=3).fit(MultiLabel(), DataLoader(DomainData(96, 0), 8))
    assert len(cb.measurements) == 2 and not cb.failures
    m = cb.measurements[0]
    assert m.class_statistics and m.class_sign.shape == (3, 3)
    assert m.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert math.isfinite(m.summaries["sign"]["all"].within)


def test_float_targets_without_loss_fn_are_refused_with_the_fix(tmp_path: Path) -> None:
    train = _regression_data(48, None, 0)
    with pytest.raises(MisconfigurationException, match=r"loss on its outputs fails.*loss_fn="):
        trainer(tmp_path, [_callback(per_class=2)], max_steps=2).fit(Regressor(), DataLoader(train, 8))
