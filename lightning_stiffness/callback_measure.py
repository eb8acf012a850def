"""One measurement of :class:`~lightning_stiffness.StiffnessCallback`: the Gram on every rank,
the analysis on rank 0, the scalars shared with every rank (``callback_metrics``), then saving
and logging — a failure is recorded and warned, never raised."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from lightning_stiffness.analytics import (
    analyze,
    analyze_without_classes,
    cosine_distance_matrix,
)
from lightning_stiffness.callback_probe import ProbePreparation
from lightning_stiffness.gram import GramResult, per_example_gram
from lightning_stiffness.gram.distributed import distributed_gram, is_distributed
from lightning_stiffness.gram.inputs import ExampleBatch
from lightning_stiffness.gram.representations import capture_representations
from lightning_stiffness.gram.sharding import is_sharded
from lightning_stiffness.log import (
    log_images,
    log_scalars,
    scalar_metrics,
)
from lightning_stiffness.measurement import (
    Measurement,
    save_measurement,
)
from lightning_stiffness.strategies import CallTarget, call_target

__all__: list[str] = []

#: Relative error above which the first-measurement cross-check warns (float32 Grams agree to ~1e-6).
VERIFY_TOLERANCE = 1e-3


class Measuring(ProbePreparation):
    """Runs and publishes measurements."""

    def _measure(self, trainer: Trainer, pl_module: LightningModule, trigger: str) -> None:
        """One measurement. Under DDP every rank runs the Gram (its share of the layers, then one
        all-reduce); only global rank 0 analyses, saves and logs."""
        step = trainer.global_step
        self._measured_steps.add(step)  # on every rank, so all ranks agree on what is still due
        # the whole measurement, failures, sharing, saving, logging and images included, is its cost
        with self._budget.timed():
            measurement = self._compute(trainer, pl_module, step, trigger, time.perf_counter())
            self._share_metrics(trainer, measurement)
            if measurement is not None:
                self.measurements.append(measurement)
                self._publish(trainer, measurement)

    def _compute(
        self, trainer: Trainer, pl_module: LightningModule, step: int, trigger: str, started: float
    ) -> Measurement | None:
        """Gram (every rank) and analysis (rank 0), the Measurement built in one step; a failure
        is recorded and warned, never raised."""
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
            record = {
                "paths": result.paths,
                "train_loss": self.schedule.smoothed_loss,
                "gram_seconds": gram_seconds,
                "metrics": _scalar_metrics(trainer.callback_metrics),
            }
            measurement = self._analyze(
                result.gram, result.blocks, distances, step, trainer.current_epoch, trigger, record, started
            )
        except Exception as err:  # a measurement must never stop training
            if isinstance(err, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()
            message = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            self.failures.append({"step": step, "trigger": trigger, "error": message})
            rank_zero_warn(f"StiffnessCallback: the measurement at step {step} failed ({message}); training goes on.")
            return None
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
        gram: Tensor,
        blocks: dict[str, Tensor],
        layer_distances: dict[str, Tensor],
        step: int,
        epoch: int,
        trigger: str,
        record: dict[str, Any],
        started: float,
    ) -> Measurement:
        assert self._probe is not None
        distances = {"input": self._input_distances} if self._input_distances is not None else {}
        distances.update(layer_distances)
        common: dict[str, Any] = dict(
            step=step,
            epoch=epoch,
            trigger=trigger,
            distances=distances,
            blocks=blocks if self.settings.measure.layerwise else None,
            config=self.analysis,
            record=record,
            started=started,
        )
        labels = self._probe.labels
        if labels is None:
            return analyze_without_classes(gram, self._probe.splits, self._probe.split_names, **common)
        return analyze(gram, labels, self._probe.splits, self._probe.split_names, **common)

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


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, Tensor) and value.numel() == 1:
            out[key] = float(value.detach())
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out
