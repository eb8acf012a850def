"""The probe: a fixed, seeded, class-stratified set of examples measured at every step.

Drawn once from the training and/or validation data (paper v3's train-train, train-val and
val-val pair blocks; v1 used validation pairs only) and kept as indices plus seed, so a
resumed run measures the same examples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, default_collate

__all__ = [
    "BatchAdapter",
    "ProbeData",
    "ProbeSpec",
    "choose_probe",
    "collate_probe",
    "dataset_labels",
    "split_batch",
    "stratified_indices",
]

BatchAdapter = Callable[[Any], tuple[Any, Tensor]]


@dataclass(frozen=True)
class ProbeSpec:
    """Which examples form the probe: dataset indices per split, and how they were drawn."""

    indices: dict[str, list[int]]
    seed: int
    per_class: int

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(self.indices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "indices": {k: list(v) for k, v in self.indices.items()},
            "seed": self.seed,
            "per_class": self.per_class,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> ProbeSpec:
        return cls(
            {k: [int(i) for i in v] for k, v in state["indices"].items()}, int(state["seed"]), int(state["per_class"])
        )


@dataclass(frozen=True)
class ProbeData:
    """The collated probe: model inputs, targets, and the split index of every example."""

    inputs: Any
    targets: Tensor
    splits: Tensor
    split_names: tuple[str, ...]


def split_batch(batch: Any) -> tuple[Any, Tensor]:
    """Default batch adapter: ``(x, y, ...)`` tuples, or dicts with ``labels``/``label``/``y``
    (Hugging Face style: every other key is a model input)."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, Mapping):
        for key in ("labels", "label", "y", "target", "targets"):
            if key in batch:
                return {k: v for k, v in batch.items() if k != key}, batch[key]
    raise TypeError(
        f"cannot split a batch of type {type(batch).__name__} into (inputs, targets); batches must be "
        "(x, y) tuples or dicts with a 'labels' key, or pass batch_adapter=callable(batch) -> (inputs, targets)"
    )


def dataset_labels(dataset: Dataset, adapter: BatchAdapter = split_batch) -> list[int]:
    """Class label of every example: from ``targets``/``labels`` attributes when the dataset
    has them (torchvision), through ``Subset`` indices, else by reading each example."""
    if isinstance(dataset, Subset):
        parent = dataset_labels(dataset.dataset, adapter)
        return [parent[int(i)] for i in dataset.indices]
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values):
            labels = torch.as_tensor(values).reshape(-1).tolist()
            if len(labels) == len(dataset):  # type: ignore[arg-type]
                return [int(v) for v in labels]
    return [int(torch.as_tensor(adapter(dataset[i])[1]).reshape(-1)[0]) for i in range(len(dataset))]  # type: ignore[arg-type]


def stratified_indices(labels: Sequence[int], per_class: int, seed: int) -> list[int]:
    """Up to ``per_class`` indices of every class, drawn without replacement with a seeded
    generator (never the global RNG), ordered by class."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    generator = torch.Generator().manual_seed(seed)
    label_tensor = torch.as_tensor(list(labels))
    chosen: list[int] = []
    for cls in torch.unique(label_tensor).tolist():
        members = (label_tensor == cls).nonzero().flatten()
        pick = members[torch.randperm(len(members), generator=generator)[:per_class]]
        chosen.extend(sorted(pick.tolist()))
    return chosen


def choose_probe(
    datasets: Mapping[str, Dataset], per_class: int, seed: int, adapter: BatchAdapter = split_batch
) -> ProbeSpec:
    """Stratified probe indices for each split (each split drawn with its own derived seed)."""
    indices = {
        name: stratified_indices(dataset_labels(ds, adapter), per_class, seed + k)
        for k, (name, ds) in enumerate(datasets.items())
    }
    return ProbeSpec(indices, seed, per_class)


def collate_probe(
    datasets: Mapping[str, Dataset],
    spec: ProbeSpec,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    adapter: BatchAdapter = split_batch,
) -> ProbeData:
    """Read the probe examples (RNG forked: random transforms do not disturb training) and
    collate them into one batch with the training dataloader's ``collate_fn``."""
    missing = [name for name in spec.indices if name not in datasets]
    if missing:
        raise ValueError(f"the probe needs the splits {missing}, but only {list(datasets)} are available")
    items: list[Any] = []
    split_ids: list[int] = []
    with torch.random.fork_rng(devices=[]):
        for k, (name, idx) in enumerate(spec.indices.items()):
            items.extend(datasets[name][i] for i in idx)
            split_ids.extend([k] * len(idx))
    inputs, targets = adapter((collate_fn or default_collate)(items))
    targets = torch.as_tensor(targets)
    return ProbeData(inputs, targets, torch.tensor(split_ids), spec.split_names)
