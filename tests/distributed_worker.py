"""Multi-process runs for tests/test_distributed.py (run as ``python -m tests.distributed_worker``).

Kept out of the pytest process: spawning ranks from inside pytest re-imports the test session.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_stiffness.gram.distributed import distributed_gram


def probe_model() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv1d(2, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(24, 8),
        torch.nn.LayerNorm(8),
        torch.nn.Linear(8, 3),
    )
    return model, torch.randn(10, 2, 6), torch.arange(10) % 3


def _engine_rank(rank: int, world: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    model, x, y = probe_model()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    result = distributed_gram(model, x, y, return_blocks=True)
    grads_untouched = all(bool((p.grad == 7.0).all()) for p in model.parameters())
    torch.save(
        {
            "gram": result.gram,
            "blocks": result.blocks,
            "paths": result.paths,
            "grads_untouched": grads_untouched,
        },
        f"{out}/engine_rank{rank}.pt",
    )
    dist.destroy_process_group()


def _fsdp_rank(rank: int, world: int, out: str) -> None:
    """FSDP2 (``fully_shard``) on a CPU mesh: every rank holds a shard of each parameter."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous-fsdp", rank=rank, world_size=world)
    model, x, y = probe_model()
    mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    result = distributed_gram(model, x, y, return_blocks=True)
    still_sharded = all(isinstance(p, DTensor) for p in model.parameters())
    torch.save(
        {"gram": result.gram, "blocks": result.blocks, "paths": result.paths, "still_sharded": still_sharded},
        f"{out}/fsdp_rank{rank}.pt",
    )
    dist.destroy_process_group()


