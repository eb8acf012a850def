"""``StiffnessCallback``: measure stiffness on a fixed probe while a Lightning model trains.

The callback only orchestrates: probe (:mod:`~lightning_stiffness.probe`) → Gram
(:func:`~lightning_stiffness.per_example_gram_blocks`) → analytics
(:func:`~lightning_stiffness.analytics.analyze`) → save and log (:mod:`~lightning_stiffness.log`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor

from lightning_stiffness.analytics import (
    AnalysisConfig,
)
from lightning_stiffness.budget import OverheadBudget
from lightning_stiffness.callback_measure import VERIFY_TOLERANCE, Measuring  # noqa: F401
from lightning_stiffness.gram import select_parameters
from lightning_stiffness.gram.distributed import is_distributed
from lightning_stiffness.log import (
    custom_scalars_layout,
    image_loggers,
    tensorboard_writers,
)
from lightning_stiffness.measurement import (
    Measurement,
    MeasurementFormatError,
    load_measurement,
    write_text_atomic,
)
from lightning_stiffness.measurement_io import is_url
from lightning_stiffness.probe import (
    ProbeData,
    ProbeSpec,
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
from lightning_stiffness.strategies import strategy_problem

__all__ = ["StiffnessCallback"]


class StiffnessCallback(Measuring):
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
        self._save_path: Path | str | None = None
        self._images_on = self.settings.output.log_images
        self._class_names: list[str] | None = None  # tick labels of the images, found at train start
        self._first_publish_of_fit = True  # the next measurement published is this fit's first

    @property
    def budget(self) -> OverheadBudget:
        """The callback's time accounting: ``spent`` (every second it took, what
        ``stiffness/cost/share`` divides), and the ``deferred``, ``merged`` and ``pending``
        measurements of ``max_overhead``. Read it; the callback updates it."""
        return self._budget

    # ------------------------------------------------------------------ Lightning hooks

    @property
    def state_key(self) -> str:
        # Lightning reads it at every hook call (profiler names): computed once per settings object
        cached: tuple[Settings, str] | None = self.__dict__.get("_state_key")
        if cached is None or cached[0] is not self.settings:
            cached = self.__dict__["_state_key"] = (self.settings, self._state_key_of_settings())
        return cached[1]

    def _state_key_of_settings(self) -> str:
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
        for logger in trainer.loggers:
            # the logger's own start (a TensorBoard writer and its imports), which Lightning does
            # at its first log anyway: not the callback's cost, so outside the callback's clock
            getattr(logger, "experiment", None)
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
        """Take the measurements still waiting for the budget (together, as one) if the budget
        allows it, then say once what the budget did: how many scheduled measurements were
        deferred, merged, or not taken at all."""
        if not self._participates(trainer):
            return
        budget = self._budget
        if budget.pending and trainer.global_step not in self._measured_steps:
            with budget.timed(measurement=False):
                label = self._decide(trainer, trainer.global_step, None)  # rank 0 decides for all
            if label:
                self._measure(trainer, pl_module, label)
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
        self.saved_files = [f for f in state_dict.get("saved_files", []) if _exists(f)]
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

    def _train_seconds(self) -> float:
        """Training wall-clock so far, across resumed fits (measurements included)."""
        running = time.perf_counter() - self._train_start if self._train_start is not None else 0.0
        return self._train_seconds_before + running

    @staticmethod
    def _participates(trainer: Trainer) -> bool:
        """Rank 0 measures; under DDP every rank takes part in the Gram's collectives."""
        return trainer.is_global_zero or is_distributed()

    def _resolve_directory(self, trainer: Trainer) -> Path | str:
        """Where measurements go. Reads ``trainer.log_dir``, a collective under multi-process
        strategies, so it is called on every rank at the same point (``on_train_start``). A URL
        (``s3://…``, as Lightning's loggers and ``ModelCheckpoint`` accept through fsspec) stays a
        URL; a local path becomes a ``Path``."""
        if self.settings.output.save_dir:
            base: str = str(self.settings.output.save_dir)
            return base if is_url(base) else Path(base)
        log_dir = str(trainer.log_dir or trainer.default_root_dir)
        return f"{log_dir.rstrip('/')}/stiffness" if is_url(log_dir) else Path(log_dir) / "stiffness"

    def _directory(self, trainer: Trainer) -> Path | str:
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
        text = json.dumps(info, indent=2, default=str)
        if isinstance(directory, str):  # a URL: fsspec makes the folder, the write is atomic there too
            from fsspec.core import url_to_fs

            fs, root = url_to_fs(directory)
            fs.makedirs(root, exist_ok=True)
            write_text_atomic(f"{directory}/run.json", text)
        else:
            directory.mkdir(parents=True, exist_ok=True)
            write_text_atomic(directory / "run.json", text)


def _loss_value(outputs: Any) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if isinstance(loss, Tensor) and loss.numel() == 1:
        return float(loss.detach())
    return None


def _exists(path: str) -> bool:
    """Whether a saved measurement file is still there (a local path or an fsspec URL)."""
    if is_url(path):
        from fsspec.core import url_to_fs

        fs, inner = url_to_fs(path)
        return bool(fs.exists(inner))
    return Path(path).exists()
