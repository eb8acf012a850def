"""The side-effect-free measurement context used by every Gram method.

Inside :func:`measurement_mode` the model is in eval mode (dropout off, BatchNorm running
statistics), autocast and TF32 are off (exact float32), gradients are enabled even when the
caller is in ``torch.inference_mode`` or ``no_grad`` (Lightning validation hooks), and the
global RNG streams are forked. On exit — also on error — every module's ``training`` flag, the
TF32 switches and the RNG state are restored.

Some forwards write to their own parameters: ``nn.Embedding(max_norm=...)`` renormalises the rows
it looks up, in place. The probe's forward must not change the model being trained, so those
weights are restored afterwards; any other parameter changed in place is reported.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

__all__: list[str] = []  # internal to the package: no public names


@contextmanager
def measurement_mode(model: nn.Module, device: torch.device) -> Iterator[None]:
    with _probe_settings(device), eval_mode(model), _parameters_kept(model):
        yield


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` inside the block; afterwards — also on error — every module gets back its
    own ``training`` flag (a module may have been in a different mode than its parent)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in flags:
            module.training = training


@contextmanager
def _probe_settings(device: torch.device) -> Iterator[None]:
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with ExitStack() as stack:
        cuda_devices = [device] if device.type == "cuda" else []
        stack.enter_context(torch.random.fork_rng(devices=cuda_devices))
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        for device_type in {"cpu", device.type}:
            if device_type in ("cpu", "cuda"):
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@contextmanager
def _parameters_kept(model: nn.Module) -> Iterator[None]:
    """Restore the weights of ``max_norm`` embeddings (renormalised in place by their forward) and
    warn about any other parameter the forward changed in place."""
    renormed: list[torch.Tensor] = [
        weight
        for m in model.modules()
        if getattr(m, "max_norm", None) is not None and isinstance(weight := getattr(m, "weight", None), torch.Tensor)
    ]
    saved = [w.detach().clone() for w in renormed]
    versions = {name: p._version for name, p in model.named_parameters()}
    try:
        yield
    finally:
        restored = {id(w) for w in renormed}
        changed = [
            name
            for name, p in model.named_parameters()
            if id(p) not in restored and p._version != versions.get(name, p._version)
        ]
        with torch.no_grad():
            for weight, value in zip(renormed, saved):
                weight.copy_(value)
        if changed:
            warnings.warn(
                f"the model's forward changed parameters {changed[:3]} in place while computing the Gram; "
                "training sees the changed values. Avoid in-place writes to parameters in forward.",
                RuntimeWarning,
                stacklevel=4,
            )
