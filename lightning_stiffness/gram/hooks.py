"""The ``hooks`` method: capture pass + per-layer rules + cost model, exact fallback for the rest.

``G = Σ_params G_param`` because different parameters are different coordinates of ``g``.
Parameters of modules with a layer rule get their ``G_param`` from the captured (input,
backprop) pairs; a parameter used several times (tied weights, a module called twice) sums
its uses *before* the Gram, so cross terms ``⟨g^u_n, g^v_m⟩`` are kept. Every other parameter
— no rule, used functionally outside its module, wrong example axis — goes to an exact
fallback (``vmap``, then the per-example loop) restricted to those parameters.

The example axis of every hooked call comes from the data, not from sizes: after the capture
pass one forward runs on the first example alone (:func:`other_batch`), recording only shapes;
the axis whose size follows the number of examples is the example axis
(``capture.example_axis``). A call with no such axis — its rows are shared by all examples —
sends its module's parameters to the fallback, with a warning that names it; a call whose
examples are on another axis than the first (time-first layers) has it moved to the front when
its rule allows (``LayerRule.example_axis_movable``), else it falls back too.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_stiffness.gram.capture import (
    OUTPUT_OVERWRITTEN,
    CallShapes,
    CaptureRecord,
    GraphKey,
    ModuleCall,
    capture_calls,
    count_parameter_uses,
    graph_key,
    record_shapes,
    resolve_example_axes,
)
from lightning_stiffness.gram.cost import choose_path
from lightning_stiffness.gram.factors import KroneckerTerm, materialize
from lightning_stiffness.gram.inputs import ExampleBatch, LossFn, call_model, per_example_losses
from lightning_stiffness.gram.reference import RowFn, loop_rows, vmap_rows
from lightning_stiffness.gram.rules import PerExampleGrad, find_rule
from lightning_stiffness.gram.rules.raw_parameter import RawCapture, capture_raw_parameters
from lightning_stiffness.gram.sharding import is_sharded
from lightning_stiffness.gram.tiling import add_dense_gram, add_kernel_trick_gram, add_materialized_gram, add_row_gram

LayerPath = Literal["auto", "kernel_trick", "materialize"]


@dataclass
class GramAccumulator:
    """The total Gram and, optionally, one Gram per owning module (``G = Σ_blocks G_block``)."""

    gram: Tensor
    keep_blocks: bool
    blocks: dict[str, Tensor] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)

    def target(self, block: str) -> Tensor:
        """Where a contribution to ``block`` is added (its own matrix when blocks are kept)."""
        if not self.keep_blocks:
            return self.gram
        if block not in self.blocks:
            self.blocks[block] = torch.zeros_like(self.gram)
        return self.blocks[block]

    def finish(self) -> None:
        if self.keep_blocks:
            for block in self.blocks.values():
                self.gram += block


def block_name(param_name: str) -> str:
    """The module that owns a parameter (``"layer1.0.conv1"``), or the name of a root parameter."""
    owner, _, _ = param_name.rpartition(".")
    return owner or param_name


def add_rows_gram(acc: GramAccumulator, params: dict[str, nn.Parameter], rows: RowFn, memory_budget: float) -> None:
    """Accumulate ``J Jᵀ`` from a row function over ``params`` — per block when blocks are kept,
    each block from its own columns of the same ``J`` tiles (computed once)."""
    width = sum(p.numel() for p in params.values())
    bytes_per_row = width * acc.gram.element_size()
    if not acc.keep_blocks:
        add_row_gram(acc.gram, rows, bytes_per_row, memory_budget)
        return
    columns: dict[str, list[Tensor]] = defaultdict(list)
    offset = 0
    for name, p in params.items():
        columns[block_name(name)].append(torch.arange(offset, offset + p.numel()))
        offset += p.numel()
    targets = [(acc.target(block), torch.cat(spans).to(acc.gram.device)) for block, spans in columns.items()]
    add_row_gram(acc.gram, rows, bytes_per_row, memory_budget, column_blocks=targets)


def _capture(
    model: nn.Module,
    hooked: dict[str, nn.Module],
    attributes: Mapping[str, set[str]],
    whole_call: dict[str, Any],
    raw_candidates: dict[str, nn.Parameter],
    batch: ExampleBatch,
    loss_fn: LossFn | None,
) -> tuple[CaptureRecord, RawCapture, Any, Tensor]:
    """The capture forward and the per-example losses. When a later op overwrote a hooked output
    in place (:meth:`CaptureRecord.overwritten`), those modules are remembered in
    :data:`OUTPUT_OVERWRITTEN` and the capture runs once more, adding zero tensors there."""
    for _ in range(2):
        with (
            capture_calls(hooked, batch.n, attributes, whole_call) as record,
            capture_raw_parameters(raw_candidates, batch.n) as raw,
        ):
            outputs = call_model(model, batch.inputs)
        losses = per_example_losses(loss_fn, outputs, batch.targets, batch.n)
        overwritten = record.overwritten()
        if not overwritten:
            return record, raw, outputs, losses
        OUTPUT_OVERWRITTEN.update(hooked[name] for name in overwritten)
    raise RuntimeError(f"per_example_gram: outputs of {overwritten} still overwritten in place with zeros added")


def hooks_gram(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batch: ExampleBatch,
    loss_fn: LossFn | None,
    acc: GramAccumulator,
    memory_budget: float,
    layer_path: LayerPath = "auto",
) -> None:
    """Add the exact Gram of ``params`` to ``acc`` by the hook engine (see module doc)."""
    owners = _owners(model, params)
    modules = dict(model.named_modules())
    owner_modules = {m for attrs in owners.values() for m, _ in attrs}
    hooked = {name: m for name, m in modules.items() if name in owner_modules and find_rule(m) is not None}
    attributes: defaultdict[str, set[str]] = defaultdict(set)
    for owner_attrs in owners.values():
        for m, attr in owner_attrs:
            attributes[m].add(attr)
    raw_candidates = {k: p for k, p in params.items() if _outside_rules(owners[k], hooked)}
    whole_call = {name: rule.call_problem for name, m in hooked.items() if (rule := find_rule(m)) and rule.whole_call}
    record, raw, outputs, losses = _capture(model, hooked, attributes, whole_call, raw_candidates, batch, loss_fn)
    uses = count_parameter_uses(losses.sum())

    covered, fallback, direct = _coverage(params, owners, modules, hooked, record, uses, raw, raw_candidates)
    calls_needed = {m for pname in covered for m, _ in covered[pname]}
    zs = [c.z for m in sorted(calls_needed) for c in record.calls[m] if uses[graph_key(c.z)] > 0]
    zs += raw.zs(direct, uses)
    backprops = dict(zip(map(id, zs), torch.autograd.grad(losses.sum(), zs))) if zs else {}
    del outputs, losses
    for pname in sorted(direct, key=list(params).index):
        uses_of_p: list[PerExampleGrad] = list(raw.per_example_grads(pname, backprops, acc.gram.dtype))
        acc.paths[pname] = _add_parameter_gram(acc.target(block_name(pname)), uses_of_p, memory_budget, "auto")

    # The shape trace runs after the backward: FSDP2 plans its backward prefetches from the order
    # of the forwards before it, and ranks whose backward stops at different layers must agree.
    other = other_batch(batch)
    pending = any(c.axis is None for calls in record.calls.values() for c in calls)
    # sharded models trace always: whether an axis is pending can differ between ranks, and the
    # trace's forward runs collectives that every rank must join
    if other is not None and (pending or is_sharded(model, params.values())):
        movable = {name: getattr(find_rule(m), "example_axis_movable", False) for name, m in hooked.items()}
        resolve_example_axes(record, trace_shapes(model, hooked, other), batch.n, other.n, movable)
    # calls whose example axis is unknown now send their parameters to the fallback
    covered, fallback, _ = _coverage(params, owners, modules, hooked, record, uses, raw, raw_candidates)
    del raw

    # Rule outputs are computed once per module and freed after its last parameter (unfolded
    # conv patches are large), so at most one layer's per-example factors are alive at a time.
    remaining: defaultdict[str, int] = defaultdict(int)
    for owner_attrs in covered.values():
        for m, _ in owner_attrs:
            remaining[m] += 1
    cache: dict[str, list[dict[str, PerExampleGrad]]] = {}
    for pname, owner_attrs in covered.items():
        parts: list[PerExampleGrad] = []
        for m, attr in owner_attrs:
            if m not in cache:
                cache[m] = _module_grads(hooked[m], record.calls[m], backprops, acc.gram.dtype)
            parts.extend(grads[attr] for grads in cache[m] if attr in grads)
        if not parts:  # the parameter reached the loss through its module, so its rule must cover it
            raise RuntimeError(f"the layer rule of {owner_attrs[0][0]!r} returned no gradient for {pname!r}")
        acc.paths[pname] = _add_parameter_gram(acc.target(block_name(pname)), parts, memory_budget, layer_path)
        for m, _ in owner_attrs:
            remaining[m] -= 1
            if remaining[m] == 0:
                cache.pop(m, None)

    if fallback:
        if is_sharded(model, params.values()):
            first = next(iter(fallback))
            raise RuntimeError(
                f"parameters {list(fallback)[:3]} are sharded (FSDP) and no layer rule covers them "
                f"({fallback[first]}); the exact fallback needs whole parameters. Restrict params= to "
                "layers with rules, or measure without sharding."
            )
        _warn_fallback(fallback)
        sub = {k: params[k] for k in params if k in fallback}
        used = rows_gram_with_fallback(model, sub, batch, loss_fn, acc, memory_budget)
        for k in sub:
            acc.paths[k] = f"fallback-{used}"


def rows_gram_with_fallback(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    batch: ExampleBatch,
    loss_fn: LossFn | None,
    acc: GramAccumulator,
    memory_budget: float,
) -> str:
    """``vmap`` rows, or the per-example loop when the model cannot be vmapped. Returns which."""
    snapshot = acc.gram.clone(), {k: v.clone() for k, v in acc.blocks.items()}
    try:
        add_rows_gram(acc, params, vmap_rows(model, params, batch, loss_fn), memory_budget)
        return "vmap"
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as err:
        acc.gram.copy_(snapshot[0])
        acc.blocks.clear()
        acc.blocks.update(snapshot[1])
        warnings.warn(
            f"torch.func.vmap failed on this model ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
            "using the exact but slower per-example loop instead",
            RuntimeWarning,
            stacklevel=3,
        )
        add_rows_gram(acc, params, loop_rows(model, params, batch, loss_fn), memory_budget)
        return "loop"


def other_batch(batch: ExampleBatch) -> ExampleBatch | None:
    """The batch of the shape-only trace: the first example alone (the cheapest forward), or
    ``None`` when ``N = 1`` — then every position of a call belongs to the one example."""
    return batch.rows(0, 1) if batch.n > 1 else None


def trace_shapes(model: nn.Module, hooked: dict[str, nn.Module], batch: ExampleBatch) -> dict[str, CallShapes] | str:
    """Input and output shapes of every call of ``hooked`` in a forward over ``batch`` (grad mode
    as in the capture pass, so the same code paths run), or why that forward failed."""
    with record_shapes(hooked) as shapes, _eager():
        try:
            call_model(model, batch.inputs)
        except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError) as err:
            return f"the forward with N={batch.n} example(s) that locates it failed ({type(err).__name__}: {err})"
    return shapes


def _eager() -> AbstractContextManager[Any]:
    """Run ``torch.compile``'d submodules eagerly (a recompiled graph did not always run the
    shape hooks); ``torch.compiler.set_stance`` exists from torch 2.6."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else nullcontext()


