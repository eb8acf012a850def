"""``method="auto"``: the hooks path, or the whole model's ``vmap`` where a one-time trial timed it
faster (the choice per model and call signature, its trial state and its clock)."""

from __future__ import annotations

import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_stiffness.gram.capture import record_shapes
from lightning_stiffness.gram.cost import AutoPlan, ModelCost, model_cost, plan_auto
from lightning_stiffness.gram.hooks import (
    GramAccumulator,
    LayerPath,
    add_rows_gram,
    hooks_gram,
    rows_gram_with_fallback,
)
from lightning_stiffness.gram.inputs import ExampleBatch, LossFn, _map_any, call_model
from lightning_stiffness.gram.reference import vmap_rows
from lightning_stiffness.gram.sharding import is_sharded

__all__ = ["TRIAL_CALLS", "TRIAL_RUNS", "run_auto"]


def _run_kernel_or_rows(
    model: nn.Module,
    selected: dict[str, nn.Parameter],
    batch: ExampleBatch,
    loss_fn: LossFn | None,
    acc: GramAccumulator,
    budget: float,
    layer_path: LayerPath,
) -> str:
    """The hooks path; when its capture pass itself fails, the whole Gram by ``vmap`` (then the loop)."""
    try:
        hooks_gram(model, selected, batch, loss_fn, acc, budget, layer_path)
        return "hooks"
    except (RuntimeError, TypeError, NotImplementedError) as err:
        if is_sharded(model, selected.values()):
            raise  # vmap needs whole parameters; never start it on shards
        _reset(acc)  # the capture pass itself failed (e.g. a forward that breaks under hooks): start over
        warnings.warn(
            f"per_example_gram: the hook engine failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else ''}); using vmap for the whole model",
            RuntimeWarning,
            stacklevel=3,
        )
    used = rows_gram_with_fallback(model, selected, batch, loss_fn, acc, budget)
    for name in selected:
        acc.paths[name] = used
    return used


#: Timed runs of each method in ``auto``'s trial; the first of each is cold (one-time costs).
TRIAL_RUNS = 3
#: Calls that make up the trial: kernel, vmap, kernel, vmap, kernel, vmap.
TRIAL_CALLS = 2 * TRIAL_RUNS


@dataclass
class _Trial:
    """A decision in progress: CPU seconds of each method's runs so far."""

    kernel: list[float] = field(default_factory=list)
    vmap: list[float] = field(default_factory=list)

    def next_method(self) -> str:
        return "hooks" if len(self.kernel) <= len(self.vmap) else "vmap"

    def add(self, method: str, seconds: float) -> str | _Trial:
        """Record a run; the decision once both methods ran :data:`TRIAL_RUNS` times (fastest
        run against fastest run, so one slow first run does not decide), else the trial."""
        (self.kernel if method == "hooks" else self.vmap).append(seconds)
        if len(self.vmap) < TRIAL_RUNS:
            return self
        return "vmap" if min(self.vmap) < min(self.kernel) else "hooks"


#: Per model (weakly held): per call signature, the method ``auto`` settled on, or its trial.
_AUTO_CHOICES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], str | _Trial]] = weakref.WeakKeyDictionary()
#: The trial's clock: wall-clock seconds, what the user waits for. (CPU seconds of the process
#: favoured the method that uses fewer threads: on the tiny BERT the hooks path, 15% slower in
#: wall-clock than the whole-model vmap, whose large GEMMs keep both cores busy.) Against other
#: processes the trial keeps each method's fastest of :data:`TRIAL_RUNS` runs. A module
#: attribute so tests can replace it.
_clock: Callable[[], float] = time.perf_counter


