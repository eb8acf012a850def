"""Two CPU processes (gloo): the distributed Gram and the callback under Lightning DDP.

Each multi-process run happens in a subprocess bounded by a timeout, so a hang fails the test
instead of stalling the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_stiffness import load_measurements, per_example_gram, per_example_gram_blocks
from lightning_stiffness.gram.distributed import partition_parameters
from lightning_stiffness.probe import choose_probe, collate_probe
from tests.distributed_worker import probe_model
from tests.lightning_helpers import TinyClassifier, tiny_data
from tests.zoo import ZOO

ROOT = Path(__file__).resolve().parents[1]


def _run_worker(mode: str, out: Path, timeout: float = 300) -> None:
    """Run a worker in its own process group; on a timeout kill the whole group (Lightning's
    launcher starts the other ranks as children, and handles SIGTERM, so a hang would
    otherwise outlive the test) and fail with the tail of its output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.distributed_worker", mode, str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{mode}: the run hung (no result after {timeout:.0f} s):\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]


def test_partition_is_balanced_disjoint_and_complete() -> None:
    model, _, _ = probe_model()
    sizes = {k: p.numel() for k, p in model.named_parameters()}
    groups = partition_parameters(sizes, 2)
    assert sorted(n for g in groups for n in g) == sorted(sizes)
    loads = [sum(sizes[n] for n in g) for g in groups]
    assert max(loads) - min(loads) <= max(sizes.values())
    assert partition_parameters(dict(reversed(sizes.items())), 2) == groups  # deterministic: every rank agrees


def _engine_results(tmp_path: Path, mode: str) -> list[dict]:
    """Run an engine worker; each rank's saved result must equal the single-process Gram, blocks
    and parameter names, with every parameter on a layer rule (the probe model needs no fallback,
    and sharded parameters could not use one)."""
    _run_worker(mode, tmp_path)
    model, x, y = probe_model()
    reference = per_example_gram_blocks(model, x, y, return_blocks=True)
    results = [torch.load(tmp_path / f"{mode}_rank{rank}.pt") for rank in (0, 1)]
    for res in results:
        torch.testing.assert_close(res["gram"], reference.gram, rtol=1e-5, atol=1e-6)
        assert res["blocks"].keys() == reference.blocks.keys()
        for name, block in reference.blocks.items():
            torch.testing.assert_close(res["blocks"][name], block, rtol=1e-5, atol=1e-6)
        assert res["paths"].keys() == reference.paths.keys()
        assert not any(s.startswith("fallback") for s in res["paths"].values())
    return results


def test_distributed_gram_equals_single_process(tmp_path: Path) -> None:
    for res in _engine_results(tmp_path, "engine"):
        assert res["grads_untouched"], ".grad changed during the distributed Gram"


def test_distributed_gram_on_fsdp2_sharded_model(tmp_path: Path) -> None:
    """Each rank holds a shard of every parameter (FSDP2 on a CPU mesh); the layer rules work
    from activations and backprops only, so the exact Gram needs no gathered weights."""
    for res in _engine_results(tmp_path, "fsdp"):
        assert res["still_sharded"], "parameters were gathered outside FSDP"


def test_distributed_gram_on_fsdp1_wrapped_model(tmp_path: Path) -> None:
    """FullyShardedDataParallel (FSDP1, use_orig_params=True): the layers hold views of all-gathered
    flat parameters during the forward, yet every rank gets the exact Gram under the unwrapped
    names (also for a Hugging Face BERT with one unit per layer), FSDP's own training step is
    unchanged afterwards, and use_orig_params=False is refused."""
    bert = ZOO["tiny_bert"]()
    bert_reference = per_example_gram(bert.model, bert.inputs, bert.targets, method="loop")
    for res in _engine_results(tmp_path, "fsdp1"):
        assert res["grads_equal"], "a training step after the probe gave other gradients"
        assert "use_orig_params=True" in res["flat_error"]
        torch.testing.assert_close(res["bert_gram"], bert_reference, rtol=1e-5, atol=1e-6)


def _check_unchanged_training_and_step0_gram(weights_file: Path, measurements_dir: Path) -> list:
    """Weights trained with and without the callback are identical, and the step-0 measurement
    (before any update) is the single-process Gram of the seeded initial model on the same probe.
    Returns the saved measurements."""
    weights = torch.load(weights_file)
    for name, value in weights["plain"].items():
        assert torch.equal(value, weights["probed"][name]), f"{name}: the callback changed training"
    measurements = load_measurements(measurements_dir)
    L.seed_everything(0, verbose=False)
    model = TinyClassifier(dropout=0.0)
    data = {"train": tiny_data(96, 0)}
    probe = collate_probe(data, choose_probe(data, per_class=4, seed=0))
    expected = per_example_gram(model, probe.inputs, probe.targets)
    torch.testing.assert_close(measurements[0].gram, expected, rtol=1e-5, atol=1e-6)
    return measurements


