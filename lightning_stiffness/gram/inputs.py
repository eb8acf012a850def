"""Model inputs as a probe batch: a Tensor (``model(x)``), a tuple (``model(*x)``) or a
Mapping (``model(**x)``, e.g. Hugging Face ``input_ids`` + ``attention_mask``).

Tensors whose first dimension is the number of examples ``N`` are per-example and get sliced
or vmapped; anything else (flags, shared tensors) is passed through unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LossFn"]

LossFn = Callable[[Any, Tensor], Tensor]


@dataclass(frozen=True)
class ExampleBatch:
    """Inputs and targets of ``n`` examples, in whichever structure the model takes."""

    inputs: Any
    targets: Tensor
    n: int

    @classmethod
    def create(cls, inputs: Any, targets: Tensor) -> ExampleBatch:
        if not isinstance(targets, Tensor):
            raise TypeError(f"targets must be a torch.Tensor with one entry per example, got {type(targets).__name__}")
        if targets.dim() == 0:
            raise ValueError("targets must have one entry per example (shape (N, ...)), got a scalar tensor")
        n = int(targets.shape[0])
        if n == 0:
            raise ValueError("the probe batch is empty: pass at least one example")
        leading = _leading_sizes(inputs)
        if not leading:
            raise ValueError("inputs hold no tensor: pass a Tensor, a tuple of tensors or a Mapping of tensors")
        if n not in leading:
            raise ValueError(
                f"inputs and targets disagree on the number of examples: targets have N={n}, "
                f"input tensors have leading sizes {sorted(set(leading))}; the first dimension of "
                "per-example inputs must be the example axis"
            )
        return cls(inputs, targets, n)

    def map_tensors(self, fn: Callable[[Tensor], Tensor]) -> ExampleBatch:
        """Apply ``fn`` to every tensor (inputs and targets)."""
        return ExampleBatch(_map(self.inputs, fn), fn(self.targets), self.n)

    def rows(self, start: int, stop: int) -> ExampleBatch:
        n = self.n
        stop = min(stop, n)
        sliced = _map(self.inputs, lambda t: t[start:stop] if _is_per_example(t, n) else t)
        return ExampleBatch(sliced, self.targets[start:stop], stop - start)

    def in_dims(self) -> Any:
        """``vmap`` ``in_dims`` for ``inputs``: 0 for per-example tensors, ``None`` otherwise."""
        n = self.n
        return _map_any(self.inputs, lambda t: 0 if _is_per_example(t, n) else None)

    def device(self) -> torch.device | None:
        for t in _tensors(self.inputs):
            return t.device
        return None


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` with ``inputs`` as the probe batch structure says."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def default_loss(outputs: Any, targets: Tensor) -> Tensor:
    """Per-example cross-entropy on logits (``outputs`` or ``outputs.logits`` / ``outputs[0]``).

    Extra dimensions (e.g. per-token classification) are summed per example.
    """
    logits = _logits(outputs)
    loss = F.cross_entropy(logits, targets, reduction="none")
    return loss.reshape(loss.shape[0], -1).sum(dim=1) if loss.dim() > 1 else loss


def per_example_losses(loss_fn: LossFn | None, outputs: Any, targets: Tensor, n: int) -> Tensor:
    """Evaluate the loss and check it returns one finite-shaped loss per example."""
    loss = (loss_fn or default_loss)(outputs, targets)
    if not isinstance(loss, Tensor):
        raise TypeError(f"loss_fn must return a Tensor of per-example losses, got {type(loss).__name__}")
    if loss.dim() == 0:
        raise ValueError(
            "loss_fn returned a scalar: it must return per-example losses of shape (N,), e.g. "
            "F.cross_entropy(logits, y, reduction='none')"
        )
    if loss.shape[0] != n or loss.numel() != n:
        raise ValueError(f"loss_fn must return per-example losses of shape ({n},), got shape {tuple(loss.shape)}")
    return loss.reshape(n)


def is_hf_model(model: nn.Module) -> bool:
    return any(cls.__name__ == "PreTrainedModel" for cls in type(model).__mro__)


#: Hugging Face ``transformers`` functions that only decide whether an attention mask may be skipped
#: (an optimisation) or whether to warn; they read mask or token values in Python control flow, which
#: ``vmap`` cannot do. Under ``vmap`` they are replaced by their conservative answer.
_HF_SKIP_CHECKS = (
    ("transformers.masking_utils", None, "_ignore_causal_mask_sdpa", False),
    ("transformers.masking_utils", None, "_ignore_bidirectional_mask_sdpa", False),
    ("transformers.modeling_utils", "PreTrainedModel", "warn_if_padding_and_no_attention_mask", None),
)


@contextmanager
def hf_vmap_mask_checks(model: nn.Module) -> Iterator[None]:
    """Let a Hugging Face model build its own attention masks under ``vmap``.

    Transformers turns the 2-D 0/1 ``attention_mask`` into the attention bias each layer needs
    (causal ∧ padding for decoders, sliding windows, bidirectional padding for encoders, encoder
    padding for cross-attention). Before building it, it asks whether the mask may be dropped
    altogether (``padding_mask.all()``: no padding, so SDPA's ``is_causal`` or no bias gives the
    same attention) — a data-dependent branch that ``vmap`` rejects. Answering "do not skip"
    always builds the full mask, which is the same attention, so the vmapped model computes exactly
    what the unbatched model computes for each example. The one-time "input_ids look padded"
    warning check is turned off for the same reason. Everything is restored on exit. A model that
    still branches on data raises a ``RuntimeError`` saying so (``auto`` then uses the loop).

    Passing a 4-D mask instead is not equivalent: transformers treats a 4-D mask as the complete
    mask, so decoders would lose their causal mask.
    """
    if not any(is_hf_model(m) for m in model.modules()):  # the model or a wrapped one (LightningModule)
        yield
        return
    saved = []
    for module_name, class_name, attr, answer in _HF_SKIP_CHECKS:
        owner = _optional_attr(module_name, class_name)
        if owner is None or not hasattr(owner, attr):
            continue
        saved.append((owner, attr, vars(owner).get(attr)))  # None: inherited, delete on exit
        setattr(owner, attr, _constant(answer))
    try:
        yield
    except RuntimeError as err:
        if "data-dependent control flow" not in str(err):
            raise
        raise RuntimeError(
            f"{type(model).__name__} branches on tensor values in Python (data-dependent control flow), "
            "which torch.func.vmap cannot batch, so its per-example masks cannot be built under vmap; "
            "use method='auto' (falls back to the exact per-example loop) or method='loop'"
        ) from err
    finally:
        for owner, attr, original in reversed(saved):
            if original is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)


def _constant(answer: Any) -> Callable[..., Any]:
    def check(*args: Any, **kwargs: Any) -> Any:
        return answer

    return check


def _optional_attr(module_name: str, class_name: str | None) -> Any:
    """``module_name`` (or its ``class_name``) when the module is already imported, else ``None``."""
    module = sys.modules.get(module_name)
    if module is None or class_name is None:
        return module
    return getattr(module, class_name, None)


def _logits(outputs: Any) -> Tensor:
    if isinstance(outputs, Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], Tensor):
        candidates = [k for k, t in enumerate(outputs) if isinstance(t, Tensor) and t.dim() >= 2]
        if len(candidates) > 1:
            raise TypeError(
                f"the model returns a {type(outputs).__name__} of {len(outputs)} outputs, and {len(candidates)} of "
                f"them (positions {candidates}) could be logits; the default loss would take the first, which may "
                "be features. Pass loss_fn=lambda outputs, targets: F.cross_entropy(outputs[K], targets, "
                "reduction='none') with K the position of the logits."
            )
        return outputs[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(outputs).__name__}; pass "
        "loss_fn=callable(outputs, targets) -> per-example losses"
    )


def _is_per_example(t: Tensor, n: int) -> bool:
    return t.dim() > 0 and t.shape[0] == n


def _tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _leading_sizes(obj: Any) -> list[int]:
    return [int(t.shape[0]) for t in _tensors(obj) if t.dim() > 0]


def _map(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_map(v, fn) for v in obj)
    if isinstance(obj, list):
        return [_map(v, fn) for v in obj]
    return obj


def _map_any(obj: Any, fn: Callable[[Tensor], Any]) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map_any(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_any(v, fn) for v in obj)
    return None
