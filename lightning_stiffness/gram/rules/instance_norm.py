"""Affine ``nn.InstanceNorm1d/2d/3d``: ``y = γ_c x̂ + β_c``, ``x̂`` normalised per example and channel.

In eval mode ``x̂`` uses the example's own statistics, or the running statistics when the module
tracks them; either way it depends on that example alone. ``∂ℓ_n/∂γ_c = Σ b_n ⊙ x̂_n`` and
``∂ℓ_n/∂β_c = Σ b_n`` over the positions of channel ``c``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule
from lightning_stiffness.gram.rules.norm import _affine_grads

__all__: list[str] = []  # rules register themselves; nothing here is imported by users


@register_rule(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
class InstanceNormRule(LayerRule):
    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        assert isinstance(module, nn.modules.instancenorm._InstanceNorm)
        if inp.dim() != module._get_no_batch_dim() + 1:
            raise RuntimeError(f"{type(module).__name__} rule: unbatched input of shape {tuple(inp.shape)}")
        use_running = module.track_running_stats and not module.training
        normed = F.instance_norm(
            inp,
            module.running_mean if use_running else None,
            module.running_var if use_running else None,
            use_input_stats=not use_running,
            momentum=0.0,
            eps=module.eps,
        )
        return _affine_grads(module, normed, grad_out, [1])
