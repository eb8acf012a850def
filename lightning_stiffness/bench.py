"""Benchmark: the Gram engine against the plain torch.func recipe, side by side.

Run ``python -m lightning_stiffness.bench`` (``--help`` for options). For every case it prints
time and peak extra memory of

* ``auto``    — the kernel engine with the per-layer cost model (what users get),
* ``ghost`` / ``materialize`` — the kernel engine with one exact path forced on every layer,
* ``vmap``    — our tiled ``vmap`` method,
* ``recipe``  — the torch.func tutorial recipe: ``vmap(grad(functional_call))`` over all N at
  once, flatten, ``J Jᵀ``,
* ``step``    — one ordinary training step (forward + backward of the mean loss) on the same N,

with speed-up ratios ``recipe / method`` and the relative error of each Gram against the
recipe's. Memory is the CUDA allocator's peak on a GPU and the sampled peak RSS growth on a
CPU (coarser). Timings are medians of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from lightning_stiffness.gram import per_example_gram
from lightning_stiffness.gram.inputs import call_model, default_loss

__all__ = ["main"]


@dataclass
class BenchCase:
    name: str
    model: nn.Module
    inputs: Any
    targets: Tensor
    skip: dict[str, str] = field(default_factory=dict)  # method -> why it is not run


@dataclass
class Timing:
    seconds: float
    peak_bytes: float
    gram: Tensor | None


def torch_func_recipe(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """The per-sample-gradient tutorial recipe plus ``J Jᵀ`` (tensor inputs only)."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def loss_one(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, inputs, targets)
    jac = torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)
    return jac @ jac.T


def training_step(model: nn.Module, inputs: Any, targets: Tensor) -> None:
    model.zero_grad(set_to_none=True)
    default_loss(call_model(model, inputs), targets).mean().backward()
    model.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- cases


def mlp_case(n: int, device: torch.device, width: int) -> BenchCase:
    model = nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    return BenchCase(
        f"MLP 784-{width}-{width}-10",
        model.to(device),
        torch.randn(n, 784, device=device),
        torch.randint(0, 10, (n,), device=device),
    )


#: Forced ghost on 32x32 convolutions: T = H·W = 1024 positions, about 10¹³ FLOP at N = 256 (minutes on a
#: CPU); the cost model never takes that path there, so the benchmark does not either.
GHOST_ON_EARLY_CONVS = "T = 1024 convs, ~1e13 FLOP"


def three_conv_net(channels: tuple[int, int, int]) -> nn.Sequential:
    """3x3 convs ('same' padding, ReLU, 2x2 max-pool each) on 32x32 RGB, then one Linear."""
    layers: list[nn.Module] = []
    width = 3
    for c in channels:
        layers += [nn.Conv2d(width, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        width = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * 4 * 4, 10))


def small_cnn_case(n: int, device: torch.device, channels: tuple[int, int, int] = (16, 32, 32)) -> BenchCase:
    model = three_conv_net(channels)
    name = "-".join(map(str, channels))
    return BenchCase(
        f"CNN {name}{' (paper v3)' if channels == (16, 32, 32) else ''}, 32x32",
        model.to(device),
        torch.randn(n, 3, 32, 32, device=device),
        torch.randint(0, 10, (n,), device=device),
        skip={"kernel_trick": GHOST_ON_EARLY_CONVS},
    )


def resnet18_case(n: int, device: torch.device) -> BenchCase:
    from torchvision.models import resnet18

    model = resnet18(num_classes=10)
    return BenchCase(
        "ResNet-18 (eval BN), 32x32",
        model.to(device),
        torch.randn(n, 3, 32, 32, device=device),
        torch.randint(0, 10, (n,), device=device),
        skip={"kernel_trick": GHOST_ON_EARLY_CONVS},
    )


