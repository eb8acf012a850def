"""The engine and the callback on an accelerator (``scripts/gpu-check.sh`` runs these on a GPU).

Skipped unless ``STIFFNESS_TEST_DEVICE`` names an available device (default ``cuda``); set it to
``cpu`` to check the tests themselves on a machine without a GPU. On the device: every zoo model
and method against the float64 per-example loop computed on the CPU, and one-device Lightning fits
under the single-device, DDP, FSDP (FSDP1) and ModelParallelStrategy (FSDP2) paths whose
step-0 Gram must equal the engine's Gram of the initial model and whose training must be
unchanged by the callback.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_stiffness import StiffnessCallback, load_measurements, per_example_gram
from lightning_stiffness.gram.inputs import ExampleBatch
from lightning_stiffness.probe import choose_probe, collate_probe
from tests.conftest import double_model, rel_err, to_double
from tests.lightning_helpers import FullyShardedTinyClassifier, TinyClassifier, tiny_data, trainer
from tests.zoo import ZOO

REQUESTED = os.environ.get("STIFFNESS_TEST_DEVICE")
DEVICE = torch.device(REQUESTED or "cuda")


def _runnable() -> bool:
    """CUDA when present; the CPU only when asked for explicitly (it is what the other tests cover)."""
    if DEVICE.type == "cuda":
        return torch.cuda.is_available()
    return REQUESTED is not None


pytestmark = pytest.mark.skipif(
    not _runnable(), reason="no CUDA device (set STIFFNESS_TEST_DEVICE=cpu to run these on the CPU)"
)


@pytest.mark.parametrize("method", ["auto", "hooks", "vmap"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_on_device_matches_the_float64_cpu_loop(name: str, method: str) -> None:
    if name == "tiny_bert":
        pytest.importorskip("transformers")
    case = ZOO[name]()
    reference = per_example_gram(double_model(case.model), to_double(case.inputs), case.targets, method="loop")
    model = copy.deepcopy(case.model).to(DEVICE)
    batch = ExampleBatch.create(case.inputs, case.targets).map_tensors(lambda t: t.to(DEVICE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback warning of some zoo models
        gram = per_example_gram(model, batch.inputs, batch.targets, method=method)
    assert gram.device.type == DEVICE.type and gram.dtype == torch.float32
    assert rel_err(gram.cpu(), reference) <= 1e-5


def _strategy(kind: str) -> Any:
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    if kind == "fsdp":
        return FSDPStrategy(auto_wrap_policy={nn.Linear})
    if kind == "model-parallel":
        return ModelParallelStrategy()
    return kind


def _fit(out: Path, kind: str, with_callback: bool) -> tuple[dict[str, Tensor], StiffnessCallback | None]:
    L.seed_everything(0, verbose=False)
    model = FullyShardedTinyClassifier(dropout=0.0) if kind == "model-parallel" else TinyClassifier(dropout=0.0)
    callback = (
        StiffnessCallback(
            every_n_steps=2,
            per_class=4,
            splits=("train",),
            log_images=False,
            save_dir=str(out / "measurements"),
            max_overhead=None,
        )
        if with_callback
        else None
    )
    fit = trainer(
        out,
        [callback] if callback else [],
        accelerator=DEVICE.type,
        devices=1,
        strategy=_strategy(kind),
        max_steps=4,
        deterministic=True,
    )
    fit.fit(model, DataLoader(tiny_data(96, 0), batch_size=8))
    weights = {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    return weights, callback


@pytest.mark.parametrize("kind", ["auto", "ddp", "fsdp", "model-parallel"])
def test_callback_on_one_device(tmp_path: Path, kind: str) -> None:
    if kind == "fsdp" and DEVICE.type != "cuda":
        pytest.skip("Lightning allows FSDPStrategy only on CUDA (tests/test_distributed.py covers it on CPU)")
    plain, _ = _fit(tmp_path / "plain", kind, with_callback=False)
    probed, callback = _fit(tmp_path / "probed", kind, with_callback=True)
    assert callback is not None and not callback.failures, callback.failures if callback else None
    for name, value in plain.items():
        assert torch.equal(value, probed[name]), f"{name}: the callback changed training"
    measurements = load_measurements(tmp_path / "probed" / "measurements")
    assert [m.step for m in measurements] == [0, 2, 4]
    L.seed_everything(0, verbose=False)
    initial = TinyClassifier(dropout=0.0)
    data = {"train": tiny_data(96, 0)}
    probe = collate_probe(data, choose_probe(data, per_class=4, seed=0))
    expected = per_example_gram(initial, probe.inputs, probe.targets)
    torch.testing.assert_close(measurements[0].gram.cpu(), expected, rtol=1e-5, atol=1e-6)
