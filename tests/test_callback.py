"""StiffnessCallback inside real Lightning training runs."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, Subset

from lightning_stiffness import StiffnessCallback, load_measurements
from lightning_stiffness.analytics import class_stiffness_matrix, cosine_matrix
from tests.lightning_helpers import TinyClassifier, loaders, tiny_data, trainer


def _fit(tmp_path: Path, callbacks: list, seed: int = 0, **kwargs) -> TinyClassifier:
    L.seed_everything(seed, verbose=False)
    model = TinyClassifier()
    train, val = loaders()
    trainer(tmp_path, callbacks, **kwargs).fit(model, train, val)
    return model


def _cb(**kwargs) -> StiffnessCallback:
    # max_overhead=None: the exact schedule (tiny models train faster than a measurement takes)
    defaults = dict(every_n_steps=4, per_class=5, log_images=False, bootstrap=5, max_overhead=None)
    defaults.update(kwargs)
    return StiffnessCallback(**defaults)


def test_training_is_bit_identical_with_and_without_callback(tmp_path: Path) -> None:
    plain = _fit(tmp_path / "a", [])
    cb = _cb(at_epoch_end=True, representation_layers=["net.1"], layerwise=True)
    probed = _fit(tmp_path / "b", [cb])
    assert len(cb.measurements) >= 4 and not cb.failures
    for (name, a), (_, b) in zip(plain.state_dict().items(), probed.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs: the callback altered training"


def test_rng_and_dataloader_order_untouched(tmp_path: Path) -> None:
    seen: dict[str, list[torch.Tensor]] = {"a": [], "b": []}

    class Recorder(L.Callback):
        def __init__(self, key: str) -> None:
            self.key = key

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            seen[self.key].append(batch[0].clone())

        def on_train_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
            seen[self.key].append(torch.get_rng_state())

    _fit(tmp_path / "a", [Recorder("a")])
    _fit(tmp_path / "b", [_cb(), Recorder("b")])
    assert len(seen["a"]) == len(seen["b"])
    assert all(torch.equal(x, y) for x, y in zip(seen["a"], seen["b"]))


def test_schedule_step_zero_every_n_and_grad_accumulation(tmp_path: Path) -> None:
    cb = _cb(every_n_steps=2)
    _fit(tmp_path, [cb], max_epochs=1, accumulate_grad_batches=2)  # 6 batches -> 3 optimizer steps
    steps = [m.step for m in cb.measurements]
    assert steps == [0, 2]
    assert cb.measurements[0].trigger == "start"


def test_measurement_contents_match_analytics(tmp_path: Path) -> None:
    cb = _cb(every_n_steps=3)
    _fit(tmp_path, [cb], max_epochs=1)
    m = cb.measurements[-1]
    n = 5 * 3 * 2  # per class x classes x splits
    assert m.gram.shape == (n, n) and m.sign.shape == (n, n)
    assert m.split_names == ("train", "val") and m.splits.tolist() == [0] * 15 + [1] * 15
    assert torch.allclose(m.cos, cosine_matrix(m.gram))
    torch.testing.assert_close(m.class_sign, class_stiffness_matrix(m.sign, m.labels, 3), equal_nan=True)
    assert set(m.summaries["sign"]) == {"all", "train-train", "train-val", "val-val"}
    assert {"input/sign/zero_crossing", "input/cos/linear_fit"} <= set(m.critical_lengths)
    assert m.seconds > 0 and m.gram_seconds > 0
    assert all(s in ("kernel_trick", "materialize", "dense") for s in m.paths.values())


def test_loss_threshold_trigger(tmp_path: Path) -> None:
    cb = _cb(every_n_steps=None, at_start=False, loss_thresholds=(5.0, 1e-9), loss_smoothing=0.0)
    _fit(tmp_path, [cb], max_epochs=1)
    assert [m.trigger for m in cb.measurements] == ["loss<=5"]
    assert cb.measurements[0].step == 1


def test_failed_measurement_warns_and_training_goes_on(tmp_path: Path) -> None:
    calls = []

    def broken_loss(outputs, targets):  # type: ignore[no-untyped-def]
        calls.append(targets.shape)
        if len(calls) > 1:  # the start-of-training dry forward passes; every measurement fails
            raise RuntimeError("boom")
        return torch.nn.functional.cross_entropy(outputs, targets, reduction="none")

    cb = _cb(loss_fn=broken_loss)
    with pytest.warns(UserWarning, match="measurement at step 0 failed"):
        model = _fit(tmp_path, [cb], max_epochs=1)
    assert cb.measurements == [] and cb.failures and "boom" in cb.failures[0]["error"]
    assert model.trainer.global_step == 6


def test_resume_continues_history_and_probe(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb1 = _cb()
    _fit(tmp_path, [cb1, ckpt], max_epochs=1, enable_checkpointing=True)
    steps1 = [m.step for m in cb1.measurements]
    cb2 = _cb()
    L.seed_everything(0, verbose=False)
    train, val = loaders()
    trainer(tmp_path, [cb2, ModelCheckpoint(dirpath=tmp_path / "ckpt")], max_epochs=2, enable_checkpointing=True).fit(
        TinyClassifier(), train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert cb2.probe_spec == cb1.probe_spec
    steps2 = [m.step for m in cb2.measurements]
    assert steps2[: len(steps1)] == steps1 and len(steps2) > len(steps1)
    assert steps2 == sorted(set(steps2)), "no step measured twice after resume"


def test_bf16_mixed_precision(tmp_path: Path) -> None:
    cb = _cb()
    _fit(tmp_path, [cb], max_epochs=1, precision="bf16-mixed")
    assert cb.measurements and not cb.failures
    assert cb.measurements[-1].gram.dtype == torch.float32
    assert torch.isfinite(cb.measurements[-1].gram).all()


def test_torch_compiled_module(tmp_path: Path) -> None:
    class Compiled(TinyClassifier):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.compile(self.net, backend="eager")

    cb = _cb()
    L.seed_everything(0, verbose=False)
    train, val = loaders()
    trainer(tmp_path, [cb], max_epochs=1).fit(Compiled(), train, val)
    assert cb.measurements and not cb.failures
    assert all(s != "fallback-vmap" for s in cb.measurements[-1].paths.values())


def test_measurement_under_no_grad_and_inference_mode(tmp_path: Path) -> None:
    modes: list[tuple[bool, bool]] = []

    class FromValidation(StiffnessCallback):
        def on_validation_batch_end(self, trainer, pl_module, *args) -> None:  # type: ignore[no-untyped-def]
            modes.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
            self._measure(trainer, pl_module, "validation")

    cb = FromValidation(every_n_steps=None, at_start=False, per_class=4, log_images=False)
    L.seed_everything(0, verbose=False)
    model, (train, val) = TinyClassifier(), loaders()
    fit_trainer = trainer(tmp_path, [cb], max_epochs=1)
    fit_trainer.fit(model, train, val)  # Lightning validates under no_grad during fit
    fit_trainer.validate(model, val, verbose=False)  # and under inference_mode in validate()
    assert modes == [(False, False), (False, True)]
    assert [m.trigger for m in cb.measurements] == ["validation", "validation"] and not cb.failures


def test_saved_measurements_roundtrip(tmp_path: Path) -> None:
    cb = _cb(save_dir=str(tmp_path / "saved"))
    _fit(tmp_path, [cb], max_epochs=1)
    loaded = load_measurements(tmp_path / "saved")
    assert [m.step for m in loaded] == [m.step for m in cb.measurements]
    a, b = loaded[-1], cb.measurements[-1]
    assert torch.equal(a.gram, b.gram) and a.summaries == b.summaries
    assert a.critical_lengths.keys() == b.critical_lengths.keys()
    torch.testing.assert_close(a.class_cos, b.class_cos, equal_nan=True)
    with pytest.raises(FileNotFoundError, match="no saved measurements"):
        load_measurements(tmp_path / "ckpt-none" if (tmp_path / "ckpt-none").mkdir() is None else tmp_path)


def test_scalars_reach_every_logger(tmp_path: Path) -> None:
    cb = _cb()
    csv = CSVLogger(str(tmp_path), name="csv")
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    _fit(tmp_path, [cb], max_epochs=1, logger=[tb, csv])
    text = Path(csv.log_dir, "metrics.csv").read_text()
    header = text.splitlines()[0].split(",")
    for key in ("stiffness/sign/within", "stiffness/cos/between", "stiffness/m_coherence", "stiffness/cost/share"):
        assert key in header
    assert load_measurements(tb.log_dir)  # saved under the first logger's log dir


def test_cost_share_is_reported(tmp_path: Path) -> None:
    cb = _cb()
    _fit(tmp_path, [cb], max_epochs=1)
    assert all(m.seconds > 0 for m in cb.measurements)
    assert math.isfinite(sum(m.seconds for m in cb.measurements))


def test_no_warning_spam_from_engine(tmp_path: Path) -> None:
    cb = _cb()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, [cb], max_epochs=1)
    assert not [w for w in caught if "per_example_gram" in str(w.message)]


def test_superclasses_from_datamodule_and_run_info(tmp_path: Path) -> None:
    class Data(L.LightningDataModule):
        superclasses = (0, 1, 0)  # fine classes 0 and 2 share a super-class

        def train_dataloader(self):  # type: ignore[no-untyped-def]
            return loaders()[0]

        def val_dataloader(self):  # type: ignore[no-untyped-def]
            return loaders()[1]

    cb = _cb(superclasses="datamodule", log_images=True)
    L.seed_everything(0, verbose=False)
    trainer(tmp_path, [cb], max_epochs=2, logger=TensorBoardLogger(str(tmp_path))).fit(TinyClassifier(), Data())
    m = cb.measurements[-1]
    cm = m.class_cos
    assert m.superclass["cos"].same == pytest.approx(float(cm[0, 2] + cm[2, 0]) / 2, abs=1e-6)
    others = [cm[a, b] for a in range(3) for b in range(3) if a != b and {a, b} != {0, 2}]
    assert m.superclass["cos"].different == pytest.approx(float(sum(others) / len(others)), abs=1e-6)
    assert load_measurements(tmp_path)[-1].superclass == m.superclass
    info = __import__("json").loads(next(tmp_path.rglob("run.json")).read_text())
    assert info["hparams"]["lr"] == 1e-2 and info["callback"]["per_class"] == 5
    assert "val_loss" in m.metrics and "val_loss" not in cb.measurements[0].metrics  # first validation after step 6


def test_superclasses_datamodule_missing_is_clear(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"trainer\.datamodule\.superclasses"):
        _fit(tmp_path, [_cb(superclasses="datamodule")], max_epochs=1)


def test_wrong_params_name_fails_at_setup(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match="neither a parameter nor a module name"):
        _fit(tmp_path, [_cb(params=["net.9"])], max_epochs=1)


def test_load_measurements_refuses_to_merge_runs(tmp_path: Path) -> None:
    _fit(tmp_path, [_cb(save_dir=str(tmp_path / "runs" / "a"))], max_epochs=1)
    _fit(tmp_path, [_cb(save_dir=str(tmp_path / "runs" / "b"))], max_epochs=1)
    with pytest.raises(ValueError, match="measurements of 2 runs"):
        load_measurements(tmp_path / "runs")
    assert load_measurements(tmp_path / "runs" / "a")


def test_unsupported_strategies_are_refused_clearly(tmp_path: Path) -> None:
    from lightning.pytorch.strategies import Strategy

    cb = _cb()
    trainer_ = trainer(tmp_path, [cb], max_epochs=1)
    # DeepSpeed is not installed here; a strategy class outside the supported ones stands in for it
    trainer_.strategy.__class__ = type("DeepSpeedStrategy", (Strategy,), {})
    with pytest.raises(MisconfigurationException, match="not DeepSpeedStrategy"):
        cb.setup(trainer_, TinyClassifier(), "fit")


def test_fsdp_settings_the_engine_cannot_measure_are_refused_with_the_fix() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    from lightning_stiffness.strategies import strategy_problem

    assert strategy_problem(FSDPStrategy()) is None  # Lightning's default: use_orig_params=True
    problem = strategy_problem(FSDPStrategy(use_orig_params=False))
    assert problem is not None and "leave use_orig_params at its default" in problem
    problem = strategy_problem(FSDPStrategy(cpu_offload=True))
    assert problem is not None and "Train without cpu_offload" in problem


class _TimeFirstClassifier(TinyClassifier):
    """Feeds its first Linear time-first input; with T == N only the data tell the axes apart."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(2, 6)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x.reshape(x.shape[0], 4, 2).transpose(0, 1)))  # (T=4, N, 6)
        return self.head(h.mean(dim=0))


