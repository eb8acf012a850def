"""``StiffnessCallback``: measure stiffness on a fixed probe while a Lightning model trains.

The callback only orchestrates: probe (:mod:`~lightning_stiffness.probe`) → Gram
(:func:`~lightning_stiffness.per_example_gram_blocks`) → analytics
(:func:`~lightning_stiffness.analysis.analyze`) → save and log (:mod:`~lightning_stiffness.log`).
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
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_stiffness.analysis import AnalysisConfig, analyze
from lightning_stiffness.analytics import capture_representations, cosine_distance_matrix, input_distances
from lightning_stiffness.gram import GramResult, per_example_gram, select_parameters
from lightning_stiffness.gram.distributed import distributed_gram, is_distributed
from lightning_stiffness.gram.inputs import LossFn, ProbeBatch
from lightning_stiffness.gram.sharding import is_sharded
from lightning_stiffness.log import custom_scalars_layout, log_images, log_scalars, tensorboard_writers
from lightning_stiffness.measurement import Measurement, load_measurement, save_measurement
from lightning_stiffness.probe import BatchAdapter, ProbeData, ProbeSpec, choose_probe, collate_probe, split_batch
from lightning_stiffness.schedule import MeasurementSchedule
from lightning_stiffness.strategies import ProbeTarget, probe_target, strategy_problem

SPLITS = ("train", "val")
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

    Args:
        every_n_steps: measure every n optimizer steps (None: only the other triggers).
        at_start: measure at step 0, before any update.
        log_points_per_decade: also measure at log-spaced steps (None: off).
        at_epoch_end: also measure at the end of each training epoch.
        loss_thresholds: measure the first time the smoothed training loss is ≤ each value.
        loss_smoothing: EMA factor for that training loss.
        splits: where the probe comes from: any of ``"train"``, ``"val"``.
        per_class: probe examples per class and split (paper: ~15 (v1) to ~50 (v3) for 10 classes).
        seed: seed of the probe draw (and of the bootstrap).
        probe_datasets: explicit datasets per split name (default: the trainer's dataloaders).
        batch_adapter: ``callable(batch) -> (inputs, targets)`` (default: ``(x, y)`` tuples or
            dicts with ``labels``).
        loss_fn: ``callable(outputs, targets) -> (N,)`` per-example losses (default:
            cross-entropy on the logits the module returns).
        module_attr: measure this submodule of the LightningModule (e.g. ``"model"``) instead of
            the module itself.
        method: Gram method, see :func:`~lightning_stiffness.per_example_gram`.
        params: restrict the gradient to these parameters/modules (names or objects).
        memory_budget: bytes of temporaries for the Gram (default: automatic).
        num_classes: number of classes (default: from the probe labels).
        include_self: keep i=j pairs in class matrices (paper v3 excludes them).
        input_distance: compute stiffness vs input-space cosine distance (tensor inputs only).
        representation_layers: module names whose outputs give layer-wise distances (v1 Fig. 9).
        layerwise: also stiffness of each layer's own gradient block.
        bins, critical_length_pairs, max_distance, bootstrap: see :class:`AnalysisConfig`.
        log_images: TensorBoard images/histograms/figures (needs a ``TensorBoardLogger``).
        image_every: log images at every k-th measurement.
        superclasses: fine class → super-class map, or ``"datamodule"`` to read
            ``trainer.datamodule.superclasses``; class matrices are then reordered with block
            borders and same- vs different-super-class statistics are logged (CIFAR-100).
        save_dir: where measurements are saved (default ``<trainer.log_dir>/stiffness``).
        verify: at the first measurement, recompute the Gram of this many probe examples with
            plain per-example autograd (``method="loop"``) and warn if the fast Gram disagrees —
            a model that mixes examples in its forward (e.g. adds a batch mean) is caught there
            (0: skip). The result is in ``verification``.

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
        >>> cb = StiffnessCallback(every_n_steps=5, splits=("train",), per_class=4, log_images=False)
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
        at_start: bool = True,
        log_points_per_decade: int | None = None,
        at_epoch_end: bool = False,
        loss_thresholds: Sequence[float] = (),
        loss_smoothing: float = 0.9,
        splits: Sequence[str] = SPLITS,
        per_class: int = 25,
        seed: int = 0,
        probe_datasets: Mapping[str, Dataset] | None = None,
        batch_adapter: BatchAdapter | None = None,
        loss_fn: LossFn | None = None,
        module_attr: str | None = None,
        method: str = "auto",
        params: Any = None,
        memory_budget: float | None = None,
        num_classes: int | None = None,
        include_self: bool = False,
        input_distance: bool = True,
        representation_layers: Sequence[str] = (),
        layerwise: bool = False,
        bins: int = 30,
        critical_length_pairs: str = "within",
        max_distance: float | None = None,
        bootstrap: int = 0,
        log_images: bool = True,
        image_every: int = 1,
        superclasses: Sequence[int] | str | None = None,
        save_dir: str | None = None,
        verify: int = 3,
    ) -> None:
        splits = tuple(splits)
        unknown = [s for s in splits if s not in SPLITS and not (probe_datasets and s in probe_datasets)]
        if not splits or unknown:
            raise ValueError(f"splits must be a non-empty subset of {SPLITS} (or keys of probe_datasets), got {splits}")
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        if method not in ("auto", "kernel", "vmap", "loop"):
            raise ValueError(f"method must be 'auto', 'kernel', 'vmap' or 'loop', got {method!r}")
        if critical_length_pairs not in ("within", "between", "all"):
            raise ValueError(
                f"critical_length_pairs must be 'within', 'between' or 'all', got {critical_length_pairs!r}"
            )
        if image_every < 1:
            raise ValueError(f"image_every must be >= 1, got {image_every}")
        self.schedule = MeasurementSchedule(
            every_n_steps, at_start, log_points_per_decade, at_epoch_end, tuple(loss_thresholds), loss_smoothing
        )
        self.splits = splits
        self.per_class = per_class
        self.seed = seed
        self.probe_datasets = dict(probe_datasets) if probe_datasets is not None else None
        self.batch_adapter = batch_adapter or split_batch
        self.loss_fn = loss_fn
        self.module_attr = module_attr
        self.method = method
        self.params = params
        self.memory_budget = memory_budget
        self.input_distance = input_distance
        self.representation_layers = tuple(representation_layers)
        self.layerwise = layerwise
        self.analysis = AnalysisConfig(
            num_classes, include_self, bins, critical_length_pairs, max_distance, bootstrap, seed
        )
        self.log_images = log_images
        self.image_every = image_every
        if isinstance(superclasses, str) and superclasses != "datamodule":
            raise ValueError(f"superclasses must be a sequence of ints or 'datamodule', got {superclasses!r}")
        self.superclasses: Sequence[int] | str | None = superclasses
        self.save_dir = save_dir
        if verify < 0:
            raise ValueError(f"verify must be >= 0, got {verify}")
        self.verify = verify
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
        self._measure_seconds = 0.0
        self._train_seconds_before = 0.0  # training wall-clock of earlier (resumed-from) fits
        self._train_start: float | None = None

    # ------------------------------------------------------------------ Lightning hooks

    @property
    def state_key(self) -> str:
        return self._generate_state_key(splits=self.splits, per_class=self.per_class, seed=self.seed)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        problem = strategy_problem(trainer.strategy)
        if problem:
            raise MisconfigurationException(f"StiffnessCallback: {problem}")
        if self.log_images and not tensorboard_writers(trainer.loggers):
            raise MisconfigurationException(
                "StiffnessCallback(log_images=True) needs a TensorBoardLogger to receive images, but the trainer "
                f"has {[type(lg).__name__ for lg in trainer.loggers] or 'no logger'}. Add "
                "Trainer(logger=TensorBoardLogger(...)) or pass StiffnessCallback(log_images=False)."
            )
        try:  # fail at setup, not at every measurement, on a wrong module_attr or params name
            select_parameters(self._measured_module(pl_module), self.params)
        except (AttributeError, ValueError, TypeError) as err:
            raise MisconfigurationException(f"StiffnessCallback: {err}") from err

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train_start = time.perf_counter()
        self._last_step = trainer.global_step
        if not self._participates(trainer):
            return
        self._prepare_probe(trainer)
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
        loss = _loss_value(outputs)
        if self.schedule.loss_thresholds and is_distributed():
            # thresholds must trigger on every rank at the same step: agree on the mean loss
            local = torch.tensor(math.nan if loss is None else loss, device=pl_module.device)
            loss = float(trainer.strategy.reduce(local, reduce_op="mean"))
        if loss is not None:
            self._pending.extend(f"loss<={t:g}" for t in self.schedule.update_loss(loss))
        step = trainer.global_step
        if step == self._last_step:  # gradient accumulation: no optimizer step yet
            return
        self._last_step = step
        trigger = self.schedule.step_trigger(step)
        triggers = [*self._pending, *([trigger] if trigger else [])]
        if self.schedule.at_epoch_end and trainer.is_last_batch:
            triggers.append("epoch_end")  # labelled even when another trigger falls on this step
        self._pending = []
        if triggers and self._participates(trainer):
            self._measure(trainer, pl_module, "+".join(triggers))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.schedule.at_epoch_end or not self._participates(trainer):
            return
        if trainer.global_step in self._measured_steps:
            return
        self._measure(trainer, pl_module, "epoch_end")

    def state_dict(self) -> dict[str, Any]:
        return {
            "probe": self.probe_spec.to_dict() if self.probe_spec is not None else None,
            "schedule": self.schedule.state_dict(),
            "saved_files": list(self.saved_files),
            "failures": list(self.failures),
            "measure_seconds": self._measure_seconds,
            "train_seconds": self._train_seconds(),
            "measured_steps": sorted(self._measured_steps),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("probe") is not None:
            self.probe_spec = ProbeSpec.from_dict(state_dict["probe"])
        self.schedule.load_state_dict(state_dict.get("schedule", {}))
        self.failures = list(state_dict.get("failures", []))
        self._measure_seconds = float(state_dict.get("measure_seconds", 0.0))
        self._train_seconds_before = float(state_dict.get("train_seconds", 0.0))
        self._measured_steps = {int(s) for s in state_dict.get("measured_steps", [])}
        self.saved_files = [f for f in state_dict.get("saved_files", []) if Path(f).exists()]
        self.measurements = [load_measurement(f) for f in self.saved_files]

    # ------------------------------------------------------------------ internals

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

    def _directory(self, trainer: Trainer) -> Path:
        if self.save_dir:
            return Path(self.save_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "stiffness"

    def _save_run_info(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """``run.json`` beside the measurements: the module's hyperparameters (e.g. the learning
        rate, for sweeps) and the measurement settings, so reports need no other source."""
        datamodule = getattr(trainer, "datamodule", None)
        info = {
            "hparams": dict(pl_module.hparams),
            "datamodule_hparams": dict(getattr(datamodule, "hparams", {}) or {}),
            "representation_layers": list(self.representation_layers),
            "superclasses": list(self.analysis.superclasses) if self.analysis.superclasses else None,
            "callback": {
                "splits": list(self.splits),
                "per_class": self.per_class,
                "seed": self.seed,
                "method": self.method,
                "params": None if self.params is None else str(self.params),
                "module_attr": self.module_attr,
                "every_n_steps": self.schedule.every_n_steps,
                "log_points_per_decade": self.schedule.log_points_per_decade,
                "at_epoch_end": self.schedule.at_epoch_end,
                "loss_smoothing": self.schedule.loss_smoothing,
                "layerwise": self.layerwise,
                "bootstrap": self.analysis.bootstrap,
                "loss_thresholds": list(self.schedule.loss_thresholds),
                "include_self": self.analysis.include_self,
                "bins": self.analysis.bins,
                "critical_length_pairs": self.analysis.critical_length_pairs,
                "max_distance": self.analysis.max_distance,
            },
            "max_epochs": trainer.max_epochs,
        }
        directory = self._directory(trainer)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "run.json").write_text(json.dumps(info, indent=2, default=str))

    def _prepare_probe(self, trainer: Trainer) -> None:
        if self._probe is not None:
            return
        datasets = self.probe_datasets or _trainer_datasets(trainer, self.splits)
        datasets = {name: datasets[name] for name in self.splits if name in datasets}
        missing = [s for s in self.splits if s not in datasets]
        if missing:
            raise MisconfigurationException(
                f"StiffnessCallback: no {missing} data to draw the probe from. Give the Trainer those dataloaders, "
                "pass probe_datasets={'train': ..., 'val': ...}, or choose splits=(...) accordingly."
            )
        self._resolve_superclasses(trainer)
        if self.probe_spec is None:
            self.probe_spec = choose_probe(datasets, self.per_class, self.seed, self.batch_adapter)
        collate_fn = _train_collate_fn(trainer)
        self._probe = collate_probe(datasets, self.probe_spec, collate_fn, self.batch_adapter)
        tensor_inputs = isinstance(self._probe.inputs, Tensor) and self._probe.inputs.is_floating_point()
        if self.input_distance and tensor_inputs and trainer.is_global_zero:  # only rank 0 analyses
            self._input_distances = input_distances(self._probe.inputs)

    def _resolve_superclasses(self, trainer: Trainer) -> None:
        mapping = self.superclasses
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
            batch = ProbeBatch.create(self._probe.inputs, self._probe.targets).map_tensors(lambda t: t.to(device))
            self._device_probe = (device, batch.inputs, batch.targets)
        return self._device_probe[1], self._device_probe[2]

    def _measure(self, trainer: Trainer, pl_module: LightningModule, trigger: str) -> None:
        """One measurement. Under DDP every rank runs the Gram (its share of the layers, then one
        all-reduce); only global rank 0 analyses, saves and logs."""
        step = trainer.global_step
        self._measured_steps.add(step)  # on every rank, so all ranks agree on what is still due
        start = time.perf_counter()
        try:
            self._prepare_probe(trainer)
            module = self._measured_module(pl_module)
            with probe_target(trainer, pl_module, module, self.module_attr) as target:
                result, gram_seconds = self._gram(target)
                # a forward: under FSDP every rank must take part in its parameter gathers
                distances = self._representation_distances(target)
                sharded = is_sharded(target.model, target.model.parameters())
            if not trainer.is_global_zero:
                return
            # the plain-autograd cross-check differentiates whole parameters: not possible on shards
            if self.verify and self.verification is None and not sharded:
                self._verify(module, result.gram)
            measurement = self._analyze(result, distances, step, trainer.current_epoch, trigger)
        except Exception as err:  # a measurement must never stop training
            if isinstance(err, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            message = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            self.failures.append({"step": step, "trigger": trigger, "error": message})
            rank_zero_warn(f"StiffnessCallback: the measurement at step {step} failed ({message}); training goes on.")
            return
        seconds = time.perf_counter() - start
        self._measure_seconds += seconds
        measurement.seconds = seconds
        measurement.gram_seconds = gram_seconds
        measurement.metrics = _scalar_metrics(trainer.callback_metrics)
        self.measurements.append(measurement)
        self._publish(trainer, measurement)

    def _gram(self, target: ProbeTarget) -> tuple[GramResult, float]:
        device = next(target.model.parameters()).device
        inputs, targets = self._probe_on(device)
        start = time.perf_counter()
        result = distributed_gram(
            target.model,
            inputs,
            targets,
            loss_fn=self.loss_fn,
            method=self.method,
            params=target.params(self.params),
            memory_budget=self.memory_budget,
            return_blocks=self.layerwise,
        )
        return target.strip(result), time.perf_counter() - start

    def _verify(self, module: nn.Module, gram: Tensor) -> None:
        """Compare the first ``verify`` rows of the Gram with an independent per-example loop."""
        k = min(self.verify, gram.shape[0])
        inputs, targets = self._probe_on(next(module.parameters()).device)
        subset = ProbeBatch.create(inputs, targets).rows(0, k)
        reference = per_example_gram(
            module, subset.inputs, subset.targets, loss_fn=self.loss_fn, method="loop", params=self.params
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

    def _representation_distances(self, target: ProbeTarget) -> dict[str, Tensor]:
        if not self.representation_layers:
            return {}
        inputs, _ = self._probe_on(next(target.model.parameters()).device)
        inner_names = target.layers(self.representation_layers)
        reps = capture_representations(target.model, inputs, inner_names)
        return {
            f"layer:{name}": cosine_distance_matrix(reps[inner])
            for name, inner in zip(self.representation_layers, inner_names)
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
        measurement = analyze(
            result.gram,
            self._probe.targets,
            self._probe.splits,
            self._probe.split_names,
            step=step,
            epoch=epoch,
            trigger=trigger,
            distances=distances,
            blocks=result.blocks if self.layerwise else None,
            config=self.analysis,
        )
        measurement.strategies = result.strategies
        measurement.train_loss = self.schedule.smoothed_loss
        return measurement

    def _publish(self, trainer: Trainer, m: Measurement) -> None:
        """Save and log a measurement; a logging problem is reported, never raised."""
        try:
            self.saved_files.append(str(save_measurement(m, self._directory(trainer))))
            elapsed = self._train_seconds()
            extra = {"stiffness/cost/share": self._measure_seconds / elapsed} if elapsed > 0 else {}
            if m.train_loss is not None and math.isfinite(m.train_loss):
                extra["stiffness/train_loss_smoothed"] = m.train_loss
            log_scalars(trainer.loggers, m, extra, step=m.step)
            if self.log_images and (len(self.measurements) - 1) % self.image_every == 0:
                log_images(tensorboard_writers(trainer.loggers), m, m.step, self.analysis.superclasses)
        except Exception as err:
            rank_zero_warn(
                f"StiffnessCallback: logging the measurement at step {m.step} failed "
                f"({type(err).__name__}: {err}); training goes on."
            )


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