def _fsdp1_rank(rank: int, world: int, out: str) -> None:
    """FSDP1 (``FullyShardedDataParallel``, use_orig_params=True) on CPU processes: each original
    parameter is a view of this rank's flat shard; the forward all-gathers one unit at a time."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous-fsdp1", rank=rank, world_size=world)

    def wrapped(use_orig_params: bool = True) -> torch.nn.Module:
        model, _, _ = probe_model()
        policy = ModuleWrapPolicy({torch.nn.Conv1d, torch.nn.Linear})
        return FullyShardedDataParallel(
            model, auto_wrap_policy=policy, use_orig_params=use_orig_params, device_id=torch.device("cpu")
        )

    _, x, y = probe_model()

    def train_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    model = wrapped()
    result = distributed_gram(model, x, y, return_blocks=True)
    probed_grads = train_grads(model)  # FSDP's state is intact after the probe
    plain_grads = train_grads(wrapped())
    flat_error = ""
    try:
        distributed_gram(wrapped(use_orig_params=False), x, y)
    except (ValueError, RuntimeError) as err:
        flat_error = str(err)
    # a Hugging Face BERT with one FSDP unit per layer: embeddings (position ids of shape (1, L)),
    # attention, LayerNorm, padded attention mask
    from transformers.models.bert.modeling_bert import BertLayer

    from tests.zoo import ZOO

    bert = ZOO["tiny_bert"]()
    sharded_bert = FullyShardedDataParallel(
        bert.model, auto_wrap_policy=ModuleWrapPolicy({BertLayer}), use_orig_params=True, device_id=torch.device("cpu")
    )
    bert_gram = distributed_gram(sharded_bert, bert.inputs, bert.targets).gram
    torch.save(
        {
            "gram": result.gram,
            "blocks": result.blocks,
            "paths": result.paths,
            "grads_equal": probed_grads.keys() == plain_grads.keys()
            and all(torch.equal(probed_grads[k], plain_grads[k]) for k in plain_grads),
            "flat_error": flat_error,
            "bert_gram": bert_gram,
        },
        f"{out}/fsdp1_rank{rank}.pt",
    )
    dist.destroy_process_group()


def _probe_callback(save_dir: str, **extra: Any) -> Any:
    """The callback the multi-process fits use: 4 train examples per class, every 2 steps, the
    exact schedule (``max_overhead=None``); ``extra`` settings override these."""
    from lightning_stiffness import StiffnessCallback

    settings: dict[str, Any] = dict(
        every_n_steps=2, per_class=4, splits=("train",), log_images=False, save_dir=save_dir, max_overhead=None
    )
    return StiffnessCallback(**{**settings, **extra})


def _fit(out: str, with_callback: bool) -> dict[str, torch.Tensor]:
    import lightning as L
    from torch.utils.data import DataLoader

    from tests.lightning_helpers import TinyClassifier, tiny_data, trainer

    L.seed_everything(0, verbose=False)
    model = TinyClassifier(dropout=0.0)
    callbacks = [_probe_callback(f"{out}/measurements", loss_thresholds=(0.9,))] if with_callback else []
    fit_trainer = trainer(out, callbacks, strategy="ddp_spawn", devices=2, max_steps=6)
    fit_trainer.fit(model, DataLoader(tiny_data(96, 0), batch_size=8))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _fit_model_parallel(out: str, with_callback: bool) -> tuple[int, dict[str, torch.Tensor]]:
    """Lightning's ModelParallelStrategy (FSDP2 via ``configure_model``) on 2 CPU processes; the
    subprocess launcher re-runs this script once per rank."""
    import lightning as L
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.utils.data import DataLoader

    from tests.lightning_helpers import FullyShardedTinyClassifier, tiny_data, trainer

    L.seed_everything(0, verbose=False)
    model = FullyShardedTinyClassifier(dropout=0.0)
    callbacks = [_probe_callback(f"{out}/measurements-mp", representation_layers=["net.1"])] if with_callback else []
    fit_trainer = trainer(out, callbacks, strategy=ModelParallelStrategy(), devices=2, max_steps=4)
    fit_trainer.fit(model, DataLoader(tiny_data(96, 0), batch_size=8))
    weights = {
        k: v.full_tensor().clone() if hasattr(v, "full_tensor") else v.clone() for k, v in model.state_dict().items()
    }
    failures = callbacks[0].failures if callbacks else []
    assert not failures, failures
    return fit_trainer.global_rank, weights


def _fit_fsdp1(out: str, with_callback: bool) -> tuple[int, dict[str, torch.Tensor], list[Any]]:
    """Lightning's FSDPStrategy (FSDP1) on 2 CPU processes, each Linear its own FSDP unit; the
    callback measures the submodule ``net`` (forward redirected through the FSDP root)."""
    import lightning as L
    from torch.distributed.fsdp import FullyShardedDataParallel, StateDictType
    from torch.utils.data import DataLoader

    from tests.lightning_helpers import TinyClassifier, tiny_data, trainer

    L.seed_everything(0, verbose=False)
    model = TinyClassifier(dropout=0.0)
    callbacks = (
        [_probe_callback(f"{out}/measurements-fsdp1", module_attr="net", representation_layers=["1"])]
        if with_callback
        else []
    )
    strategy = _cpu_fsdp_strategy()
    fit_trainer = trainer(out, callbacks, strategy=strategy, devices=2, max_steps=4)
    fit_trainer.fit(model, DataLoader(tiny_data(96, 0), batch_size=8))
    root = fit_trainer.strategy.model
    with FullyShardedDataParallel.state_dict_type(root, StateDictType.FULL_STATE_DICT):
        weights = {k.replace("_fsdp_wrapped_module.", ""): v.clone() for k, v in root.state_dict().items()}
    failures = callbacks[0].failures if callbacks else []
    assert not failures, failures
    paths = [m.paths for m in callbacks[0].measurements] if callbacks else []
    return fit_trainer.global_rank, weights, paths


def _cpu_fsdp_strategy() -> Any:
    """Lightning's FSDPStrategy (FSDP1), each Linear its own unit, on CPU processes."""
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel

    class CPUFSDPStrategy(FSDPStrategy):
        """Lightning allows FSDPStrategy only with CUDA, and torch shards on the CPU only when told
        ``device_id="cpu"``; everything else is Lightning's FSDP1 strategy as users run it."""

        def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
            return FullyShardedDataParallel(model, device_id=torch.device("cpu"), **self.kwargs)

    return CPUFSDPStrategy(auto_wrap_policy={torch.nn.Linear})