def _module_grads(
    module: nn.Module, calls: list, backprops: dict[int, Tensor], dtype: torch.dtype
) -> list[dict[str, PerExampleGrad]]:
    """The layer rule's per-example gradients for every call of ``module`` that reached the loss."""
    rule = find_rule(module)
    assert rule is not None
    return [rule.call_grads(module, call, backprops[id(call.z)], dtype) for call in calls if id(call.z) in backprops]


def _add_parameter_gram(out: Tensor, parts: list[PerExampleGrad], memory_budget: float, path: LayerPath) -> str:
    """Sum a parameter's uses, then add its Gram to ``out``. Returns the path taken."""
    terms = [t for part in parts if isinstance(part, list) for t in part]
    dense = [part for part in parts if isinstance(part, Tensor)]
    if dense:
        total = sum(d.reshape(d.shape[0], -1) for d in dense)
        assert isinstance(total, Tensor)
        if terms:
            total = total + materialize(terms, out.dtype)
        add_dense_gram(out, total)
        return "dense"
    if not terms:
        return "unused"
    chosen = choose_path(terms, out.shape[0], memory_budget) if path == "auto" else path
    if chosen == "kernel_trick":
        add_kernel_trick_gram(out, terms, memory_budget)
    else:
        add_materialized_gram(out, terms, memory_budget)
    return chosen


