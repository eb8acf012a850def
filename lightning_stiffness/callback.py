"""``StiffnessCallback``: measure stiffness on a fixed probe while a Lightning model trains.

The callback only orchestrates: probe (:mod:`~lightning_stiffness.probe`) → Gram
(:func:`~lightning_stiffness.per_example_gram_blocks`) → analytics
(:func:`~lightning_stiffness.analytics.analyze`) → save and log (:mod:`~lightning_stiffness.log`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from lightning_stiffness.analytics import (
    AnalysisConfig,
    analyze,
    analyze_without_classes,
    cosine_distance_matrix,
    input_distances,
)
from lightning_stiffness.budget import OverheadBudget
from lightning_stiffness.gram import GramResult, per_example_gram, select_parameters
from lightning_stiffness.gram.distributed import distributed_gram, is_distributed
from lightning_stiffness.gram.inputs import ExampleBatch
from lightning_stiffness.gram.representations import capture_representations
from lightning_stiffness.gram.sharding import is_sharded
from lightning_stiffness.log import (
    custom_scalars_layout,
    image_loggers,
    log_images,
    log_scalars,
    scalar_metrics,
    tensorboard_writers,
)
from lightning_stiffness.measurement import (
    Measurement,
    MeasurementFormatError,
    load_measurement,
    save_measurement,
    write_text_atomic,
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
    GramSettings,
    MeasureSettings,
    OutputSettings,
    ProbeSettings,
    ScheduleSettings,
    Settings,
    resolve_settings,
    settings_record,
)
from lightning_stiffness.strategies import CallTarget, call_target, strategy_problem
from lightning_stiffness.structure import CallPlan, ProbeStructureError, find_call_plan

__all__ = ["StiffnessCallback"]

#: Relative error above which the first-measurement cross-check warns (float32 Grams agree to ~1e-6).
VERIFY_TOLERANCE = 1e-3


class StiffnessCallback(Callback):
    r"""Measure stiffness (Fort et al. 2019) on a fixed probe during training.

    At each scheduled optimizer step it computes the exact Gram ``G[i, j] = g_i · g_j`` of
    per-example loss gradients ``g_i = ∇_W ℓ(f_W(x_i), y_i)`` over the probe, and from it sign
    stiffness ``E[sign(g_1·g_2)]`` and cosine stiffness ``E[cos(g_1, g_2)]``, class stiffness
    matrices (self-pairs excluded), within/between-class summaries (v1 Eq. 6, 7),
    m-coherence, stiffness against input-space distance and the critical length ξ by both
    estimators. Results go to every logger as ``stiffness/...`` scalars, to TensorBoard as
    images, and to ``<log_dir>/stiffness/measurement-*.pt`` (read with
    :func:`~lightning_stiffness.load_measurements`).

    Training is unaffected: the probe runs in eval mode without touching ``.grad``, the
    optimizer or any RNG stream, and a failed measurement only warns. Works on one device and
    under DDP, FSDP (``FSDPStrategy``, use_orig_params=True) and ``ModelParallelStrategy``
    (FSDP2): every rank computes a share of the Gram; global rank 0 analyses, saves and logs.

    Settings come in six groups, each a frozen, validated dataclass that defines its fields once
    (:mod:`~lightning_stiffness.settings`): ``schedule=`` :class:`ScheduleSettings` (when),
    ``probe=`` :class:`ProbeSettings` (which examples), ``gram=`` :class:`GramSettings` (how the
    Gram is computed), ``measure=`` :class:`MeasureSettings` (distances, layers, super-classes),
    ``analysis=`` :class:`AnalysisConfig` (how the Gram becomes statistics) and ``output=``
    :class:`OutputSettings` (images, save directory). For the common case any of their fields
    may be given as a flat keyword instead: ``StiffnessCallback(every_n_steps=50, per_class=10,
    loss_fn=...)``. A name given both ways, or an unknown name, is an error.

    The Lightning properties the callback reads on one rank only are all rank-local; the one
    collective (``Trainer.log_dir``) is read on every rank at train start.

    Args:
        every_n_steps: measure every n optimizer steps (None: only the other triggers); the one
            setting worth a positional place. See :class:`ScheduleSettings`.
        schedule, probe, gram, measure, analysis, output: the settings groups (default: each
            group's defaults, with the flat keywords applied).
        **settings: any field of the groups by name.

    Example:
        >>> import torch, lightning as L
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_stiffness import StiffnessCallback
        >>> class Classifier(L.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        ...     def forward(self, x):
        ...         return self.net(x)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         return nn.functional.cross_entropy(self(x), y)
        ...     def configure_optimizers(self):
        ...         return torch.optim.Adam(self.parameters(), lr=1e-2)
        >>> data = TensorDataset(torch.randn(90, 8), torch.arange(90) % 3)
        >>> # max_overhead=None: measure exactly on schedule (default: the callback takes at most 5%
        >>> # of the training time and defers scheduled measurements that would exceed it, saying so)
        >>> cb = StiffnessCallback(every_n_steps=5, splits=("train",), per_class=4, log_images=False, max_overhead=None)
        >>> trainer = L.Trainer(max_steps=10, callbacks=[cb], logger=False, enable_checkpointing=False,
        ...                     enable_progress_bar=False, enable_model_summary=False,
        ...                     default_root_dir=getfixture("tmp_path"))
        >>> trainer.fit(Classifier(), DataLoader(data, batch_size=16))
        >>> [(m.step, m.trigger) for m in cb.measurements]
        [(0, 'start'), (5, 'every_n_steps'), (10, 'every_n_steps')]
        >>> cb.measurements[-1].class_sign.shape
        torch.Size([3, 3])
    """

    def __init__(
        self,
        every_n_steps: int | None = 50,
        *,
        schedule: ScheduleSettings | None = None,
        probe: ProbeSettings | None = None,
        gram: GramSettings | None = None,
        measure: MeasureSettings | None = None,
        analysis: AnalysisConfig | None = None,
        output: OutputSettings | None = None,
        **settings: Any,
    ) -> None:
        if schedule is None:
            settings["every_n_steps"] = every_n_steps
        elif every_n_steps != ScheduleSettings.every_n_steps:  # the top-level value beside a schedule group
            if schedule.every_n_steps not in (ScheduleSettings.every_n_steps, every_n_steps):
                raise TypeError(
                    f"every_n_steps given twice: {every_n_steps} and schedule.every_n_steps={schedule.every_n_steps}"
                )
            schedule = dataclasses.replace(schedule, every_n_steps=every_n_steps)
        groups = dict(schedule=schedule, probe=probe, gram=gram, measure=measure, analysis=analysis, output=output)
        self.settings: Settings = resolve_settings(groups, settings)
        self.schedule = MeasurementSchedule.from_settings(self.settings.schedule)
        self.analysis: AnalysisConfig = self.settings.analysis
        self.module_attr: str | None = self.settings.gram.module_attr  # may be adopted at train start
        self.verification: dict[str, Any] | None = None

        self.measurements: list[Measurement] = []
        self.failures: list[dict[str, Any]] = []
        self.saved_files: list[str] = []
        self.probe_spec: ProbeSpec | None = None
        self._probe: ProbeData | None = None
        self._device_probe: tuple[torch.device, Any, Tensor] | None = None
        self._input_distances: Tensor | None = None
        self._last_step: int | None = None
        self._measured_steps: set[int] = set()
        self._pending: list[str] = []
        # every second the callback spends, and the max_overhead time budget built on them
        self._budget = OverheadBudget(self.settings.schedule.max_overhead)
        self._epoch_end_step: int | None = None  # step whose batch-end hook already handled "epoch_end"
        self._train_seconds_before = 0.0  # training wall-clock of earlier (resumed-from) fits
        self._train_start: float | None = None
        self._save_path: Path | None = None
        self._images_on = self.settings.output.log_images
        self._class_names: list[str] | None = None  # tick labels of the images, found at train start
        self._first_publish_of_fit = True  # the next measurement published is this fit's first

    # ------------------------------------------------------------------ Lightning hooks

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            splits=self.settings.probe.splits or SPLITS,
            per_class=self.settings.probe.per_class,
            seed=self.settings.probe.seed,
        )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        problem = strategy_problem(trainer.strategy)
        if problem:
            raise MisconfigurationException(f"StiffnessCallback: {problem}")
        self._images_on = self.settings.output.log_images and bool(image_loggers(trainer.loggers))
        if self.settings.output.log_images and not self._images_on:
            rank_zero_info(
                "StiffnessCallback: no logger of this Trainer takes images "
                f"({[type(lg).__name__ for lg in trainer.loggers] or 'no logger'}), so heatmaps and figures are "
                "skipped; scalars still go to every logger and measurements are saved. Add a TensorBoardLogger, "
                "WandbLogger or MLFlowLogger for images, or pass log_images=False to silence this."
            )
        try:  # fail at setup, not at every measurement, on a wrong module_attr or params name
            select_parameters(self._measured_module(pl_module), self.settings.gram.params)
        except (AttributeError, ValueError, TypeError) as err:
            raise MisconfigurationException(f"StiffnessCallback: {err}") from err

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train_start = time.perf_counter()
        self._first_publish_of_fit = True
        self._last_step = trainer.global_step
        # ``Trainer.log_dir`` is a broadcast under DDP/FSDP: read it here, where every rank runs,
        # never later on rank 0 alone (that deadlocked the default-logger DDP run)
        self._save_path = self._resolve_directory(trainer)
        if not self._participates(trainer):
            return
        with self._budget.timed(measurement=False):
            self._prepare_probe(trainer, pl_module)
            if trainer.is_global_zero:
                self._save_run_info(trainer, pl_module)
            for writer in tensorboard_writers(trainer.loggers):
                writer.add_custom_scalars(custom_scalars_layout())
        trigger = self.schedule.step_trigger(trainer.global_step) if trainer.global_step == 0 else None
        if trigger and 0 not in self._measured_steps:
            self._measure(trainer, pl_module, trigger)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        with self._budget.timed(measurement=False):  # the hook's own work counts in the share
            trigger = self._due_trigger(trainer, pl_module, outputs)
            label = self._decide(trainer, trainer.global_step, trigger) if self._participates(trainer) else None
        if label:
            self._measure(trainer, pl_module, label)

    def _due_trigger(self, trainer: Trainer, pl_module: LightningModule, outputs: Any) -> str | None:
        """What the schedule asks for after this batch (``"every_n_steps+loss<=0.1"``; None:
        nothing, or no optimizer step yet). Identical on every rank under DDP/FSDP."""
        loss = _loss_value(outputs)
        if loss is not None and pl_module.automatic_optimization:
            # Lightning hands callbacks the loss divided by accumulate_grad_batches (what it
            # backpropagates); thresholds and the smoothed loss are about the true training loss
            loss *= trainer.accumulate_grad_batches
        if self.schedule.loss_thresholds and is_distributed():
            # thresholds must trigger on every rank at the same step: agree on the mean loss
            local = torch.tensor(math.nan if loss is None else loss, device=pl_module.device)
            loss = float(trainer.strategy.reduce(local, reduce_op="mean"))
        if loss is not None:
            self._pending.extend(f"loss<={t:g}" for t in self.schedule.update_loss(loss))
        step = trainer.global_step
        if step == self._last_step:  # gradient accumulation: no optimizer step yet
            return None
        self._last_step = step
        trigger = self.schedule.step_trigger(step)
        triggers = [*self._pending, *([trigger] if trigger else [])]
        if self.schedule.at_epoch_end and trainer.is_last_batch:
            triggers.append("epoch_end")  # labelled even when another trigger falls on this step
            self._epoch_end_step = step
        self._pending = []
        return "+".join(triggers) or None

    def _decide(self, trainer: Trainer, step: int, trigger: str | None) -> str | None:
        """The label to measure with at ``step`` (None: do not measure), as the time budget
        decides (:meth:`OverheadBudget.decide`); its first deferral is said once.

        Under DDP/FSDP the Gram is a collective, so every rank must measure at the same steps:
        global rank 0 decides on its clock and broadcasts the decision with its deferral queue,
        which the other ranks adopt. The schedule and that queue are identical on every rank, so
        all of them reach the broadcast at the same steps (only when something is due or waiting)."""
        budget = self._budget
        if trigger is None and not budget.pending:
            return None
        decision = budget.decide(step, trigger, self._train_seconds()) if trainer.is_global_zero else None
        if is_distributed():
            shared: tuple[str | None, dict[str, Any]] | None = (
                (decision.trigger, budget.state_dict()) if decision is not None else None
            )
            shared = trainer.strategy.broadcast(shared, src=0)
            assert shared is not None  # rank 0 always decides here
            label = shared[0]
            if not trainer.is_global_zero:
                budget.follow(shared[1])
        else:
            label = decision.trigger if decision is not None else None
        if decision is not None and decision.notice:
            rank_zero_warn(f"StiffnessCallback: {decision.notice}")
        return label

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.schedule.at_epoch_end or not self._participates(trainer):
            return
        step = trainer.global_step
        if step in self._measured_steps or step == self._epoch_end_step:
            return  # measured, or handled (perhaps deferred) at the epoch's last optimizer step
        self._epoch_end_step = step
        with self._budget.timed(measurement=False):
            label = self._decide(trainer, step, "epoch_end")
        if label:
            self._measure(trainer, pl_module, label)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Take the measurements still waiting for the budget (together, as one), then say once
        what the budget did: how many scheduled measurements were deferred and merged."""
        if not self._participates(trainer):
            return
        budget = self._budget
        if budget.pending and trainer.global_step not in self._measured_steps:
            pending = budget.take_pending()  # identical on every rank: all of them measure
            budget.merged += len(pending) - 1
            self._measure(trainer, pl_module, budget.label("", pending))
        summary = budget.summary()
        if summary:
            rank_zero_warn(f"StiffnessCallback: {summary}")

    def state_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe_spec.to_dict() if self.probe_spec is not None else None,
            "schedule": self.schedule.state_dict(),
            "saved_files": list(self.saved_files),
            "failures": list(self.failures),
            "budget": self._budget.state_dict(),
            "train_seconds": self._train_seconds(),
            "measured_steps": sorted(self._measured_steps),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("probe") is not None:
            self.probe_spec = ProbeSpec.from_dict(state_dict["probe"])
        self.schedule.load_state_dict(state_dict.get("schedule", {}))
        self.failures = list(state_dict.get("failures", []))
        if "budget" in state_dict:
            self._budget.load_state_dict(state_dict["budget"])
        else:  # checkpoints before the time budget: only the callback's seconds
            self._budget.spent = float(state_dict.get("measure_seconds", 0.0))
        self._train_seconds_before = float(state_dict.get("train_seconds", 0.0))
        self._measured_steps = {int(s) for s in state_dict.get("measured_steps", [])}
        self.saved_files = [f for f in state_dict.get("saved_files", []) if Path(f).exists()]
        self.measurements = []
        damaged = []
        for f in list(self.saved_files):
            try:
                self.measurements.append(load_measurement(f))
            except MeasurementFormatError:
                damaged.append(f)
                self.saved_files.remove(f)
        if damaged:
            rank_zero_warn(
                f"StiffnessCallback: {len(damaged)} saved measurement file(s) of the resumed run cannot be read and "
                f"are left out of the history: {damaged}"
            )

    # ------------------------------------------------------------------ internals

    @property
    def _adapter(self) -> BatchAdapter:
        return self.settings.probe.batch_adapter or split_batch

    def _train_seconds(self) -> float:
        """Training wall-clock so far, across resumed fits (measurements included)."""
        running = time.perf_counter() - self._train_start if self._train_start is not None else 0.0
        return self._train_seconds_before + running

    @staticmethod
    def _participates(trainer: Trainer) -> bool:
        """Rank 0 measures; under DDP every rank takes part in the Gram's collectives."""
        return trainer.is_global_zero or is_distributed()

    def _measured_module(self, pl_module: LightningModule) -> nn.Module:
        return pl_module.get_submodule(self.module_attr) if self.module_attr else pl_module

    def _resolve_directory(self, trainer: Trainer) -> Path:
        """Where measurements go. Reads ``trainer.log_dir``, a collective under multi-process
        paths, so it is called on every rank at the same point (``on_train_start``)."""
        if self.settings.output.save_dir:
            return Path(self.settings.output.save_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "stiffness"

    def _directory(self, trainer: Trainer) -> Path:
        """The directory resolved at train start (rank-local: safe to call on rank 0 only)."""
        if self._save_path is None:
            raise RuntimeError("StiffnessCallback: the save directory is resolved in on_train_start")
        return self._save_path

    def _save_run_info(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """``run.json`` beside the measurements: the module's hyperparameters (e.g. the learning
        rate, for sweeps) and the measurement settings, so reports need no other source."""
        datamodule = getattr(trainer, "datamodule", None)
        record = settings_record(self.settings)
        # what this run actually used: the splits drawn, the adopted submodule, the resolved super-classes
        record["probe"]["splits"] = list(self.probe_spec.split_names) if self.probe_spec else record["probe"]["splits"]
        record["gram"]["module_attr"] = self.module_attr
        superclasses = list(self.analysis.superclasses) if self.analysis.superclasses else None
        record["analysis"]["superclasses"] = superclasses
        info = {
            "hparams": dict(pl_module.hparams),
            "datamodule_hparams": dict(getattr(datamodule, "hparams", {}) or {}),
            "representation_layers": list(self.settings.measure.representation_layers),
            "superclasses": superclasses,
            "settings": record,
            "probe": self.probe_spec.to_dict() if self.probe_spec is not None else None,
            "start_step": trainer.global_step,  # > 0 for a resumed fit
            # every setting flat by name, as 0.1.0 wrote it (reports read "callback")
            "callback": {name: value for group in record.values() for name, value in group.items()},
            "max_epochs": trainer.max_epochs,
        }
        directory = self._directory(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / "run.json", json.dumps(info, indent=2, default=str))

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

    def _measure(self, trainer: Trainer, pl_module: LightningModule, trigger: str) -> None:
        """One measurement. Under DDP every rank runs the Gram (its share of the layers, then one
        all-reduce); only global rank 0 analyses, saves and logs."""
        step = trainer.global_step
        self._measured_steps.add(step)  # on every rank, so all ranks agree on what is still due
        # the whole measurement, failures, sharing, saving, logging and images included, is its cost
        with self._budget.timed():
            start = time.perf_counter()
            measurement = self._compute(trainer, pl_module, step, trigger)
            if measurement is not None:
                measurement.seconds = time.perf_counter() - start
            self._share_metrics(trainer, measurement)
            if measurement is not None:
                self.measurements.append(measurement)
                self._publish(trainer, measurement)

    def _compute(self, trainer: Trainer, pl_module: LightningModule, step: int, trigger: str) -> Measurement | None:
        """Gram (every rank) and analysis (rank 0); a failure is recorded and warned, never raised."""
        try:
            self._prepare_probe(trainer, pl_module)
            module = self._measured_module(pl_module)
            with call_target(trainer, pl_module, module, self.module_attr) as target:
                result, gram_seconds = self._gram(target)
                # a forward: under FSDP every rank must take part in its parameter gathers
                distances = self._representation_distances(target)
                sharded = is_sharded(target.model, target.model.parameters())
            if not trainer.is_global_zero:
                return None
            # the plain-autograd cross-check differentiates whole parameters: not possible on shards
            if self.settings.gram.verify and self.verification is None and not sharded:
                self._verify(module, result.gram)
            measurement = self._analyze(result, distances, step, trainer.current_epoch, trigger)
        except Exception as err:  # a measurement must never stop training
            if isinstance(err, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            message = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            self.failures.append({"step": step, "trigger": trigger, "error": message})
            rank_zero_warn(f"StiffnessCallback: the measurement at step {step} failed ({message}); training goes on.")
            return None
        measurement.gram_seconds = gram_seconds
        measurement.metrics = _scalar_metrics(trainer.callback_metrics)
        return measurement

    def _logged_scalars(self, m: Measurement) -> dict[str, float]:
        """Every scalar of a measurement as logged: ``stiffness/...`` statistics, the share of the
        training wall-clock the callback has taken so far (everything it did before this
        measurement, which counts from the next one on), how many scheduled measurements the time budget
        deferred and merged so far, the smoothed training loss."""
        metrics = scalar_metrics(m)
        share = self._budget.share(self._train_seconds())
        if math.isfinite(share):
            metrics["stiffness/cost/share"] = share
        metrics["stiffness/cost/deferred"] = float(self._budget.deferred)
        metrics["stiffness/cost/merged"] = float(self._budget.merged)
        if m.train_loss is not None and math.isfinite(m.train_loss):
            metrics["stiffness/train_loss_smoothed"] = m.train_loss
        return metrics

    def _share_metrics(self, trainer: Trainer, m: Measurement | None) -> None:
        """Put the scalars into ``trainer.callback_metrics`` on every rank, so ``EarlyStopping`` and
        ``ModelCheckpoint`` can monitor them (``monitor="stiffness/sign/within"``). Rank 0 computed
        them; under DDP/FSDP every rank reaches this broadcast, also after a failed measurement."""
        metrics = self._logged_scalars(m) if m is not None else None
        if is_distributed():
            metrics = trainer.strategy.broadcast(metrics, src=0)
        if not metrics:
            return
        device = trainer.strategy.root_device
        for key, value in metrics.items():
            if key.startswith("stiffness/") and math.isfinite(value):
                trainer.callback_metrics[key] = torch.tensor(value, device=device)

    def _gram(self, target: CallTarget) -> tuple[GramResult, float]:
        device = next(target.model.parameters()).device
        inputs, targets = self._probe_on(device)
        start = time.perf_counter()
        result = distributed_gram(
            target.model,
            inputs,
            targets,
            loss_fn=self.settings.gram.loss_fn,
            method=self.settings.gram.method,
            params=target.params(self.settings.gram.params),
            memory_budget=self.settings.gram.memory_budget,
            return_blocks=self.settings.measure.layerwise,
        )
        return target.strip(result), time.perf_counter() - start

    def _verify(self, module: nn.Module, gram: Tensor) -> None:
        """Compare the first ``verify`` rows of the Gram with an independent per-example loop."""
        k = min(self.settings.gram.verify, gram.shape[0])
        inputs, targets = self._probe_on(next(module.parameters()).device)
        subset = ExampleBatch.create(inputs, targets).rows(0, k)
        reference = per_example_gram(
            module,
            subset.inputs,
            subset.targets,
            loss_fn=self.settings.gram.loss_fn,
            method="loop",
            params=self.settings.gram.params,
        )
        error = float((gram[:k, :k].double() - reference.double()).norm() / reference.double().norm().clamp_min(1e-30))
        self.verification = {"examples": k, "relative_error": error, "ok": error <= VERIFY_TOLERANCE}
        if error > VERIFY_TOLERANCE:
            rank_zero_warn(
                f"StiffnessCallback: the Gram of the first {k} probe examples differs from plain per-example "
                f"autograd by {error:.2e} (relative). The model's forward probably mixes examples (e.g. BatchNorm "
                "without running statistics, a batch mean added to every example) — per-example gradients and all "
                "stiffness values are unreliable. Check the model, or pass method='loop'."
            )

    def _representation_distances(self, target: CallTarget) -> dict[str, Tensor]:
        if not self.settings.measure.representation_layers:
            return {}
        inputs, _ = self._probe_on(next(target.model.parameters()).device)
        inner_names = target.layers(self.settings.measure.representation_layers)
        reps = capture_representations(target.model, inputs, inner_names)
        return {
            f"layer:{name}": cosine_distance_matrix(reps[inner])
            for name, inner in zip(self.settings.measure.representation_layers, inner_names)
        }

    def _analyze(
        self,
        result: GramResult,
        layer_distances: dict[str, Tensor],
        step: int,
        epoch: int,
        trigger: str,
    ) -> Measurement:
        assert self._probe is not None
        distances = {"input": self._input_distances} if self._input_distances is not None else {}
        distances.update(layer_distances)
        common: dict[str, Any] = dict(
            step=step,
            epoch=epoch,
            trigger=trigger,
            distances=distances,
            blocks=result.blocks if self.settings.measure.layerwise else None,
            config=self.analysis,
        )
        labels = self._probe.labels
        if labels is None:
            measurement = analyze_without_classes(result.gram, self._probe.splits, self._probe.split_names, **common)
        else:
            measurement = analyze(result.gram, labels, self._probe.splits, self._probe.split_names, **common)
        measurement.paths = result.paths
        measurement.train_loss = self.schedule.smoothed_loss
        return measurement

    def _publish(self, trainer: Trainer, m: Measurement) -> None:
        """Save and log a measurement; a logging problem is reported, never raised."""
        try:
            directory = self._directory(trainer)
            self.saved_files.append(str(save_measurement(m, directory, matrices=self.settings.output.save_matrices)))
            metrics = self._logged_scalars(m)
            log_scalars(trainer.loggers, m, metrics, step=m.step)
            # the start images (``<tag>/start``) belong to the run's first measurement at train start,
            # never to the first measurement after a resume
            start = self._first_publish_of_fit and m.step == 0
            self._first_publish_of_fit = False
            if self._images_on and (len(self.measurements) - 1) % self.settings.output.image_every == 0:
                log_images(trainer.loggers, m, m.step, self.analysis.superclasses, self._class_names, start=start)
        except Exception as err:
            rank_zero_warn(
                f"StiffnessCallback: logging the measurement at step {m.step} failed "
                f"({type(err).__name__}: {err}); training goes on."
            )


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


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, Tensor) and value.numel() == 1:
            out[key] = float(value.detach())
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def _loss_value(outputs: Any) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if isinstance(loss, Tensor) and loss.numel() == 1:
        return float(loss.detach())
    return None


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
