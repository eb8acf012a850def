"""Public entry points: :func:`per_example_gram` and :func:`per_example_gram_blocks`."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_stiffness.gram.compiled import eager_submodules
from lightning_stiffness.gram.context import measurement_mode
from lightning_stiffness.gram.hooks import (
    GramAccumulator,
    LayerPath,
    add_rows_gram,
    hooks_gram,
    rows_gram_with_fallback,
)
from lightning_stiffness.gram.inputs import ExampleBatch, LossFn
from lightning_stiffness.gram.reference import loop_rows, vmap_rows
from lightning_stiffness.gram.sharding import check_not_flat, clean_name, is_sharded

__all__ = ["GramResult", "Method", "per_example_gram", "per_example_gram_blocks", "select_parameters", "unwrap_model"]

Method = Literal["auto", "hooks", "vmap", "loop"]
METHODS = ("auto", "hooks", "vmap", "loop")

#: Default temporary-memory budget on the CPU (bytes); on CUDA half the free memory is used.
CPU_MEMORY_BUDGET = 4 * 2**30


@dataclass
class GramResult:
    """The Gram ``G[i, j] = g_i · g_j`` and how it was computed.

    Attributes:
        gram: ``(N, N)`` symmetric matrix, float32 (float64 for float64 models).
        blocks: per owning module, ``G = Σ_blocks blocks[name]`` (empty unless requested).
        paths: per parameter, the exact path taken: ``ghost`` (kernel trick),
            ``materialize``, ``dense`` (small per-example gradients), ``unused`` (no path to the
            loss: zero gradient), ``fallback-vmap``, ``fallback-loop``, ``vmap`` or ``loop``.
        method: the method that ran (``kernel``, ``vmap`` or ``loop``).
        nonfinite_examples: number of examples whose gradient is not finite.
    """

    gram: Tensor
    blocks: dict[str, Tensor]
    paths: dict[str, str]
    method: str
    nonfinite_examples: int


def per_example_gram(
    model: nn.Module,
    inputs: Any,
    targets: Tensor,
    *,
    loss_fn: LossFn | None = None,
    method: Method = "auto",
    params: Any = None,
    memory_budget: float | None = None,
    layer_path: LayerPath = "auto",
) -> Tensor:
    """Exact Gram matrix of per-example loss gradients, ``G[i, j] = g_i · g_j`` with
    ``g_i = ∇_W loss(f_W(x_i), y_i)`` (Fort et al. 2019, Eq. 1-4).

    Args:
        model: the network; evaluated in eval mode (dropout off, BatchNorm running statistics),
            every module's ``training`` flag is restored afterwards.
        inputs: a Tensor (``model(inputs)``), a tuple (``model(*inputs)``) or a Mapping
            (``model(**inputs)``); tensors with leading size N are per-example.
        targets: ``(N, ...)`` targets passed to ``loss_fn``.
        loss_fn: ``callable(outputs, targets) -> (N,)`` per-example losses. Default:
            cross-entropy on logits (``outputs`` or ``outputs.logits``).
        method: ``"hooks"`` (hooks + per-layer kernel trick or materialised gradients),
            ``"vmap"`` (torch.func), ``"loop"`` (one backward per example, the reference) or
            ``"auto"``. ``kernel`` and ``auto`` both send parameters no layer rule covers to an exact
            ``vmap``/``loop`` fallback; ``auto`` also redoes the whole Gram with ``vmap`` (then
            ``loop``) when the capture pass itself fails, where ``kernel`` raises.
        params: restrict to these parameters: names (parameter or module names), Parameters
            or Modules. Default: every parameter with ``requires_grad=True``.
        memory_budget: bytes of temporaries allowed for tiling (default: half the free CUDA
            memory, or 4 GiB on the CPU).
        layer_path: force ``"kernel_trick"`` or ``"materialize"`` for every Kronecker layer
            (tests and benchmarks); ``"auto"`` uses the cost model.

    Returns:
        ``(N, N)`` symmetric tensor on the model's device.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_stiffness import per_example_gram
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
        >>> G = per_example_gram(model, x, y)
        >>> G.shape, bool(torch.allclose(G, G.T))
        (torch.Size([5, 5]), True)
    """
    return per_example_gram_blocks(
        model,
        inputs,
        targets,
        loss_fn=loss_fn,
        method=method,
        params=params,
        memory_budget=memory_budget,
        layer_path=layer_path,
        return_blocks=False,
    ).gram


def per_example_gram_blocks(
    model: nn.Module,
    inputs: Any,
    targets: Tensor,
    *,
    loss_fn: LossFn | None = None,
    method: Method = "auto",
    params: Any = None,
    memory_budget: float | None = None,
    layer_path: LayerPath = "auto",
    return_blocks: bool = True,
) -> GramResult:
    """Like :func:`per_example_gram`, also returning one Gram per module that owns parameters
    (``G = Σ_layer G_layer``, for layer-wise stiffness) and the path taken per parameter."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if layer_path not in ("auto", "kernel_trick", "materialize"):
        raise ValueError(f"layer_path must be 'auto', 'kernel_trick' or 'materialize', got {layer_path!r}")
    model = unwrap_model(model)
    selected = select_parameters(model, params)
    check_example_independence(model)
    first = next(iter(selected.values()))
    device = first.device
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in selected.values()) else torch.float32
    budget = float(memory_budget) if memory_budget is not None else default_memory_budget(device)

    with measurement_mode(model, device), eager_submodules(model):
        batch = ExampleBatch.create(inputs, targets).map_tensors(lambda t: t.detach().clone().to(device))
        acc = GramAccumulator(torch.zeros(batch.n, batch.n, dtype=dtype, device=device), keep_blocks=return_blocks)
        ran = _run(method, model, selected, batch, loss_fn, acc, budget, layer_path)
        acc.finish()
    gram = acc.gram
    # a non-finite g_i spoils its whole row and column; its own squared norm G_ii names it
    nonfinite = int((~torch.isfinite(torch.diagonal(gram))).sum())
    if nonfinite:
        warnings.warn(
            f"per_example_gram: the gradients of {nonfinite} of {batch.n} examples are not finite "
            "(inf/nan losses or activations); their rows of the Gram are not finite. Check the "
            "model's numerics or the inputs of those examples.",
            RuntimeWarning,
            stacklevel=2,
        )
    return GramResult(gram, acc.blocks, acc.paths, ran, nonfinite)


