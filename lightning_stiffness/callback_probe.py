"""The probe side of :class:`~lightning_stiffness.StiffnessCallback`: drawing the fixed probe from
the trainer's data, finding how to call the user's module on it (a dry forward, see
:mod:`~lightning_stiffness.structure`), class names and super-classes, and the probe on a device."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from lightning_stiffness.analytics import (
    AnalysisConfig,
    input_distances,
)
from lightning_stiffness.budget import OverheadBudget
from lightning_stiffness.gram.inputs import ExampleBatch
from lightning_stiffness.gram.sharding import is_sharded
from lightning_stiffness.measurement import (
    Measurement,
)
from lightning_stiffness.probe import (
    BatchAdapter,
    ProbeData,
    ProbeSpec,
    choose_probe,
    collate_probe,
    split_batch,
)
from lightning_stiffness.schedule import MeasurementSchedule
from lightning_stiffness.settings import (
    SPLITS,
    Settings,
)
from lightning_stiffness.strategies import call_target
from lightning_stiffness.structure import CallPlan, ProbeStructureError, find_call_plan

__all__: list[str] = []


class CallbackState(Callback):
    """The state the callback's parts share (set in ``StiffnessCallback.__init__``)."""

    settings: Settings
    schedule: MeasurementSchedule
    analysis: AnalysisConfig
    module_attr: str | None
    verification: dict[str, Any] | None
    measurements: list[Measurement]
    failures: list[dict[str, Any]]
    saved_files: list[str]
    probe_spec: ProbeSpec | None
    _probe: ProbeData | None
    _device_probe: tuple[torch.device, Any, Tensor] | None
    _input_distances: Tensor | None
    _budget: OverheadBudget
    _save_path: Path | str | None
    _images_on: bool
    _class_names: list[str] | None
    _first_publish_of_fit: bool
    _measured_steps: set[int]

    def _train_seconds(self) -> float:
        raise NotImplementedError

    def _directory(self, trainer: Trainer) -> Path | str:
        raise NotImplementedError