def _owners(model: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, list[tuple[str, str]]]:
    """For each selected parameter: every (module name, attribute) that holds it (tied weights)."""
    by_id = {id(p): name for name, p in params.items()}
    owners: dict[str, list[tuple[str, str]]] = {name: [] for name in params}
    seen: set[tuple[int, str]] = set()
    for mname, module in model.named_modules():  # a shared module instance is listed once
        for attr, p in module._parameters.items():
            if p is not None and id(p) in by_id and (id(module), attr) not in seen:
                seen.add((id(module), attr))
                owners[by_id[id(p)]].append((mname, attr))
    return _claim_nested(model, owners, by_id)


def _claim_nested(
    model: nn.Module, owners: dict[str, list[tuple[str, str]]], by_id: dict[int, str]
) -> dict[str, list[tuple[str, str]]]:
    """Give a parameter of a submodule to the enclosing module whose whole-call rule names it
    (``MultiheadAttention`` reads ``out_proj.weight`` without calling ``out_proj``)."""
    for mname, module in model.named_modules():
        rule = find_rule(module)
        if rule is None or not rule.whole_call:
            continue
        for dotted in (a for a in rule.parameter_names if "." in a):
            sub, _, attr = dotted.rpartition(".")
            p = getattr(module.get_submodule(sub), attr, None) if hasattr(module, sub.split(".")[0]) else None
            if isinstance(p, nn.Parameter) and id(p) in by_id:
                inner = f"{mname}.{sub}" if mname else sub
                pname = by_id[id(p)]
                owners[pname] = [o for o in owners[pname] if o != (inner, attr)] + [(mname, dotted)]
    return owners


