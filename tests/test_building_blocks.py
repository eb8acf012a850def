"""Probe selection, schedule, rendering and LightningCLI configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from lightning_stiffness import PermutedLabels, StiffnessCallback
from lightning_stiffness.probe import ProbeSpec, choose_probe, collate_probe, dataset_labels, split_batch
from lightning_stiffness.schedule import MeasurementSchedule, log_spaced_steps
from lightning_stiffness.viz import BLUE, NAN_GREY, RED, WHITE, colorize, heatmap, sort_by_label, with_colorbar

# ---------------------------------------------------------------- probe


def _labelled(n: int = 40, classes: int = 4) -> TensorDataset:
    return TensorDataset(torch.randn(n, 3), torch.arange(n) % classes)


def test_stratified_probe_is_seeded_and_balanced() -> None:
    data = {"train": _labelled(), "val": _labelled(20)}
    a = choose_probe(data, per_class=3, seed=7)
    b = choose_probe(data, per_class=3, seed=7)
    c = choose_probe(data, per_class=3, seed=8)
    assert a == b and a != c
    labels = dataset_labels(data["train"])
    assert [labels[i] for i in a.indices["train"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len(set(a.indices["train"])) == 12
    assert ProbeSpec.from_dict(a.to_dict()) == a


def test_probe_never_touches_the_global_rng() -> None:
    data = {"train": _labelled()}
    state = torch.get_rng_state()
    choose_probe(data, per_class=2, seed=0)
    assert torch.equal(state, torch.get_rng_state())


def test_small_classes_give_what_they_have_and_subsets_map_labels() -> None:
    data = Subset(_labelled(40), list(range(0, 40, 2)))  # classes 0 and 2 only
    assert set(dataset_labels(data)) == {0, 2}
    spec = choose_probe({"train": data}, per_class=50, seed=0)
    assert len(spec.indices["train"]) == 20


@pytest.mark.parametrize(
    "targets",
    [
        torch.arange(12) % 3,  # class labels
        (torch.arange(12) % 3).reshape(12, 1),  # one label per example, shape (1,)
        torch.arange(12) % 2 == 0,  # booleans
        torch.rand(12),  # regression: not class labels
        torch.randint(0, 2, (12, 3)),  # multi-label: not class labels
    ],
)
def test_tensor_dataset_labels_match_reading_every_example(targets: torch.Tensor) -> None:
    """The TensorDataset shortcut gives what reading each example through the adapter gives."""

    class ByIndex(torch.utils.data.Dataset):  # the same examples, read one by one
        def __init__(self, inner: TensorDataset) -> None:
            self.inner = inner

        def __len__(self) -> int:
            return len(self.inner)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
            return self.inner[i]

    data = TensorDataset(torch.randn(12, 2), targets)
    assert dataset_labels(data) == dataset_labels(ByIndex(data))
    assert (dataset_labels(data) is None) == (targets.is_floating_point() or targets.reshape(12, -1).shape[1] > 1)


def test_collate_dict_batches_hf_style() -> None:
    class Pairs(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 6

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": torch.full((4,), i), "attention_mask": torch.ones(4), "labels": i % 2}

    spec = choose_probe({"train": Pairs()}, per_class=2, seed=0)
    probe = collate_probe({"train": Pairs()}, spec)
    assert set(probe.inputs) == {"input_ids", "attention_mask"}
    assert probe.targets.tolist() == [0, 0, 1, 1] and probe.splits.tolist() == [0, 0, 0, 0]


def test_split_batch_errors_clearly() -> None:
    with pytest.raises(TypeError, match="batch_adapter"):
        split_batch(torch.zeros(3))


def test_permuted_labels_control() -> None:
    base = _labelled(30, 3)
    permuted = PermutedLabels(base, seed=1)
    assert sorted(permuted.targets) == sorted(dataset_labels(base)) and permuted.targets != dataset_labels(base)
    assert permuted[4][1] == permuted.targets[4] and torch.equal(permuted[4][0], base[4][0])
    assert PermutedLabels(base, seed=1).targets == permuted.targets


# ---------------------------------------------------------------- schedule


def test_log_spaced_steps() -> None:
    assert sorted(log_spaced_steps(3, 100)) == [1, 2, 5, 10, 22, 46, 100]
    with pytest.raises(ValueError):
        log_spaced_steps(0)


def test_schedule_triggers_and_loss_thresholds() -> None:
    s = MeasurementSchedule(every_n_steps=10, log_points_per_decade=1, loss_thresholds=(0.5, 1.0), loss_smoothing=0.5)
    assert [s.step_trigger(k) for k in (0, 1, 5, 10, 20, 100)] == [
        "start",
        "log_spaced",
        None,
        "every_n_steps",
        "every_n_steps",
        "every_n_steps",
    ]
    assert s.update_loss(2.0) == [] and s.smoothed_loss == 2.0
    assert s.update_loss(0.0) == [1.0]  # EMA 1.0
    assert s.update_loss(0.0) == [0.5]  # EMA 0.5
    assert s.update_loss(0.0) == [] and s.update_loss(float("nan")) == []
    restored = MeasurementSchedule(loss_thresholds=(0.5, 1.0))
    restored.load_state_dict(s.state_dict())
    assert restored.crossed == [1.0, 0.5] and restored.update_loss(0.0) == []


# ---------------------------------------------------------------- render


def _rgb(color: tuple[float, float, float]) -> list[int]:
    return [round(c * 255) for c in color]


def test_colorize_fixed_diverging_map() -> None:
    img = colorize(torch.tensor([[-1.0, 0.0, 1.0, float("nan"), 5.0]]))
    assert img.dtype == torch.uint8 and img.shape == (3, 1, 5)
    assert img[:, 0, 0].tolist() == _rgb(BLUE)
    assert img[:, 0, 1].tolist() == _rgb(WHITE)
    assert img[:, 0, 2].tolist() == _rgb(RED)
    assert img[:, 0, 3].tolist() == _rgb(NAN_GREY)
    assert img[:, 0, 4].tolist() == _rgb(RED), "values beyond vmax are clipped"


def test_heatmap_cells_boundaries_and_colorbar() -> None:
    m = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    img = heatmap(m, boundaries=[1], cell_pixels=10)
    assert img.shape == (3, 20, 20)
    assert img[:, 5, 5].tolist() == _rgb(RED) and img[:, 5, 15].tolist() == _rgb(BLUE)
    assert img[:, 10, 3].tolist() == [0, 0, 0] and img[:, 3, 10].tolist() == [0, 0, 0]
    assert with_colorbar(img).shape[1] == 20 and with_colorbar(img).shape[2] > 20


def test_sort_by_label() -> None:
    labels = torch.tensor([2, 0, 2, 1])
    m = torch.arange(16.0).reshape(4, 4)
    sorted_m, bounds = sort_by_label(m, labels)
    assert bounds == [1, 2]
    assert sorted_m[0, 0] == m[1, 1] and sorted_m[1, 1] == m[3, 3] and sorted_m[2, 3] == m[0, 2]


# ---------------------------------------------------------------- LightningCLI


def test_lightning_cli_yaml_configures_the_callback(tmp_path: Path) -> None:
    from lightning.pytorch.cli import LightningCLI

    from tests.lightning_helpers import TinyClassifier, loaders

    class Data(__import__("lightning").LightningDataModule):
        def train_dataloader(self):  # type: ignore[no-untyped-def]
            return loaders()[0]

        def val_dataloader(self):  # type: ignore[no-untyped-def]
            return loaders()[1]

    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
trainer:
  max_epochs: 1
  accelerator: cpu
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  default_root_dir: {tmp_path}
  callbacks:
    - class_path: lightning_stiffness.StiffnessCallback
      init_args:
        every_n_steps: 3
        schedule:
          loss_thresholds: [10.0]
        probe:
          per_class: 4
          splits: [train]
        analysis:
          permutations: 7
        output:
          log_images: false
"""
    )
    cli = LightningCLI(TinyClassifier, Data, args=["fit", "--config", str(config)], save_config_callback=None)
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, StiffnessCallback))
    assert cb.schedule.every_n_steps == 3 and cb.settings.probe.splits == ("train",)
    assert cb.schedule.loss_thresholds == (10.0,) and cb.settings.analysis.permutations == 7
    assert cb.settings.probe.per_class == 4 and cb.settings.output.log_images is False
    assert [m.step for m in cb.measurements][:2] == [0, 1] and cb.measurements[1].trigger == "loss<=10"
