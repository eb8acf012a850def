"""Measuring one case: the torch.func recipe, time and peak extra memory of each method, and the
results table (speed-up and memory ratios against the recipe, relative error of each Gram)."""

from __future__ import annotations

import gc
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from lightning_stiffness.bench.cases import BenchCase
from lightning_stiffness.gram import per_example_gram
from lightning_stiffness.gram.inputs import call_model, default_loss

__all__ = [
    "Timing",
    "after_auto_trial",
    "cpu_seconds",
    "format_results",
    "measure",
    "peak_memory",
    "run_case",
    "torch_func_recipe",
    "training_step",
]


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


def after_auto_trial(fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """``fn`` whose first call first makes ``auto``'s trial calls (kernel and vmap alternately,
    ``gram.auto.TRIAL_CALLS`` in all), so the warm-up covers them and timed calls are ``auto``'s
    steady state."""
    from lightning_stiffness.gram.auto import TRIAL_CALLS

    done = [False]

    def run() -> Tensor:
        if not done[0]:
            done[0] = True
            for _ in range(TRIAL_CALLS):
                fn()
        return fn()

    return run


def training_step(model: nn.Module, inputs: Any, targets: Tensor) -> None:
    model.zero_grad(set_to_none=True)
    default_loss(call_model(model, inputs), targets).mean().backward()
    model.zero_grad(set_to_none=True)


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
        "auto": after_auto_trial(lambda: per_example_gram(model, x, y, method="auto")),
        "hooks": lambda: per_example_gram(model, x, y, method="hooks"),
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
