"""Dataset helpers for stiffness experiments."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from lightning_stiffness.probe import dataset_labels

__all__ = ["PermutedLabels"]


class PermutedLabels(Dataset):
    """A dataset whose labels are randomly shuffled across examples once, with a fixed seed:
    the paper's control experiment (v1 Fig. 4: a network memorising random labels ends with
    within-class stiffness +1 and between-class −1).

    Items must be ``(x, y, ...)`` tuples; ``targets`` holds the permuted labels.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        labels = torch.tensor(dataset_labels(dataset))
        generator = torch.Generator().manual_seed(seed)
        self.targets = labels[torch.randperm(len(labels), generator=generator)].tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError("PermutedLabels needs (x, y, ...) items")
        return (item[0], self.targets[index], *item[2:])
