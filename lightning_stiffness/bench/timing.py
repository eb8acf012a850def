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
    "measure_interleaved",
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


def torch_func_recipe(model: nn.Module, inputs: Tensor | dict[str, Tensor], targets: Tensor) -> Tensor:
    """The per-sample-gradient tutorial recipe plus ``J Jᵀ``. A dict of inputs (a Hugging Face
    batch) goes in as keyword arguments, and an output with ``.logits`` gives its logits; nothing
    else is adapted (where the model cannot run under ``vmap`` as it is, the recipe fails)."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def loss_one(p: dict[str, Tensor], x: Tensor | dict[str, Tensor], y: Tensor) -> Tensor:
        if isinstance(x, dict):
            out = functional_call(model, (p, buffers), (), {k: v.unsqueeze(0) for k, v in x.items()})
        else:
            out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(getattr(out, "logits", out), y.unsqueeze(0))

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
    """One method alone: a warm-up, the median of ``repeats`` timed calls, the peak of one more
    call under :func:`peak_memory` (kept apart from the timing, see :func:`measure_interleaved`).
    Raises what ``fn`` raises."""
    fn()  # warm-up
    out, times = None, []
    for _ in range(repeats):
        out, seconds = _timed(fn, device)
        times.append(seconds)
    return Timing(statistics.median(times), _peak(fn, device), out)


def _timed(fn: Callable[[], Tensor | None], device: torch.device) -> tuple[Tensor | None, float]:
    """``fn()`` and its wall-clock seconds (the device synchronised before and after)."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _peak(fn: Callable[[], Tensor | None], device: torch.device) -> float:
    """Peak extra bytes of one call of ``fn``."""
    with peak_memory(device) as peak:
        fn()
    return peak[0]


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
    if with_recipe:
        methods["recipe"] = lambda: torch_func_recipe(model, x, y)
    return measure_interleaved(methods, device, repeats, case.skip)


def measure_interleaved(
    methods: dict[str, Callable[[], Tensor | None]], device: torch.device, repeats: int, skip: dict[str, str]
) -> dict[str, Timing | str]:
    """Each method once as a warm-up, then ``repeats`` rounds that run every method in turn (per
    method the median time), then one more call of each under :func:`peak_memory` (its peak).
    Interleaving gives every method the same share of a machine whose load drifts, so the ratios
    between methods hold even when the times move; timing apart from the memory sampling keeps
    the sampler's thread, which takes the GIL every 2 ms, from slowing the methods that run many
    small operations more than the others."""
    results: dict[str, Timing | str] = {}
    live: dict[str, Callable[[], Tensor | None]] = {}
    for name, fn in methods.items():
        if name in skip:
            results[name] = f"skipped: {skip[name]}"
        elif (problem := _attempt(fn, device)) is not None:
            results[name] = problem
        else:
            live[name] = fn
    times: dict[str, list[float]] = {name: [] for name in live}
    grams: dict[str, Tensor | None] = {}
    for _ in range(repeats):
        for name, fn in list(live.items()):
            try:
                grams[name], seconds = _timed(fn, device)
                times[name].append(seconds)
            except (torch.OutOfMemoryError, RuntimeError) as err:
                results[name] = _failure(err)
                del live[name]
            _free(device)
    for name, fn in list(live.items()):
        try:
            results[name] = Timing(statistics.median(times[name]), _peak(fn, device), grams[name])
        except (torch.OutOfMemoryError, RuntimeError) as err:
            results[name] = _failure(err)
        _free(device)
    return {name: results[name] for name in methods if name in results}


def _attempt(fn: Callable[[], Tensor | None], device: torch.device) -> str | None:
    """Run ``fn`` once (the warm-up); a short reason when it cannot run."""
    try:
        fn()
    except (torch.OutOfMemoryError, RuntimeError) as err:
        return _failure(err)
    finally:
        _free(device)
    return None


def _failure(err: BaseException) -> str:
    if isinstance(err, torch.OutOfMemoryError):
        return "OOM"
    return f"failed: {str(err).splitlines()[0][:60]}"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


#: On a CPU, memory is sampled RSS growth: the allocator reuses freed pages, so growth below this
#: is noise and no ratio is printed for it.
MIN_RELIABLE_BYTES = 32 * 2**20


def format_results(case: BenchCase, n: int, results: dict[str, Timing | str]) -> str:
    params = sum(p.numel() for p in case.model.parameters())
    device_is_cuda = next(case.model.parameters()).device.type == "cuda"
    # speed-ups against the recipe; where it cannot run (a Hugging Face model's mask checks under
    # vmap), against our vmap, which is the recipe made to run on such models
    baseline_name = "recipe" if isinstance(results.get("recipe"), Timing) else "vmap"
    baseline = results.get(baseline_name)
    ref_gram = baseline.gram if isinstance(baseline, Timing) else None
    lines = [f"\n{case.name}: N={n}, {params / 1e6:.2f}M parameters"]
    if baseline_name == "vmap" and isinstance(baseline, Timing):
        lines.append("  speed-up, memory ratio and error against vmap: the recipe did not run")
    lines.append(f"  {'method':<12}{'time':>11}{'peak mem':>12}{'speed-up':>10}{'mem ratio':>11}{'rel err':>10}")
    for name, r in results.items():
        if isinstance(r, str):
            lines.append(f"  {name:<12} {r}")
            continue
        speed = mem = err = ""
        if isinstance(baseline, Timing) and name != baseline_name:
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