def _coverage(
    params: dict[str, nn.Parameter],
    owners: dict[str, list[tuple[str, str]]],
    modules: dict[str, nn.Module],
    hooked: dict[str, nn.Module],
    record: CaptureRecord,
    uses: Counter[GraphKey],
    raw: RawCapture,
    raw_candidates: Mapping[str, nn.Parameter],
) -> tuple[dict[str, list[tuple[str, str]]], dict[str, str], set[str]]:
    """Split ``params`` into those the captured calls cover (→ their owners), those that need the
    fallback (→ why) and those used directly in a forward that the raw-parameter capture covers;
    unused parameters are in none."""
    covered: dict[str, list[tuple[str, str]]] = {}
    fallback: dict[str, str] = {}
    direct: set[str] = set()
    for pname, p in params.items():
        reason = _coverage_problem(p, owners[pname], modules, hooked, record.calls, record.problems, uses)
        if reason is None:
            covered[pname] = owners[pname]
        elif reason != "unused":
            direct_problem = raw.coverage_problem(pname, uses) if pname in raw_candidates else reason
            if direct_problem is None:
                direct.add(pname)
            else:
                fallback[pname] = reason if direct_problem == reason else f"{reason} ({direct_problem})"
    return covered, fallback, direct


def _outside_rules(owner_attrs: list[tuple[str, str]], hooked: dict[str, nn.Module]) -> bool:
    """Whether some module holding the parameter has no rule for it (so it is used directly in a
    ``forward``, a case for the raw-parameter capture)."""
    for mname, attr in owner_attrs:
        rule = find_rule(hooked[mname]) if mname in hooked else None
        if rule is None or attr not in rule.parameter_names:
            return True
    return False


def _coverage_problem(
    p: nn.Parameter,
    owner_attrs: list[tuple[str, str]],
    modules: dict[str, nn.Module],
    hooked: dict[str, nn.Module],
    calls: dict[str, list],
    problems: dict[str, str],
    uses: dict[GraphKey, int],
) -> str | None:
    """``None`` when the captured calls account for every use of ``p``; else why not."""
    # the tensors that stood for p in the graph: p itself and whatever its modules held while
    # running (FSDP's unsharded parameters)
    keys = {graph_key(p)} | {
        c.param_keys[attr] for m, attr in owner_attrs for c in calls.get(m, []) if attr in c.param_keys
    }
    total_uses = sum(uses.get(key, 0) for key in keys)
    if total_uses == 0:
        return "unused"
    captured = 0
    for mname, attr in owner_attrs:
        module = hooked.get(mname)
        if module is None:
            return f"{mname or '<root>'}: no layer rule for {type(modules[mname]).__name__}"
        if mname in problems:
            return f"{mname}: {problems[mname]}"
        rule = find_rule(module)
        reason = rule.unsupported_reason(module) if rule is not None else "no layer rule"
        if reason:
            return f"{mname}: {reason}"
        if rule is not None and attr not in rule.parameter_names:
            return f"{mname}: the {type(module).__name__} rule has no gradient for its parameter {attr!r}"
        captured += sum(_uses_in_call(c, attr) for c in calls[mname] if uses.get(graph_key(c.z), 0) > 0)
    if captured != total_uses:
        names = ", ".join(m or "<root>" for m, _ in owner_attrs)
        return f"{names}: parameter used {total_uses}x in the graph but {captured}x through its module's forward"
    return None


def _uses_in_call(call: ModuleCall, attr: str) -> int:
    """How often one captured call used the parameter: once for a layer-rule call, as counted in
    its own graph for a whole-call capture (an RNN's recurrent weight enters once per step)."""
    return 1 if call.local_uses is None else call.local_uses.get(attr, 0)


def _warn_fallback(fallback: dict[str, str]) -> None:
    reasons = sorted(set(fallback.values()))
    warnings.warn(
        "per_example_gram: no exact layer rule covers "
        f"{len(fallback)} parameter(s); they use the exact vmap/loop fallback (slower): " + "; ".join(reasons),
        RuntimeWarning,
        stacklevel=4,
    )


__all__ = ["GramAccumulator", "KroneckerTerm", "add_rows_gram", "block_name", "hooks_gram", "rows_gram_with_fallback"]