class _MixingClassifier(TinyClassifier):
    """Adds the batch mean of a hidden layer to every example: per-example gradients of the batch
    computation are not those of each example alone, which only plain autograd reveals."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 6)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x))
        return self.head(h + h.mean(dim=0, keepdim=True))


def test_first_measurement_is_cross_checked_against_plain_autograd(tmp_path: Path) -> None:
    good = _cb(every_n_steps=None, splits=("train",))
    _fit(tmp_path / "good", [good], max_epochs=1)
    assert good.verification is not None and good.verification["ok"]
    assert good.verification["relative_error"] < 1e-5

    # a probe of N = 4 examples (class 0 twice, 1, 2) == T: the engine still finds the example axis
    four = torch.utils.data.TensorDataset(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))

    def four_example_callback() -> StiffnessCallback:
        return StiffnessCallback(
            every_n_steps=None, per_class=2, splits=("val",), probe_datasets={"val": four}, log_images=False, verify=4
        )

    time_first = four_example_callback()
    L.seed_everything(0, verbose=False)
    train, val = loaders()
    trainer(tmp_path / "time-first", [time_first], max_epochs=1).fit(_TimeFirstClassifier(), train, val)
    assert time_first.verification is not None and time_first.verification["ok"]
    assert time_first.verification["relative_error"] < 1e-5

    bad = four_example_callback()
    L.seed_everything(0, verbose=False)
    with pytest.warns(UserWarning, match="differs from plain per-example autograd"):
        trainer(tmp_path / "bad", [bad], max_epochs=1).fit(_MixingClassifier(), train, val)
    assert bad.verification is not None and not bad.verification["ok"]
    assert bad.measurements[0].num_examples == 4


def test_epoch_end_is_labelled_when_another_trigger_shares_the_step(tmp_path: Path) -> None:
    cb = _cb(every_n_steps=6, at_start=False, at_epoch_end=True)  # 6 batches per epoch
    _fit(tmp_path, [cb], max_epochs=2)
    assert [(m.step, m.trigger, m.epoch) for m in cb.measurements] == [
        (6, "every_n_steps+epoch_end", 0),
        (12, "every_n_steps+epoch_end", 1),
    ]


def test_images_get_start_tags_only_at_train_start_and_class_names_from_the_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The callback sends images through ``log.log_images`` with ``start=True`` for the run's
    first measurement at step 0 only (not for the first one after a resume), and with the class
    names of the probe dataset (found through ``Subset``) when they are strings naming every class."""
    import lightning_stiffness.callback_measure as callback_module

    calls: list[tuple[int, bool, list[str] | None]] = []

    def record(loggers, m, step, superclasses=None, class_names=None, *, start=None):  # type: ignore[no-untyped-def]
        calls.append((step, bool(start), None if class_names is None else list(class_names)))
        return ["TensorBoardLogger"]

    monkeypatch.setattr(callback_module, "log_images", record)
    data = tiny_data(96, 0)
    data.classes = ["zero", "one", "two"]  # type: ignore[attr-defined]
    train = DataLoader(Subset(data, list(range(96))), batch_size=16, shuffle=True)
    _, val = loaders()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    cb1 = _cb(log_images=True, bootstrap=0)
    L.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer(tmp_path, [cb1, ckpt], max_epochs=1, enable_checkpointing=True, logger=logger).fit(
        TinyClassifier(), train, val
    )
    assert [c[0] for c in calls] == [m.step for m in cb1.measurements] and calls[0][0] == 0
    assert [c[1] for c in calls] == [True] + [False] * (len(calls) - 1)
    assert all(c[2] == ["zero", "one", "two"] for c in calls)
    first_fit = len(calls)
    cb2 = _cb(log_images=True, bootstrap=0)
    trainer(tmp_path, [cb2], max_epochs=2, logger=TensorBoardLogger(str(tmp_path), name="tb", version=1)).fit(
        TinyClassifier(), train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    resumed = calls[first_fit:]
    assert resumed and resumed[0][0] > 0 and not any(c[1] for c in resumed), "no start images after a resume"


def test_class_names_are_kept_only_when_they_name_every_class() -> None:
    from types import SimpleNamespace

    from lightning_stiffness.callback_probe import _class_names, _names_for_labels

    data = tiny_data(12, 0)
    data.classes = ["a", "b", "c"]  # type: ignore[attr-defined]
    no_dm = SimpleNamespace(datamodule=None)
    assert _class_names(no_dm, {"train": Subset(Subset(data, [0, 1]), [0])}) == ["a", "b", "c"]
    with_dm = SimpleNamespace(datamodule=SimpleNamespace(classes=("x", "y", "z")))
    assert _class_names(with_dm, {"train": data}) == ["x", "y", "z"], "the datamodule's names come first"
    assert _class_names(SimpleNamespace(datamodule=SimpleNamespace(classes=[0, 1, 2])), {}) is None
    assert _class_names(SimpleNamespace(datamodule=SimpleNamespace(classes="abc")), {}) is None
    assert _class_names(no_dm, {"train": tiny_data(12, 0)}) is None

    class Exploding:
        @property
        def classes(self) -> list[str]:
            raise RuntimeError("no")

    assert _class_names(SimpleNamespace(datamodule=Exploding()), {}) is None, "never raises"
    labels = torch.tensor([0, 2, 1])
    assert _names_for_labels(["a", "b", "c"], labels, None) == ["a", "b", "c"]
    assert _names_for_labels(["a", "b"], labels, None) is None, "too few names for the labels"
    assert _names_for_labels(["a", "b", "c"], labels, 5) is None, "too few names for num_classes"
    assert _names_for_labels(["a", "b", "c"], None, None) is None, "targets that are not class labels"


def test_remote_save_dir_through_fsspec(tmp_path: Path) -> None:
    """A URL save_dir (``s3://…`` in practice; fsspec's in-memory filesystem here) stays a URL:
    run.json and every measurement are written there and read back, and nothing lands locally."""
    import fsspec

    url = "memory://stiffness-test-run/stiffness"
    cb = _cb(every_n_steps=3, save_dir=url, max_overhead=None)
    _fit(tmp_path, [cb], max_steps=6)
    fs = fsspec.filesystem("memory")
    assert fs.exists("/stiffness-test-run/stiffness/run.json")
    assert all(f.startswith("memory://") for f in cb.saved_files) and len(cb.saved_files) == 3
    assert [m.step for m in load_measurements(url)] == [0, 3, 6]
    assert not (tmp_path / "memory:").exists() and not any(tmp_path.rglob("measurement-*.pt"))
    fs.rm("/stiffness-test-run", recursive=True)
