"""Benchmark: the Gram engine against the plain torch.func recipe, side by side.

Run ``python -m lightning_stiffness.bench`` (``--help`` for options). For every case it prints
time and peak extra memory of

* ``auto``    — what users get: the hook engine with the per-layer cost model, or the whole model's
  ``vmap`` where that was timed faster (its trial calls are part of the warm-up),
* ``hooks``   — the hook engine alone (``auto`` may instead run the whole model's ``vmap``),
* ``kernel_trick`` / ``materialize`` — the hook engine with one exact path forced on every layer,
* ``vmap``    — our tiled ``vmap`` method,
* ``recipe``  — the torch.func tutorial recipe: ``vmap(grad(functional_call))`` over all N at
  once, flatten, ``J Jᵀ``,
* ``step``    — one ordinary training step (forward + backward of the mean loss) on the same N,

with speed-up ratios ``recipe / method`` and the relative error of each Gram against the
recipe's (against ``vmap`` where the recipe cannot run, e.g. a Hugging Face model whose mask
checks break under ``vmap``). Memory is the CUDA allocator's peak on a GPU and the sampled peak
RSS growth on a CPU (coarser), from one extra call of each method. Timings are medians of
``--repeats`` rounds after one warm-up, every round running every method in turn.
"""

from __future__ import annotations

import argparse
import os

import torch

from lightning_stiffness.bench.callback_cost import analytics_vs_gram, callback_overhead
from lightning_stiffness.bench.cases import build_cases
from lightning_stiffness.bench.contention import contended_mlp
from lightning_stiffness.bench.timing import format_results, run_case

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightning_stiffness.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only",
        nargs="*",
        help="case keys to run: mlp, cnn, cnn-wide, resnet18, tiny-bert, mlp-8192, bert-base, analytics, callback",
    )
    parser.add_argument("--steps", type=int, default=750, help="training steps of the 'callback' case (demo: 750)")
    parser.add_argument("--full", action="store_true", help="also the large GPU cases (N=8192 MLP, BERT-base)")
    parser.add_argument(
        "--background-load",
        action="store_true",
        help="run the MLP case's auto and recipe without and then with a busy background process (also: --only "
        "mlp-contended) and print the slowdown factors",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {_device_name(device)}, threads {torch.get_num_threads()}")
    if args.background_load or (args.only and "mlp-contended" in args.only):
        print(contended_mlp(device, args.repeats), flush=True)
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