def bert_case(n: int, device: torch.device, *, base: bool, seq_len: int) -> BenchCase:
    from transformers import BertConfig, BertForSequenceClassification

    config: Any

    head: dict[str, Any] = {"num_labels": 3, "attn_implementation": "sdpa"}
    if base:
        config = BertConfig(**head)
        name = f"BERT-base (110M), {seq_len} tokens"
    else:
        small: dict[str, Any] = {
            "vocab_size": 1000,
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        }
        config = BertConfig(intermediate_size=256, **small, **head)
        name = f"tiny BERT (2x128), {seq_len} tokens"
    model = BertForSequenceClassification(config).to(device)  # type: ignore[arg-type]
    ids = torch.randint(1, config.vocab_size, (n, seq_len), device=device)
    mask = torch.ones_like(ids)
    mask[: n // 2, seq_len * 3 // 4 :] = 0
    return BenchCase(name, model, {"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (n,), device=device))


# --------------------------------------------------------------------------- measurement


@contextmanager
def peak_memory(device: torch.device) -> Iterator[list[float]]:
    """Yields a one-element list that holds the peak extra bytes after the block."""
    result = [0.0]
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result[0] = float(torch.cuda.max_memory_allocated(device) - base)
        return
    page = os.sysconf("SC_PAGE_SIZE")
    base = _rss_pages() * page
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_pages() * page)
            stop.wait(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result[0] = float(max(peak[0], _rss_pages() * page) - base)


def _rss_pages() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1])


def measure(fn: Callable[[], Tensor | None], device: torch.device, repeats: int) -> Timing:
    fn()  # warm-up
    times, peaks, out = [], [], None
    for _ in range(repeats):
        with peak_memory(device) as peak:
            _sync(device)
            start = time.perf_counter()
            out = fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        peaks.append(peak[0])
    return Timing(statistics.median(times), max(peaks), out)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case: BenchCase, device: torch.device, repeats: int, with_recipe: bool) -> dict[str, Timing | str]:
    model, x, y = case.model, case.inputs, case.targets
    model.eval()
    methods: dict[str, Callable[[], Tensor | None]] = {
        "auto": lambda: per_example_gram(model, x, y, method="auto"),
        "kernel_trick": lambda: per_example_gram(model, x, y, method="hooks", layer_path="kernel_trick"),
        "materialize": lambda: per_example_gram(model, x, y, method="hooks", layer_path="materialize"),
        "vmap": lambda: per_example_gram(model, x, y, method="vmap"),
        "step": lambda: training_step(model, x, y),
    }
    if with_recipe and isinstance(x, Tensor):
        methods["recipe"] = lambda: torch_func_recipe(model, x, y)
    results: dict[str, Timing | str] = {}
    for name, fn in methods.items():
        if name in case.skip:
            results[name] = f"skipped: {case.skip[name]}"
            continue
        try:
            results[name] = measure(fn, device, repeats)
        except torch.OutOfMemoryError:
            results[name] = "OOM"
        except RuntimeError as err:
            results[name] = f"failed: {str(err).splitlines()[0][:60]}"
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


#: On a CPU, memory is sampled RSS growth: the allocator reuses freed pages, so growth below this
#: is noise and no ratio is printed for it.
MIN_RELIABLE_BYTES = 32 * 2**20


def format_results(case: BenchCase, n: int, results: dict[str, Timing | str]) -> str:
    params = sum(p.numel() for p in case.model.parameters())
    device_is_cuda = next(case.model.parameters()).device.type == "cuda"
    baseline = results.get("recipe")
    reference = baseline if isinstance(baseline, Timing) else results.get("vmap")
    ref_gram = reference.gram if isinstance(reference, Timing) else None
    lines = [f"\n{case.name}: N={n}, {params / 1e6:.2f}M parameters"]
    lines.append(f"  {'method':<12}{'time':>11}{'peak mem':>12}{'speed-up':>10}{'mem ratio':>11}{'rel err':>10}")
    for name, r in results.items():
        if isinstance(r, str):
            lines.append(f"  {name:<12} {r}")
            continue
        speed = mem = err = ""
        if isinstance(baseline, Timing) and name != "recipe":
            speed = f"{baseline.seconds / r.seconds:.1f}x"
            reliable = min(r.peak_bytes, baseline.peak_bytes) >= MIN_RELIABLE_BYTES or device_is_cuda
            mem = f"{100 * r.peak_bytes / baseline.peak_bytes:.1f}%" if baseline.peak_bytes > 0 and reliable else "–"
        if r.gram is not None and ref_gram is not None:
            err = f"{float((r.gram.double() - ref_gram.double()).norm() / ref_gram.double().norm()):.1e}"
        lines.append(f"  {name:<12}{_ms(r.seconds):>11}{_mib(r.peak_bytes):>12}{speed:>10}{mem:>11}{err:>10}")
    auto, step = results.get("auto"), results.get("step")
    if isinstance(auto, Timing) and isinstance(step, Timing):
        lines.append(f"  probe cost (auto) = {auto.seconds / step.seconds:.1f} training steps on the same batch")
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.0f} MiB" if nbytes < 2**30 else f"{nbytes / 2**30:.2f} GiB"