class ProbePreparation(CallbackState):
    """Prepares the probe once per fit (every participating rank)."""

    def _measured_module(self, pl_module: LightningModule) -> nn.Module:
        return pl_module.get_submodule(self.module_attr) if self.module_attr else pl_module

    @property
    def _adapter(self) -> BatchAdapter:
        return self.settings.probe.batch_adapter or split_batch

    def _prepare_probe(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._probe is not None:
            return
        cfg = self.settings.probe
        wanted = cfg.splits or (tuple(cfg.probe_datasets) if cfg.probe_datasets else SPLITS)
        datasets = cfg.probe_datasets or _trainer_datasets(trainer, wanted)
        datasets = {name: datasets[name] for name in wanted if name in datasets}
        if cfg.splits is None and datasets and "val" not in datasets and not cfg.probe_datasets:
            rank_zero_info(
                "StiffnessCallback: the trainer has no validation data, so the probe is drawn from the training "
                "data only (train-train pairs); pass splits=('train', 'val') with a val dataloader for train-val pairs."
            )
        missing = [s for s in (cfg.splits or ("train",)) if s not in datasets]
        if missing:
            raise MisconfigurationException(
                f"StiffnessCallback: no {missing} data to draw the probe from. Give the Trainer those dataloaders, "
                "pass probe_datasets={'train': ..., 'val': ...}, or choose splits=(...) accordingly."
            )
        self._resolve_superclasses(trainer)
        if self.probe_spec is None:
            self.probe_spec = choose_probe(
                datasets,
                self.settings.probe.per_class,
                self.settings.probe.seed,
                (self.settings.probe.batch_adapter or split_batch),
                self.settings.probe.groups,
            )
        collate_fn = _train_collate_fn(trainer)
        probe = collate_probe(
            datasets,
            self.probe_spec,
            collate_fn,
            (self.settings.probe.batch_adapter or split_batch),
            self.settings.probe.groups,
        )
        # tick labels of the images; with groups=... the labels are the user's groups, not classes
        grouped = self.settings.probe.groups is not None
        names = None if grouped else _class_names(trainer, datasets)
        self._class_names = _names_for_labels(names, probe.labels, self.analysis.num_classes)
        if probe.labels is None:
            rank_zero_info(
                f"StiffnessCallback: the targets are not class labels (shape {tuple(probe.targets.shape)}, "
                f"{probe.targets.dtype}), so the probe is a seeded random draw and class statistics are skipped; "
                "overall stiffness, stiffness against distance, ξ (all pairs), m-coherence and layer-wise "
                "stiffness are measured. Pass groups=... to stratify and group by a key of your own."
            )
        plan = self._call_plan(trainer, pl_module, probe)
        self._probe = dataclasses.replace(probe, inputs=plan.transform(probe.inputs))
        tensor_inputs = isinstance(self._probe.inputs, Tensor) and self._probe.inputs.is_floating_point()
        if self.settings.measure.input_distance and tensor_inputs and trainer.is_global_zero:  # only rank 0 analyses
            self._input_distances = input_distances(self._probe.inputs)

    def _call_plan(self, trainer: Trainer, pl_module: LightningModule, probe: ProbeData) -> CallPlan:
        """Run the measured module once on two probe examples and adopt the one unambiguous way
        to call it (see :mod:`~lightning_stiffness.structure`); refuse at the start of training,
        with the line to write, when there is none — never fail at every step."""
        module = self._measured_module(pl_module)
        with call_target(trainer, pl_module, module, self.module_attr) as target:
            through_wrapper = target.model is not module
            sharded = is_sharded(target.model, target.model.parameters())
            device = next(target.model.parameters()).device
            try:
                plan = find_call_plan(
                    target.model if through_wrapper else pl_module,
                    None if through_wrapper else self.module_attr,
                    probe.inputs,
                    probe.targets,
                    self.settings.gram.loss_fn,
                    to_device=lambda t: t.to(device),
                    search_children=not (through_wrapper or sharded),
                )
            except ProbeStructureError as err:
                raise MisconfigurationException(f"StiffnessCallback: {err}") from err
        if plan.adapted:
            rank_zero_info(f"StiffnessCallback: {plan.adapted}.")
        if plan.module_attr is not None and plan.module_attr != self.module_attr:
            self.module_attr = plan.module_attr
        return plan

    def _resolve_superclasses(self, trainer: Trainer) -> None:
        mapping = self.settings.measure.superclasses
        if mapping == "datamodule":
            mapping = getattr(getattr(trainer, "datamodule", None), "superclasses", None)
            if mapping is None:
                raise MisconfigurationException(
                    "StiffnessCallback(superclasses='datamodule') needs trainer.datamodule.superclasses (a list "
                    "mapping each fine class to its super-class); the datamodule has none."
                )
        if mapping is not None:
            self.analysis = dataclasses.replace(self.analysis, superclasses=tuple(int(c) for c in mapping))

    def _probe_on(self, device: torch.device) -> tuple[Any, Tensor]:
        assert self._probe is not None
        if self._device_probe is None or self._device_probe[0] != device:
            batch = ExampleBatch.create(self._probe.inputs, self._probe.targets).map_tensors(lambda t: t.to(device))
            self._device_probe = (device, batch.inputs, batch.targets)
        return self._device_probe[1], self._device_probe[2]


def _train_collate_fn(trainer: Trainer) -> Any:
    loader = trainer.train_dataloader
    return getattr(loader, "collate_fn", None)


def _trainer_datasets(trainer: Trainer, splits: Sequence[str]) -> dict[str, Dataset]:
    out: dict[str, Dataset] = {}
    if "train" in splits:
        dataset = getattr(trainer.train_dataloader, "dataset", None)
        if dataset is not None:
            out["train"] = dataset
    if "val" in splits:
        loaders = trainer.val_dataloaders
        if loaders is None:
            # not set up yet (no sanity check): let the validation loop load them now; a failure
            # leaves them missing, which the caller reports
            with contextlib.suppress(Exception):
                trainer.fit_loop.epoch_loop.val_loop.setup_data()
            loaders = trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        dataset = getattr(loaders, "dataset", None)
        if dataset is not None:
            out["val"] = dataset
    return out


def _class_names(trainer: Trainer, datasets: Mapping[str, Any]) -> list[str] | None:
    """The class names for image ticks: ``trainer.datamodule.classes``, else the ``classes`` of
    the probe's training (or first) dataset, through ``Subset.dataset`` wrappers; ``None`` when
    there are none or they are not all strings. Never raises (names only label images)."""
    try:
        names = getattr(getattr(trainer, "datamodule", None), "classes", None)
        if names is None and datasets:
            dataset = datasets.get("train", next(iter(datasets.values())))
            for _ in range(8):  # Subset of Subset of ...
                if getattr(dataset, "classes", None) is not None or not isinstance(dataset, Subset):
                    break
                dataset = dataset.dataset
            names = getattr(dataset, "classes", None)
        if names is None or isinstance(names, (str, bytes)):
            return None
        names = list(names)
        return names if names and all(isinstance(n, str) for n in names) else None
    except Exception:
        return None


def _names_for_labels(names: list[str] | None, labels: Tensor | None, num_classes: int | None) -> list[str] | None:
    """``names`` when they name every class of the probe's labels (``num_classes``, else the
    largest label + 1), else ``None``: the images then show class indices."""
    if names is None or labels is None or labels.numel() == 0:
        return None
    try:
        needed = num_classes or int(labels.max()) + 1
    except Exception:
        return None
    return names if len(names) >= needed else None
