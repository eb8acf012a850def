"""``nn.Conv1d/2d/3d``: stride, padding (all modes, ``"same"``), dilation, groups, depthwise.

With the input's patches ``a_nt ∈ R^{C_in/G · k}`` at every output position ``t``, each group is
a Linear layer over positions: ``∂ℓ_n/∂W_g = Σ_t b_ntg ⊗ a_ntg`` and ``∂ℓ_n/∂c = Σ_t b_nt``.
The patches are a lazy factor (:class:`ConvPatches`): the kernel trick unfolds them; materialising
the per-example weight gradients takes one grouped convolution backward instead (from
:data:`GROUPED_BACKWARD_MIN_CHANNELS` input channels per group).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_stiffness.gram.factors import DenseFactor, KroneckerTerm
from lightning_stiffness.gram.rules.base import LayerRule, PerExampleGrad, register_rule

__all__ = ["ConvPatches", "ConvRule"]


def padded_input(x: Tensor, conv: nn.modules.conv._ConvNd) -> Tensor:
    """``x`` padded as ``conv`` pads it (its padding mode; ``"same"`` possibly asymmetric)."""
    pad = list(conv._reversed_padding_repeated_twice)
    if not any(pad):
        return x
    return F.pad(x, pad, mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)


def padded_size(size: Sequence[int], conv: nn.modules.conv._ConvNd) -> list[int]:
    """The spatial size of an input of spatial size ``size`` after :func:`padded_input`."""
    pad = conv._reversed_padding_repeated_twice  # last dimension first, (before, after)
    last = len(size) - 1
    return [int(s) + pad[2 * (last - d)] + pad[2 * (last - d) + 1] for d, s in enumerate(size)]


def output_size(padded: Sequence[int], conv: nn.modules.conv._ConvNd) -> list[int]:
    """The spatial size of ``conv``'s output for a padded input of spatial size ``padded``."""
    kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
    return [(size - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1 for d, size in enumerate(padded)]


def unfold_patches(x: Tensor, conv: nn.modules.conv._ConvNd) -> Tensor:
    """Patches of ``x`` as ``(N, T, C_in·k_1·…·k_d)``, in the layout of ``weight.flatten(1)``.

    After padding, patch element ``(c, j_1..j_d)`` at output position ``(o_1..o_d)`` is
    ``x[c, o_1·s_1 + j_1·δ_1, …]`` (stride ``s``, dilation ``δ``): one strided view of the padded
    input, copied once into ``(N, C_in·k, T)``. For any number of spatial dimensions, and on the
    CPU faster than ``F.unfold``'s im2col kernel (docs/performance.md).
    """
    spatial = x.dim() - 2
    x = padded_input(x, conv)
    kernel, stride, dilation = conv.kernel_size, conv.stride, conv.dilation
    n, channels, *size = x.shape
    out = output_size(size, conv)
    strides = x.stride()
    window = x.as_strided(
        (n, channels, *kernel, *out),
        (
            strides[0],
            strides[1],
            *[dilation[d] * strides[2 + d] for d in range(spatial)],
            *[stride[d] * strides[2 + d] for d in range(spatial)],
        ),
    )
    return window.reshape(n, channels * math.prod(kernel), math.prod(out)).transpose(1, 2)


#: Input channels per group from which :meth:`ConvPatches.outer_sum` takes the grouped convolution
#: backward; below it, unfolded patches and a batched GEMM were faster (3 channels: 4.8 against
#: 11.8 ms at N=256, 32x32; 16 channels: 18 against 3.1 ms at 16x16, on the 2-core CPU).
GROUPED_BACKWARD_MIN_CHANNELS = 8


@dataclass(frozen=True, eq=False)
class ConvPatches:
    """A convolution's input patches as a lazy factor
    (:class:`~lightning_stiffness.gram.factors.LazyFactor`): ``values`` unfolds them (for the
    kernel trick), while :meth:`outer_sum` forms the per-example weight gradients without them.

    ``Σ_t b_nt ⊗ a_nt`` over the positions of example ``n`` is the weight gradient of a
    convolution of that example alone. All ``N`` of them come from one convolution backward with
    the examples folded into the channels and ``N·G`` groups (the kernel ``torch.func.vmap``
    runs for per-example convolution gradients), which reads the input in place instead of
    copying it ``k_1·…·k_d`` times into patches."""

    inp: Tensor
    conv: nn.modules.conv._ConvNd

    @cached_property
    def values(self) -> Tensor:
        patches = unfold_patches(self.inp, self.conv)  # (N, T, C_in·K)
        return patches.reshape(patches.shape[0], patches.shape[1], self.conv.groups, -1)

    @property
    def _out(self) -> list[int]:
        return output_size(padded_size(self.inp.shape[2:], self.conv), self.conv)

    @property
    def positions(self) -> int:
        return math.prod(self._out)

    @property
    def groups(self) -> int:
        return int(self.conv.groups)

    @property
    def width(self) -> int:
        return int(self.inp.shape[1]) // self.groups * math.prod(self.conv.kernel_size)

    @property
    def num_rows(self) -> int:
        return int(self.inp.shape[0])

    def rows(self, start: int, stop: int) -> ConvPatches:
        return ConvPatches(self.inp[start:stop], self.conv)

    def outer_sum(self, left: Tensor) -> Tensor | None:
        """``Σ_t left_nt ⊗ a_nt`` as ``(n, G, C_out/G, C_in/G·K)`` for ``left`` ``(n, T, G, C_out/G)``
        (the backprop), by one grouped convolution backward; None for fewer than
        :data:`GROUPED_BACKWARD_MIN_CHANNELS` input channels per group."""
        conv, n, groups = self.conv, self.num_rows, self.groups
        c_in = int(self.inp.shape[1])
        if c_in // groups < GROUPED_BACKWARD_MIN_CHANNELS or n == 0:
            return None
        x = padded_input(self.inp, conv)
        c_out = left.shape[2] * left.shape[3]
        grad_out = left.reshape(n, -1, c_out).transpose(1, 2).reshape(1, n * c_out, *self._out)
        spatial = x.dim() - 2
        weight_shape = (n * c_out, c_in // groups, *conv.kernel_size)
        _, grads, _ = torch.ops.aten.convolution_backward(
            grad_out,
            x.to(left.dtype).reshape(1, n * c_in, *x.shape[2:]),
            torch.empty(weight_shape, dtype=left.dtype, device=left.device),
            None,
            list(conv.stride),
            [0] * spatial,
            list(conv.dilation),
            False,
            [0] * spatial,
            n * groups,
            [False, True, False],
        )
        return grads.reshape(n, groups, c_out // groups, -1)


@register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvRule(LayerRule):
    def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor) -> dict[str, PerExampleGrad]:
        assert isinstance(module, nn.modules.conv._ConvNd)
        n, groups = inp.shape[0], module.groups
        c_out = grad_out.shape[1]
        right = ConvPatches(inp, module)
        positions = right.positions
        b = grad_out.reshape(n, c_out, -1).transpose(1, 2).reshape(n, positions, groups, c_out // groups)
        grads: dict[str, PerExampleGrad] = {"weight": [KroneckerTerm(DenseFactor(b), right)]}
        if module.bias is not None:
            grads["bias"] = grad_out.reshape(n, c_out, -1).sum(dim=2)
        return grads