def run_auto(
    model: nn.Module,
    selected: dict[str, nn.Parameter],
    batch: ExampleBatch,
    loss_fn: LossFn | None,
    acc: GramAccumulator,
    budget: float,
    layer_path: LayerPath,
) -> str:
    """``auto``: the hooks path, or the whole model's ``vmap`` where that is the faster exact method.

    Where :func:`~lightning_stiffness.gram.cost.plan_auto` says ``vmap`` may win, the first
    calls with a given model, parameter selection and probe shape alternate between the kernel
    path and the whole model's ``vmap`` (:data:`TRIAL_CALLS` calls, each timed by the wall
    clock); later calls run
    the faster (docs/performance.md "How `auto` chooses"). Every call computes one Gram by one
    exact method, so the trial costs no extra work, and the choice changes the time, not the Gram."""
    key = _call_signature(selected, batch, budget, acc.keep_blocks, layer_path)
    choices = _AUTO_CHOICES.setdefault(model, {})
    state = choices.get(key)
    if state is None:
        plan = "hooks" if layer_path != "auto" else _plan(model, selected, batch, budget)
        state = choices[key] = _Trial() if plan == "trial" else "hooks"
    if state == "hooks":
        return _run_kernel_or_rows(model, selected, batch, loss_fn, acc, budget, layer_path)
    if isinstance(state, _Trial) and state.next_method() == "hooks":
        start = _clock()
        ran = _run_kernel_or_rows(model, selected, batch, loss_fn, acc, budget, layer_path)
        choices[key] = state.add("hooks", _clock() - start)
        if ran != "hooks" or "fallback-loop" in acc.paths.values():
            choices[key] = "hooks"  # the hooks path needed the loop: vmap cannot run this model
        return ran
    start = _clock()
    try:
        add_rows_gram(acc, selected, vmap_rows(model, selected, batch, loss_fn), budget)
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        choices[key] = "hooks"  # vmap cannot run this model (or no longer can)
        _reset(acc)
        return _run_kernel_or_rows(model, selected, batch, loss_fn, acc, budget, layer_path)
    if isinstance(state, _Trial):
        choices[key] = state.add("vmap", _clock() - start)
    for name in selected:
        acc.paths[name] = "vmap"
    return "vmap"


def _plan(model: nn.Module, selected: dict[str, nn.Parameter], batch: ExampleBatch, budget: float) -> AutoPlan:
    """:func:`plan_auto` from the shapes of a one-example forward (no gradients)."""
    if is_sharded(model, selected.values()):
        return "hooks"
    cost = _model_cost(model, selected, batch)
    return plan_auto(cost, budget, sharded=False) if cost is not None else "hooks"


def _model_cost(model: nn.Module, selected: dict[str, nn.Parameter], batch: ExampleBatch) -> ModelCost | None:
    """The whole-model cost estimate, or ``None`` when the one-example forward fails."""
    owner: dict[int, str] = {}
    modules: dict[str, nn.Module] = {}
    for mname, module in model.named_modules():
        for p in module._parameters.values():
            if p is not None and id(p) not in owner:
                owner[id(p)] = mname
                modules[mname] = module
    numels: dict[str, int] = {}
    for p in selected.values():
        name = owner.get(id(p), "")
        numels[name] = numels.get(name, 0) + p.numel()
    traced = {k: m for k, m in modules.items() if k in numels}
    try:
        with torch.no_grad(), record_shapes(traced) as shapes:
            call_model(model, batch.rows(0, 1).inputs)
    except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError):
        return None
    return model_cost(traced, shapes, numels, batch.n)


def _call_signature(
    selected: dict[str, nn.Parameter], batch: ExampleBatch, budget: float, blocks: bool, layer_path: str
) -> tuple[Any, ...]:
    """What the cost of a call depends on besides the model: parameters, probe shapes, settings."""
    shapes = repr(_map_any(batch.inputs, lambda t: (tuple(t.shape), t.dtype, t.device)))
    params = tuple((k, tuple(p.shape), p.dtype) for k, p in selected.items())
    return params, shapes, tuple(batch.targets.shape), budget, blocks, layer_path


def _reset(acc: GramAccumulator) -> None:
    acc.gram.zero_()
    acc.blocks.clear()
    acc.paths.clear()
