"""The probe: a fixed, seeded, class-stratified set of examples measured at every step.

Targets that are not class labels (regression values, multi-label vectors, token-level labels)
get a seeded random probe instead, or one stratified by user-given groups (``groups=``); the
class statistics then use the groups, or are skipped.

Drawn once from the training and/or validation data (paper v3's train-train, train-val and
val-val pair blocks; v1 used validation pairs only) and kept as indices plus seed, so a
resumed run measures the same examples.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset, default_collate

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
#: ``groups=``: a key of dict examples, or ``callable(example) -> int``, giving each example's group.
GroupKey = str | Callable[[Any], int]
#: Probe examples per split when the targets are not class labels and no groups are given.
UNGROUPED_PER_SPLIT_CLASSES = 10


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
    groups: Tensor | None = None

    @property
    def labels(self) -> Tensor | None:
        """What class statistics group by: the groups, else integer class targets, else ``None``."""
        if self.groups is not None:
            return self.groups
        return self.targets if is_class_labels(self.targets) else None


def is_class_labels(targets: Tensor) -> bool:
    """One integer class index per example: shape ``(N,)`` and an integer dtype. Float targets
    (regression), ``(N, k)`` multi-label vectors and ``(N, T)`` token labels are not."""
    return targets.dim() == 1 and not targets.is_floating_point() and not targets.is_complex()


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


def dataset_labels(
    dataset: Dataset, adapter: BatchAdapter = split_batch, groups: GroupKey | None = None
) -> list[int] | None:
    """Class label (or group, with ``groups=``) of every example: from ``targets``/``labels``
    attributes when the dataset has them (torchvision), through ``Subset`` indices, else by
    reading each example. ``None`` when the targets are not integer class labels (never
    truncated to integers)."""
    if isinstance(dataset, Subset):
        parent = dataset_labels(dataset.dataset, adapter, groups)
        return None if parent is None else [parent[int(i)] for i in dataset.indices]
    n = len(dataset)  # type: ignore[arg-type]
    if groups is not None:
        return [_group_of(dataset[i], groups) for i in range(n)]
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values):
            tensor = torch.as_tensor(values)
            if len(tensor) == n:
                return [int(v) for v in tensor.tolist()] if is_class_labels(tensor) else None
    if adapter is split_batch and isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        # what reading every example would give, without indexing the dataset n times
        targets = dataset.tensors[1].reshape(n, -1)
        if targets.shape[1] != 1:
            return None  # each example's target has several elements: not class labels
        return [int(v) for v in targets[:, 0].tolist()] if is_class_labels(targets[:, 0]) else None
    labels = []
    for i in range(n):
        target = torch.as_tensor(adapter(dataset[i])[1])
        if target.numel() != 1 or target.is_floating_point() or target.is_complex():
            return None
        labels.append(int(target.reshape(())))
    return labels


def _group_of(example: Any, groups: GroupKey) -> int:
    value = groups(example) if callable(groups) else example[groups]
    try:
        return int(torch.as_tensor(value).reshape(()))
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(f"groups= must give one integer per example, got {value!r}") from err


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
    datasets: Mapping[str, Dataset],
    per_class: int,
    seed: int,
    adapter: BatchAdapter = split_batch,
    groups: GroupKey | None = None,
) -> ProbeSpec:
    """Stratified probe indices for each split (each split drawn with its own derived seed).
    Targets that are not class labels, without ``groups``, get ``per_class × 10`` seeded random
    examples per split."""
    indices: dict[str, list[int]] = {}
    for k, (name, ds) in enumerate(datasets.items()):
        labels = dataset_labels(ds, adapter, groups)
        if labels is None:
            size = min(per_class * UNGROUPED_PER_SPLIT_CLASSES, len(ds))  # type: ignore[arg-type]
            generator = torch.Generator().manual_seed(seed + k)
            indices[name] = sorted(torch.randperm(len(ds), generator=generator)[:size].tolist())  # type: ignore[arg-type]
            continue
        indices[name] = stratified_indices(labels, per_class, seed + k)
        short = probe_shortfall(labels, indices[name], per_class)
        if short:
            warnings.warn(
                f"the probe asks for per_class={per_class} examples of every class, but the {name!r} data has fewer "
                f"for {len(short)} class(es) (class: available) {short}; the {name!r} probe has "
                f"{len(indices[name])} examples instead of {per_class * len(set(labels))}.",
                UserWarning,
                stacklevel=2,
            )
    return ProbeSpec(indices, seed, per_class)


def probe_shortfall(labels: Sequence[int], chosen: Sequence[int], per_class: int) -> dict[int, int]:
    """Classes that have fewer than ``per_class`` examples, with how many were available."""
    counts = Counter(labels[i] for i in chosen)
    return {int(c): n for c, n in sorted(counts.items()) if n < per_class}


def collate_probe(
    datasets: Mapping[str, Dataset],
    spec: ProbeSpec,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    adapter: BatchAdapter = split_batch,
    groups: GroupKey | None = None,
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
    group_ids = torch.tensor([_group_of(item, groups) for item in items]) if groups is not None else None
    return ProbeData(inputs, targets, torch.tensor(split_ids), spec.split_names, group_ids)
