"""How to call the user's module on the probe, found once by a dry forward of two examples.

Users' LightningModules come in many shapes: a ``forward(x)``, no ``forward`` at all with the
network in ``self.model``, dict batches such as ``{"image": x, "label": y}``, a ``forward(batch)``
that takes the whole dict. Before the first measurement the callback runs the measured module on
two probe examples (eval mode, no gradients, RNG untouched) and, when that fails, tries the
unambiguous alternatives:

* the inputs as given (``model(x)``, ``model(*x)``, ``model(**x)``);
* a dict holding a single tensor passed positionally (``model(batch["image"])``);
* a dict passed whole (``model(batch)``);
* with no ``module_attr`` given, the one child module for which one of the above works
  (``self.model``, ``self.net``, …).

What works is adopted and said once; if nothing or more than one child works, the callback
refuses at the start of training with the exact ``module_attr=`` / ``batch_adapter=`` line to
write. A structural failure is never retried at every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_stiffness.gram.context import measurement_mode
from lightning_stiffness.gram.inputs import ExampleBatch, LossFn, call_model, per_example_losses

__all__ = ["CallPlan", "ProbeStructureError", "find_call_plan"]

#: Examples used by the dry forward.
DRY_RUN_EXAMPLES = 2


class ProbeStructureError(ValueError):
    """The measured module cannot be called on the probe; the message says what to pass."""


@dataclass(frozen=True)
class CallPlan:
    """How the probe calls the module.

    Attributes:
        module_attr: the submodule to measure (``None``: the module itself).
        input_form: ``"as_is"``, ``"single_tensor"`` (the dict's one tensor, positionally) or
            ``"whole_dict"`` (``model(batch_dict)``).
        input_key: the dict key of ``single_tensor``.
        adapted: a sentence saying what was adopted (empty when the inputs worked as given).
    """

    module_attr: str | None
    input_form: str = "as_is"
    input_key: str | None = None
    adapted: str = ""

    def transform(self, inputs: Any) -> Any:
        """The probe inputs in the form the module is called with."""
        if self.input_form == "single_tensor":
            return inputs[self.input_key]
        if self.input_form == "whole_dict":
            return (inputs,)
        return inputs


def _input_forms(inputs: Any) -> list[CallPlan]:
    forms = [CallPlan(None)]
    if isinstance(inputs, Mapping):
        tensors = [k for k, v in inputs.items() if isinstance(v, Tensor)]
        if len(tensors) == 1 and len(inputs) == 1:
            forms.append(CallPlan(None, "single_tensor", tensors[0]))
        forms.append(CallPlan(None, "whole_dict"))
    return forms


class _LossProblem(Exception):
    """The forward ran, the loss on its outputs did not: no other way of calling helps."""


def _try(module: nn.Module, batch: ExampleBatch, plan: CallPlan, loss_fn: LossFn | None) -> str | None:
    """``None`` if the module runs on the two examples and the loss has one entry per example,
    else the forward's error (type and first line). A loss error raises :class:`_LossProblem`."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with torch.no_grad(), measurement_mode(module, device), torch.random.fork_rng(devices=[]):
        try:
            outputs = call_model(module, plan.transform(batch.inputs))
        except Exception as err:  # the user's code may raise anything
            return _first_line(err)
        try:
            per_example_losses(loss_fn, outputs, batch.targets, batch.n)
        except Exception as err:
            raise _LossProblem(_first_line(err)) from err
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"


def find_call_plan(
    root: nn.Module,
    module_attr: str | None,
    inputs: Any,
    targets: Tensor,
    loss_fn: LossFn | None,
    *,
    to_device: Callable[[Tensor], Tensor] | None = None,
    search_children: bool = True,
) -> CallPlan:
    """Find how to call ``root`` (or its ``module_attr`` submodule) on the probe.

    Raises :class:`ProbeStructureError` with the fix when no unambiguous way works.
    """
    batch = ExampleBatch.create(inputs, targets).rows(0, DRY_RUN_EXAMPLES)
    if to_device is not None:
        batch = batch.map_tensors(to_device)
    module = root.get_submodule(module_attr) if module_attr else root
    try:
        return _search(root, module, module_attr, batch, loss_fn, search_children)
    except _LossProblem as problem:
        hint = (
            " Pass loss_fn=lambda outputs, targets: per-example losses of shape (N,) (the default is cross-entropy "
            "on the logits, for integer class targets)."
            if loss_fn is None
            else ""
        )
        raise ProbeStructureError(
            f"the model runs on the probe, but the loss on its outputs fails: {problem}.{hint}"
        ) from problem


def _search(
    root: nn.Module,
    module: nn.Module,
    module_attr: str | None,
    batch: ExampleBatch,
    loss_fn: LossFn | None,
    search_children: bool,
) -> CallPlan:
    errors: list[str] = []
    for form in _input_forms(batch.inputs):
        error = _try(module, batch, form, loss_fn)
        if error is None:
            plan = CallPlan(module_attr, form.input_form, form.input_key)
            return _described(plan, root)
        errors.append(error)
    first_error = errors[0]
    if module_attr is None and search_children:
        working: list[CallPlan] = []
        for name, child in root.named_children():
            if not any(True for _ in child.parameters()):
                continue
            for form in _input_forms(batch.inputs):
                if _try(child, batch, form, loss_fn) is None:
                    working.append(CallPlan(name, form.input_form, form.input_key))
                    break
        if len(working) == 1:
            return _described(working[0], root)
        if len(working) > 1:
            names = [p.module_attr for p in working]
            raise ProbeStructureError(
                f"the module cannot be called on the probe inputs ({first_error}), and several of its children "
                f"can: {names}. Say which one to measure, e.g. StiffnessCallback(module_attr={names[0]!r})."
            )
    raise ProbeStructureError(_refusal(first_error, module_attr, batch.inputs, loss_fn))


def _described(plan: CallPlan, root: nn.Module) -> CallPlan:
    parts = []
    if plan.module_attr is not None:
        outside = _parameters_outside(root, plan.module_attr)
        parts.append(
            f"measuring the submodule {plan.module_attr!r} (module_attr={plan.module_attr!r})"
            + (f"; {outside} parameter tensors outside it are not measured" if outside else "")
        )
    if plan.input_form == "single_tensor":
        parts.append(f"calling it with batch[{plan.input_key!r}] (batch_adapter=lambda b: (b[{plan.input_key!r}], …))")
    elif plan.input_form == "whole_dict":
        parts.append("calling it with the whole input dict, model(batch)")
    if not parts:
        return plan
    return CallPlan(plan.module_attr, plan.input_form, plan.input_key, "; ".join(parts))


def _parameters_outside(root: nn.Module, module_attr: str) -> int:
    inside = {id(p) for p in root.get_submodule(module_attr).parameters()}
    return sum(1 for p in root.parameters() if id(p) not in inside and p.requires_grad)


def _refusal(error: str, module_attr: str | None, inputs: Any, loss_fn: LossFn | None) -> str:
    where = f"the submodule {module_attr!r}" if module_attr else "the module"
    lines = [f"{where} cannot be called on the probe inputs: {error}."]
    if isinstance(inputs, Mapping):
        keys = list(inputs)
        lines.append(
            f"The probe inputs are a dict with keys {keys} (the label key removed); the module is called as "
            "model(**inputs). Pass a batch_adapter that returns (model inputs, targets), e.g. "
            f"StiffnessCallback(batch_adapter=lambda b: (b[{keys[0]!r}], b['label'])),"
        )
    else:
        lines.append("Pass a batch_adapter=lambda batch: (model_inputs, targets) that matches the model's forward,")
    lines.append(
        "and/or module_attr='model' to measure the submodule that holds the network (when the LightningModule "
        "has no forward of its own)."
    )
    if loss_fn is None:
        lines.append(
            "If the forward works but the loss does not (regression targets, several outputs), pass "
            "loss_fn=lambda outputs, targets: per-example losses of shape (N,)."
        )
    return " ".join(lines)