def test_callback_under_model_parallel_fsdp2(tmp_path: Path) -> None:
    """Lightning's ModelParallelStrategy with fully_shard: parameters stay sharded, every rank takes
    part in the Gram and the representation forward, the numbers match one process, and training is
    unchanged by the callback."""
    _run_worker("model-parallel", tmp_path)
    measurements = _check_unchanged_training_and_step0_gram(tmp_path / "mp_weights.pt", tmp_path / "measurements-mp")
    assert [m.step for m in measurements] == [0, 2, 4]
    assert "layer:net.1/sign/zero_crossing" in measurements[0].critical_lengths


def test_callback_under_lightning_fsdp1(tmp_path: Path) -> None:
    """Lightning's FSDPStrategy (each Linear an FSDP unit, the LightningModule the root) measuring
    the submodule ``net``: the probe runs through the FSDP root, results use ``net``'s own names,
    the numbers match one process, and training is unchanged by the callback."""
    _run_worker("lightning-fsdp1", tmp_path)
    measurements = _check_unchanged_training_and_step0_gram(
        tmp_path / "fsdp1_weights.pt", tmp_path / "measurements-fsdp1"
    )
    assert [m.step for m in measurements] == [0, 2, 4]
    assert "layer:1/sign/zero_crossing" in measurements[0].critical_lengths
    paths = torch.load(tmp_path / "fsdp1_weights.pt")["paths"]
    assert set(paths[0]) == {"0.weight", "0.bias", "3.weight", "3.bias"}


def test_callback_under_ddp(tmp_path: Path) -> None:
    _run_worker("ddp", tmp_path)
    measurements = _check_unchanged_training_and_step0_gram(tmp_path / "ddp_weights.pt", tmp_path / "measurements")
    steps = [m.step for m in measurements]
    assert steps[:2] == [0, 2] and len(set(steps)) == len(steps)


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "fsdp1", "model-parallel"])
def test_callback_with_default_settings_multiprocess(tmp_path: Path, strategy: str) -> None:
    """``StiffnessCallback(every_n_steps=3)`` as users add it: the Trainer's default
    TensorBoardLogger, no ``save_dir``, probe from train and val, images on, under DDP, FSDP1
    (Lightning's FSDPStrategy) and FSDP2 (ModelParallelStrategy). The run finishes
    (it used to deadlock: rank 0 read the collective ``Trainer.log_dir`` alone while rank 1 waited
    in the Gram's all-reduce), and the measurements land under the logger's directory."""
    _run_worker(f"defaults-{strategy}", tmp_path, timeout=240)
    log_dir = tmp_path / "lightning_logs" / "version_0"
    measurements = load_measurements(log_dir / "stiffness")
    assert [m.step for m in measurements] == [0, 3, 6]
    assert sorted(m.split_names for m in measurements)[0] == ("train", "val")
    assert any(p.name.startswith("events.out.tfevents") for p in log_dir.iterdir())


@pytest.mark.parametrize("world", [1, 3])
def test_partition_edge_cases(world: int) -> None:
    groups = partition_parameters({"a": 5, "b": 2}, world)
    assert len(groups) == world and sorted(n for g in groups for n in g) == ["a", "b"]


def test_time_budget_under_ddp_defers_the_same_measurements_on_every_rank(tmp_path: Path) -> None:
    """``max_overhead`` far below what a measurement costs: rank 0 defers every scheduled
    measurement and broadcasts its decisions; both ranks take part in the same Grams (no hang), keep
    the same queue, and the waiting ones are taken together at the end of training, where only
    rank 0's budget allows it (the other rank follows)."""
    import json

    _run_worker("ddp-budget", tmp_path, timeout=240)
    ranks = [json.loads((tmp_path / f"budget-rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["measured_steps"] == ranks[1]["measured_steps"]
    for key in ("deferred", "merged", "pending"):
        assert ranks[0][key] == ranks[1][key], key
    assert not ranks[0]["failures"] and not ranks[1]["failures"]
    assert ranks[0]["deferred"] > 0 and ranks[0]["pending"] == []
    saved = load_measurements(tmp_path / "measurements")
    assert [m.step for m in saved] == ranks[0]["measured_steps"]
    assert saved[0].trigger == "start" and any("deferred from" in m.trigger for m in saved)
    assert len(saved) == 1 + 6 - ranks[0]["merged"]  # start + six scheduled, less those merged
    notices = [w for w in ranks[0]["warnings"] if "is deferred" in w]
    summaries = [w for w in ranks[0]["warnings"] if "were deferred" in w]
    assert len(notices) == 1 and len(summaries) == 1 and f"{ranks[0]['deferred']} scheduled" in summaries[0]
