"""The side-effect-free measurement context used by every Gram method.

Inside :func:`probe_mode` the model is in eval mode (dropout off, BatchNorm running
statistics), autocast and TF32 are off (exact float32), gradients are enabled even when the
caller is in ``torch.inference_mode`` or ``no_grad`` (Lightning validation hooks), and the
global RNG streams are forked. On exit — also on error — every module's ``training`` flag, the
TF32 switches and the RNG state are restored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn


@contextmanager
def probe_mode(model: nn.Module, device: torch.device) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
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
            model.eval()
            yield
        finally:
            for module, training in flags:
                module.training = training
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
