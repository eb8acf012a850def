"""The MLP case under CPU contention: a busy background process, and the slowdown it causes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lightning_stiffness.bench.cases import mlp_case
from lightning_stiffness.bench.timing import _ms, measure, torch_func_recipe
from lightning_stiffness.gram import per_example_gram

__all__ = ["background_load", "contended_mlp"]


#: The background load: a training-like loop of float32 matrix products on all cores, ended by
#: its own deadline even if this process dies.
BUSY_SCRIPT = (
    "import time, torch\n"
    "a = torch.randn(512, 512)\n"
    "end = time.monotonic() + {seconds}\n"
    "while time.monotonic() < end:\n"
    "    a = torch.tanh(a @ a) \n"
)


@contextmanager
def background_load(seconds: float) -> Iterator[None]:
    """A busy subprocess (matrix products on all cores, like a second training job or data-loader
    workers) for at most ``seconds``; killed when the block ends."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", BUSY_SCRIPT.format(seconds=seconds)])
    try:
        time.sleep(1.0)  # let it start and take the cores
        yield
    finally:
        proc.kill()
        proc.wait()


def contended_mlp(device: torch.device, repeats: int) -> str:
    """The MLP case's ``auto`` and ``recipe`` without, then with, :func:`background_load`, and
    the slowdown factor ``loaded / idle`` of each; ``auto-nolimit`` is ``auto`` with the thread
    limit under load switched off (``LIGHTNING_STIFFNESS_GRAM_THREADS=0``)."""
    case = mlp_case(512, device, 512)
    model, x, y = case.model.eval(), case.inputs, case.targets
    methods: dict[str, Callable[[], Tensor | None]] = {
        "auto": lambda: per_example_gram(model, x, y, method="auto"),
        "auto-nolimit": lambda: _auto_with_user_threads(model, x, y),
        "recipe": lambda: torch_func_recipe(model, x, y),
    }
    idle = {k: measure(fn, device, repeats).seconds for k, fn in methods.items()}
    with background_load(seconds=120.0):
        loaded = {k: measure(fn, device, repeats).seconds for k, fn in methods.items()}
    lines = [f"\n{case.name}, N=512, without and with a busy background process"]
    lines.append(f"  {'method':<12}{'idle':>11}{'loaded':>11}{'slowdown':>10}")
    for k in methods:
        lines.append(f"  {k:<12}{_ms(idle[k]):>11}{_ms(loaded[k]):>11}{loaded[k] / idle[k]:>9.1f}x")
    return "\n".join(lines)


def _auto_with_user_threads(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    from lightning_stiffness.gram.threads import THREADS_ENV

    before = os.environ.get(THREADS_ENV)
    os.environ[THREADS_ENV] = "0"
    try:
        return per_example_gram(model, x, y, method="auto")
    finally:
        if before is None:
            del os.environ[THREADS_ENV]
        else:
            os.environ[THREADS_ENV] = before