def _run(
    method: str,
    model: nn.Module,
    selected: dict[str, nn.Parameter],
    batch: ExampleBatch,
    loss_fn: LossFn | None,
    acc: GramAccumulator,
    budget: float,
    layer_path: LayerPath,
) -> str:
    if method == "hooks":
        hooks_gram(model, selected, batch, loss_fn, acc, budget, layer_path)
        return "hooks"
    if method == "auto":
        try:
            hooks_gram(model, selected, batch, loss_fn, acc, budget, layer_path)
            return "hooks"
        except (RuntimeError, TypeError, NotImplementedError) as err:
            if is_sharded(model, selected.values()):
                raise  # vmap needs whole parameters; never start it on shards
            # the capture pass itself failed (e.g. a forward that breaks under hooks): start over
            acc.gram.zero_()
            acc.blocks.clear()
            acc.paths.clear()
            warnings.warn(
                f"per_example_gram: the kernel engine failed ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200] if str(err) else ''}); using vmap for the whole model",
                RuntimeWarning,
                stacklevel=3,
            )
        used = rows_gram_with_fallback(model, selected, batch, loss_fn, acc, budget)
        for name in selected:
            acc.paths[name] = used
        return used
    rows = (vmap_rows if method == "vmap" else loop_rows)(model, selected, batch, loss_fn)
    add_rows_gram(acc, selected, rows, budget)
    for name in selected:
        acc.paths[name] = method
    return method


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module to differentiate: unwrap ``torch.compile`` and (F)DDP-style ``.module`` wrappers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module) and type(model).__name__ in ("DistributedDataParallel", "DataParallel"):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def select_parameters(model: nn.Module, params: Any = None) -> dict[str, nn.Parameter]:
    """Resolve ``params`` (None, names, Parameters, Modules) to ``{name: parameter}``.

    Names are without wrapper segments (``_fsdp_wrapped_module.`` …), so they read the same with
    and without FSDP1 or activation checkpointing, and users select by the names they know."""
    named = {clean_name(k): p for k, p in model.named_parameters()}
    selected: dict[str, nn.Parameter]
    if params is None:
        selected = {k: p for k, p in named.items() if p.requires_grad}
        if not selected:
            raise ValueError(
                "the model has no trainable parameters (requires_grad=True): nothing to differentiate; "
                "unfreeze some parameters or pass params=[...]"
            )
        check_not_flat(selected)
        return selected
    items = [params] if isinstance(params, (str, nn.Module, nn.Parameter)) else list(_iterable(params))
    by_id = {id(p): k for k, p in named.items()}
    modules = {clean_name(k) for k, _ in model.named_modules()}
    selected = {}
    for item in items:
        if isinstance(item, str):
            if item in named:
                selected[item] = named[item]
            elif item in modules:
                prefix = f"{item}." if item else ""
                selected.update({k: p for k, p in named.items() if k.startswith(prefix)})
            else:
                raise ValueError(f"params: {item!r} is neither a parameter nor a module name of the model")
        elif isinstance(item, nn.Parameter):
            if id(item) not in by_id:
                raise ValueError("params: a Parameter that does not belong to the model was given")
            selected[by_id[id(item)]] = item
        elif isinstance(item, nn.Module):
            for p in item.parameters():
                if id(p) not in by_id:
                    raise ValueError("params: a Module that is not part of the model was given")
                selected[by_id[id(p)]] = p
        else:
            raise TypeError(f"params: expected names, Parameters or Modules, got {type(item).__name__}")
    if not selected:
        raise ValueError("params selected no parameter")
    frozen = [k for k, p in selected.items() if not p.requires_grad]
    if frozen:
        raise ValueError(f"params: {frozen[:3]} have requires_grad=False; unfreeze them or leave them out")
    check_not_flat(selected)
    return dict(sorted(selected.items(), key=lambda kv: list(named).index(kv[0])))


def check_example_independence(model: nn.Module) -> None:
    """Raise when a module's eval-mode forward mixes examples, so per-example gradients are
    not defined by the batch computation (BatchNorm without running statistics)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
            raise ValueError(
                f"module {name!r} ({type(module).__name__}) has track_running_stats=False, so even in eval "
                "mode it normalises with batch statistics and examples influence each other's gradients. "
                "Use track_running_stats=True, or GroupNorm/LayerNorm, to measure per-example gradients."
            )


def default_memory_budget(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.5 * free
    return float(CPU_MEMORY_BUDGET)


def _iterable(params: Any) -> Iterable[Any]:
    if isinstance(params, Iterable):
        return params
    raise TypeError(f"params must be names, Parameters or Modules, got {type(params).__name__}")