CaseFactory = Callable[[], tuple[BenchCase, int, bool]]


def build_cases(device: torch.device, full: bool) -> list[tuple[str, CaseFactory]]:
    """(name, factory → (case, N, run the recipe?)); CPU sizes by default, GPU sizes
    with ``--full``. Factories are lazy, so ``--only`` needs only the packages its cases use."""
    gpu = device.type == "cuda"
    width, n_resnet = (1024, 512) if gpu else (512, 128)
    cases: list[tuple[str, CaseFactory]] = [
        ("mlp", lambda: (mlp_case(512, device, width), 512, True)),
        ("cnn", lambda: (small_cnn_case(256, device), 256, True)),
        ("cnn-wide", lambda: (small_cnn_case(256, device, (64, 128, 256)), 256, True)),
        ("resnet18", lambda: (resnet18_case(n_resnet, device), n_resnet, True)),
        ("tiny-bert", lambda: (bert_case(64, device, base=False, seq_len=32), 64, False)),
    ]
    if full:
        cases.append(("mlp-8192", lambda: (mlp_case(8192, device, 2048), 8192, False)))
        cases.append(("bert-base", lambda: (bert_case(256, device, base=True, seq_len=128), 256, False)))
    return cases


# --------------------------------------------------------------------------- callback cost


def cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Smallest process CPU time (all threads) of ``repeats`` calls after a warm-up: on a shared
    machine less disturbed by other processes than wall-clock."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def analytics_vs_gram(device: torch.device, n: int, repeats: int) -> str:
    """Analytics (:func:`~lightning_stiffness.analysis.analyze`) against the Gram they start from,
    at the demo's settings: its FC network 784-500-300-100-10, 10 classes, two splits, input
    distances, with bootstrap 0 (the callback's default) and 50 (the demo's). Wall-clock medians
    and, on a CPU, the smallest CPU time."""
    from lightning_stiffness.analysis import AnalysisConfig, analyze
    from lightning_stiffness.analytics import input_distances
    from lightning_stiffness.demo import demo_model

    model = demo_model(784).to(device).eval()
    x = torch.randn(n, 784, device=device)
    x = x / x.norm(dim=1, keepdim=True)
    y = torch.arange(n, device=device) % 10
    splits = (torch.arange(n) >= n // 2).long()
    distances = {"input": input_distances(x)}
    gram = measure(lambda: per_example_gram(model, x, y), device, repeats)
    assert gram.gram is not None
    cpu = device.type == "cpu"
    gram_cpu = cpu_seconds(lambda: per_example_gram(model, x, y), repeats) if cpu else math.nan
    lines = [f"\nanalytics vs Gram: demo FC 784-500-300-100-10, N={n}, 10 classes, input distances"]
    lines.append(f"  {'part':<28}{'wall':>11}{'vs Gram':>9}{'CPU time':>11}{'vs Gram':>9}")
    lines.append(f"  {'Gram (auto)':<28}{_ms(gram.seconds):>11}{'1.00x':>9}{_ms(gram_cpu):>11}{'1.00x':>9}")
    for bootstrap in (0, 50):
        config = AnalysisConfig(bootstrap=bootstrap)

        def run(config: AnalysisConfig = config) -> None:
            assert gram.gram is not None
            analyze(gram.gram, y, splits, ("train", "val"), step=0, epoch=0, trigger="bench",
                    distances=distances, config=config)  # fmt: skip

        timing = measure(run, device, repeats)
        analytics_cpu = cpu_seconds(run, repeats) if cpu else math.nan
        lines.append(
            f"  {f'analytics, bootstrap={bootstrap}':<28}{_ms(timing.seconds):>11}"
            f"{timing.seconds / gram.seconds:>8.2f}x{_ms(analytics_cpu):>11}{analytics_cpu / gram_cpu:>8.2f}x"
        )
    return "\n".join(lines)


def callback_overhead(steps: int, repeats: int) -> str:
    """The demo's training (its model and data, batch 32, validation each epoch, CPU) for
    ``steps`` optimizer steps: without the callback, with ``StiffnessCallback()`` at its default
    settings, and with its images off, in alternating order. Wall-clock and process CPU time
    (medians), the callback's own accounting (``measurement.seconds``) and the disk it wrote."""
    import tempfile

    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader

    from lightning_stiffness import StiffnessCallback
    from lightning_stiffness.demo import demo_model, load_digits_dataset

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    train, val = load_digits_dataset("mnist5k", 0)

    def fit(callback: StiffnessCallback | None) -> tuple[float, float, int]:
        L.seed_everything(0, verbose=False)
        with tempfile.TemporaryDirectory() as out:
            trainer = L.Trainer(
                max_steps=steps,
                accelerator="cpu",
                devices=1,
                logger=TensorBoardLogger(out, name="bench", default_hp_metric=False),
                callbacks=[callback] if callback else [],
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                log_every_n_steps=10,
                num_sanity_val_steps=0,
            )
            model = demo_model(train.tensors[0].shape[1])
            start, start_cpu = time.perf_counter(), time.process_time()
            trainer.fit(model, DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=256))
            seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            disk = sum(f.stat().st_size for f in Path(out).rglob("measurement-*.pt"))
        return seconds, cpu, disk

    configs: dict[str, Callable[[], StiffnessCallback | None]] = {
        "without the callback": lambda: None,
        "StiffnessCallback()": lambda: StiffnessCallback(),
        "  max_overhead=None": lambda: StiffnessCallback(max_overhead=None),
        "  images off": lambda: StiffnessCallback(log_images=False),
    }
    fit(None)  # warm-up: imports, first-call overheads
    wall: dict[str, list[float]] = {k: [] for k in configs}
    cpu: dict[str, list[float]] = {k: [] for k in configs}
    own: dict[str, list[float]] = {k: [] for k in configs}
    notes: dict[str, str] = {}
    for _ in range(repeats):
        for name, make in configs.items():
            callback = make()
            seconds, cpu_seconds_, disk = fit(callback)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds_)
            if callback is not None:
                budget = callback._budget  # every second the callback counted: what cost/share reports
                own[name].append(budget.spent)
                count = len(callback.measurements)
                each = disk / max(count, 1) / 2**20
                notes[name] = (
                    f"{count} measurements ({budget.deferred} deferred, {budget.merged} merged), "
                    f"{disk / 2**20:.1f} MiB on disk ({each:.2f} each)"
                )
    base = "without the callback"
    base_wall, base_cpu = statistics.median(wall[base]), statistics.median(cpu[base])
    lines = [
        f"\ncallback overhead: demo FC on mnist5k, batch 32, {steps} steps, median of {repeats}",
        f"  {'run':<24}{'wall':>9}{'ratio':>8}{'CPU':>9}{'ratio':>8}{'own s':>8}  notes",
    ]
    for name in configs:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        mine = f"{statistics.median(own[name]):.2f}" if own[name] else ""
        ratios = f"{w:>8.2f}s{w / base_wall:>7.2f}x{c:>8.2f}s{c / base_cpu:>7.2f}x"
        lines.append(f"  {name:<24}{ratios}{mine:>8}  {notes.get(name, '')}")
    lines.append("  own s = every second the callback counted itself (probe, hooks, measurements with saving,")
    lines.append("  logging and images): what stiffness/cost/share reports and max_overhead (default 0.05) budgets")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only",
        nargs="*",
        help="case keys to run: mlp, cnn, cnn-wide, resnet18, tiny-bert, mlp-8192, bert-base, analytics, callback",
    )
    parser.add_argument("--steps", type=int, default=750, help="training steps of the 'callback' case (demo: 750)")
    parser.add_argument("--full", action="store_true", help="also the large GPU cases (N=8192 MLP, BERT-base)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {_device_name(device)}, threads {torch.get_num_threads()}")
    for key, factory in build_cases(device, args.full):
        if args.only and key not in args.only:
            continue
        case, n, with_recipe = factory()
        results = run_case(case, device, args.repeats, with_recipe)
        print(format_results(case, n, results), flush=True)
    if not args.only or "analytics" in args.only:
        print(analytics_vs_gram(device, 1000, args.repeats), flush=True)
    if not args.only or "callback" in args.only:
        print(callback_overhead(args.steps, args.repeats), flush=True)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores)"


if __name__ == "__main__":
    main()