def _fit_ddp_defaults(out: str, strategy: str) -> None:
    """The callback as users add it: ``StiffnessCallback(every_n_steps=...)`` with every other
    setting at its default (probe from train and val, images on, saved under ``trainer.log_dir``),
    the Trainer's own default TensorBoardLogger and no ``save_dir``. Lightning's ``log_dir`` is a
    collective under DDP, so touching it on one rank only hangs both."""
    import lightning as L
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.utils.data import DataLoader

    from lightning_stiffness import StiffnessCallback
    from tests.lightning_helpers import FullyShardedTinyClassifier, TinyClassifier, tiny_data

    L.seed_everything(0, verbose=False)
    model = FullyShardedTinyClassifier(dropout=0.0) if strategy == "model-parallel" else TinyClassifier(dropout=0.0)
    lightning_strategies: dict[str, Any] = {"fsdp1": _cpu_fsdp_strategy, "model-parallel": ModelParallelStrategy}
    callback = StiffnessCallback(every_n_steps=3, per_class=4, max_overhead=None)  # the exact schedule
    fit_trainer = L.Trainer(
        accelerator="cpu",
        strategy=lightning_strategies[strategy]() if strategy in lightning_strategies else strategy,
        devices=2,
        max_steps=6,
        callbacks=[callback],
        default_root_dir=out,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    fit_trainer.fit(
        model,
        DataLoader(tiny_data(96, 0), batch_size=8),
        DataLoader(tiny_data(48, 1), batch_size=16),
    )
    # under ddp_spawn the ranks ran copies of the callback: the test reads what they saved
    if fit_trainer.global_rank == 0 and strategy != "ddp_spawn":
        assert not callback.failures, callback.failures
        assert [m.step for m in callback.measurements] == [0, 3, 6]


def _fit_ddp_budget(out: str) -> None:
    """DDP with a time budget too small for any scheduled measurement: rank 0 decides, every rank
    follows. At the end of training rank 0 alone relaxes its budget, so the waiting measurements
    are taken only if the other rank follows rank 0's decision there too. Each rank writes what it
    measured and what its budget counted."""
    import json
    import warnings

    import lightning as L
    from torch.utils.data import DataLoader

    from tests.lightning_helpers import TinyClassifier, tiny_data, trainer

    L.seed_everything(0, verbose=False)
    callback = _probe_callback(f"{out}/measurements", every_n_steps=1, max_overhead=0.001)

    class RelaxOnRankZeroAtTheEnd(L.Callback):
        def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.is_global_zero:
                callback.budget.max_overhead = 0.99

    fit_trainer = trainer(out, [RelaxOnRankZeroAtTheEnd(), callback], strategy="ddp", devices=2, max_steps=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_trainer.fit(TinyClassifier(dropout=0.0), DataLoader(tiny_data(96, 0), batch_size=8))
    budget = callback.budget
    record = {
        "measured_steps": sorted(callback._measured_steps),
        "deferred": budget.deferred,
        "merged": budget.merged,
        "pending": budget.pending,
        "failures": callback.failures,
        "warnings": [str(w.message) for w in caught if "StiffnessCallback" in str(w.message)],
    }
    Path(f"{out}/budget-rank{fit_trainer.global_rank}.json").write_text(json.dumps(record))


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    Path(out).mkdir(parents=True, exist_ok=True)
    if mode == "engine":
        mp.spawn(_engine_rank, args=(2, out), nprocs=2, join=True)
    elif mode == "fsdp":
        mp.spawn(_fsdp_rank, args=(2, out), nprocs=2, join=True)
    elif mode == "fsdp1":
        mp.spawn(_fsdp1_rank, args=(2, out), nprocs=2, join=True)
    elif mode == "model-parallel":
        rank, plain = _fit_model_parallel(out, False)
        _, probed = _fit_model_parallel(out, True)
        if rank == 0:
            torch.save({"plain": plain, "probed": probed}, f"{out}/mp_weights.pt")
    elif mode == "lightning-fsdp1":
        rank, plain, _ = _fit_fsdp1(out, False)
        _, probed, paths = _fit_fsdp1(out, True)
        if rank == 0:
            torch.save({"plain": plain, "probed": probed, "paths": paths}, f"{out}/fsdp1_weights.pt")
    elif mode.startswith("defaults-"):
        _fit_ddp_defaults(out, mode.removeprefix("defaults-"))
    elif mode == "ddp-budget":
        _fit_ddp_budget(out)
    elif mode == "ddp":
        torch.save({"plain": _fit(out, False), "probed": _fit(out, True)}, f"{out}/ddp_weights.pt")
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
