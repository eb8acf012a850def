"""Property tests of each layer rule in isolation, and of the ghost/materialise cost model.

Each rule's layer is the first module of ``Sequential(layer, Tanh, Flatten, Linear)``; the Gram
of the layer's own parameters (``params="0"``) by the kernel path — forced ghost and forced
materialise — must equal the float64 per-example loop to 1e-9.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from lightning_stiffness.gram import LayerRule, find_rule, per_example_gram_blocks, register_rule
from lightning_stiffness.gram.cost import choose_path, estimate_cost
from lightning_stiffness.gram.factors import DenseFactor, IndexFactor, KroneckerTerm
from lightning_stiffness.gram.rules.conv import unfold_patches
from tests.conftest import rel_err

pytestmark = pytest.mark.usefixtures("single_thread")

SETTINGS = settings(
    max_examples=15,
    deadline=None,
    database=None,
    derandomize=True,  # deterministic suite; widen max_examples locally to explore more
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
N = 3


def head_model(layer: nn.Module, x: Tensor, n_classes: int = 3) -> nn.Sequential:
    """``layer`` followed by a fixed head whose backprop differs at every output position."""
    with torch.no_grad():
        width = layer(x).reshape(x.shape[0], -1).shape[1]
    return nn.Sequential(layer, nn.Tanh(), nn.Flatten(), nn.Linear(width, n_classes)).double()


def randomize_affine(module: nn.Module) -> None:
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(module, name, None)
            if isinstance(p, nn.Parameter):
                p.uniform_(-1.5, 1.5)


def assert_rule_exact(layer: nn.Module, x: Tensor, *, seed: int) -> None:
    """Kernel (ghost and materialise) Gram of ``layer``'s parameters equals the float64 loop."""
    assert find_rule(layer) is not None, type(layer)
    model = head_model(layer, x)
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(seed))
    own = {f"0.{name}" for name, p in layer.named_parameters() if p.requires_grad}
    assert own, "the layer under test has no trainable parameter"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback, no non-finite result
        ref = per_example_gram_blocks(model, x, y, method="loop", params="0").gram
        assert ref.dtype == torch.float64
        assert ref.abs().max() > 1e-8, "degenerate case: the layer's gradients vanish"
        for strategy in ("kernel_trick", "materialize"):
            result = per_example_gram_blocks(model, x, y, method="hooks", params="0", layer_path=strategy)
            assert set(result.paths) == own
            assert not any(s.startswith("fallback") for s in result.paths.values()), result.paths
            weight = getattr(layer, "weight", None)
            if isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)):
                assert result.paths["0.weight"] == strategy
            elif weight is not None:
                assert result.paths["0.weight"] == "dense"
            assert rel_err(result.gram, ref) <= 1e-9, (strategy, rel_err(result.gram, ref))


@SETTINGS
@given(
    extra=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    d_in=st.integers(1, 5),
    d_out=st.integers(1, 5),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_linear_rule(extra: list[int], d_in: int, d_out: int, bias: bool, seed: int) -> None:
    torch.manual_seed(seed)
    layer = nn.Linear(d_in, d_out, bias=bias).double()
    x = torch.randn(N, *extra, d_in, dtype=torch.float64)
    assert_rule_exact(layer, x, seed=seed)


@st.composite
def conv_configs(draw: st.DrawFn) -> dict:
    dim = draw(st.sampled_from([1, 2, 3]))
    small = dim == 3
    kernel = tuple(draw(st.integers(1, 2 if small else 3)) for _ in range(dim))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dim))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(dim))
    # every spatial size covers the dilated kernel, so even unpadded outputs are non-empty
    size = tuple(d * (k - 1) + 1 + draw(st.integers(0, 1 if small else 2)) for k, d in zip(kernel, dilation))
    grouping = draw(st.sampled_from(["plain", "grouped", "depthwise"]))
    if grouping == "plain":
        groups, c_in, c_out = 1, draw(st.integers(1, 3)), draw(st.integers(1, 3))
    elif grouping == "grouped":
        groups = 2
        c_in, c_out = 2 * draw(st.integers(1, 2)), 2 * draw(st.integers(1, 2))
    else:
        c_in = draw(st.integers(2, 3))
        groups, c_out = c_in, c_in * draw(st.integers(1, 2))
    padding_mode = draw(st.sampled_from(["zeros", "reflect", "circular", "replicate"]))
    choices: list = ["int"] + (["same", "valid"] if all(s == 1 for s in stride) else [])
    kind = draw(st.sampled_from(choices))
    if kind == "int":
        limits = [s - 1 if padding_mode == "reflect" else s for s in size]
        per_dim = tuple(draw(st.integers(0, min(2, lim))) for lim in limits)
        padding: int | tuple[int, ...] | str = per_dim[0] if draw(st.booleans()) and len(set(per_dim)) == 1 else per_dim
    else:
        padding = kind
    return {
        "dim": dim,
        "c_in": c_in,
        "c_out": c_out,
        "hooks": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "padding_mode": padding_mode,
        "bias": draw(st.booleans()),
        "size": size,
    }


def conv_and_input(cfg: dict) -> tuple[nn.Module, Tensor]:
    """A float64 convolution built from a ``conv_configs`` draw, and an input of N examples for it."""
    conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[cfg["dim"]]
    layer = conv_cls(
        cfg["c_in"],
        cfg["c_out"],
        cfg["hooks"],
        stride=cfg["stride"],
        padding=cfg["padding"],
        dilation=cfg["dilation"],
        groups=cfg["groups"],
        bias=cfg["bias"],
        padding_mode=cfg["padding_mode"],
    ).double()
    return layer, torch.randn(N, cfg["c_in"], *cfg["size"], dtype=torch.float64)


def sees_input(layer: nn.Module, x: Tensor) -> bool:
    """Whether any output position of the convolution reads a real (not padded) input element."""
    with torch.no_grad():
        ones = layer._conv_forward(torch.ones_like(x), torch.ones_like(layer.weight), None)
    return bool(ones.abs().sum() > 0)


@SETTINGS
@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_conv_rule(cfg: dict, seed: int) -> None:
    torch.manual_seed(seed)
    layer, x = conv_and_input(cfg)
    assume(sees_input(layer, x))  # e.g. a 1-wide kernel striding over padding only: no gradient to test
    assert_rule_exact(layer, x, seed=seed)


@SETTINGS
@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_conv_patches_reproduce_the_convolution(cfg: dict, seed: int) -> None:
    """``unfold_patches`` is the convolution's own im2col: per group, patches · Wᵀ = conv(x) − bias."""
    torch.manual_seed(seed)
    layer, x = conv_and_input({**cfg, "bias": False})
    expected = layer(x)
    groups = cfg["groups"]
    patches = unfold_patches(x, layer)  # (N, T, C_in·k)
    n, positions = patches.shape[:2]
    weight = layer.weight.reshape(groups, cfg["c_out"] // groups, -1)  # (G, C_out/G, C_in/G·k)
    per_group = torch.einsum("ntgk,gok->ngot", patches.reshape(n, positions, groups, -1), weight)
    assert torch.allclose(per_group.reshape(expected.shape), expected, atol=1e-12)


def test_conv_patches_match_torch_unfold_in_2d() -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    x = torch.randn(2, 3, 9, 8)
    expected = F.unfold(x, (3, 2), dilation=(1, 2), padding=(1, 2), stride=(2, 1)).transpose(1, 2)
    assert torch.equal(unfold_patches(x, layer), expected)


@SETTINGS
@given(cfg=conv_configs(), per_group=st.integers(8, 9), seed=st.integers(0, 2**16))
def test_conv_outer_sum_equals_the_unfolded_patches(cfg: dict, per_group: int, seed: int) -> None:
    """The per-example weight gradients from one grouped convolution backward (no patches built)
    equal Σ_t b_t ⊗ a_t from the unfolded patches, for every stride, dilation, padding and group."""
    from lightning_stiffness.gram.rules.conv import GROUPED_BACKWARD_MIN_CHANNELS, ConvPatches

    torch.manual_seed(seed)
    assert per_group >= GROUPED_BACKWARD_MIN_CHANNELS
    groups = cfg["groups"] if cfg["groups"] in (1, 2) else 1
    layer, x = conv_and_input({**cfg, "groups": groups, "c_in": groups * per_group, "c_out": groups * cfg["c_out"]})
    factor = ConvPatches(x, layer)
    out = layer(x)
    assert factor.positions == math.prod(out.shape[2:]) and factor.groups == groups
    left = torch.randn(x.shape[0], factor.positions, groups, cfg["c_out"], dtype=torch.float64)
    expected = torch.einsum("ntga,ntgb->ngab", left, factor.values)
    got = factor.outer_sum(left)
    assert got is not None and got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-10, rtol=0)
    assert ConvPatches(x[:, :1].expand(-1, 1, *x.shape[2:]).contiguous(), nn.Conv2d(1, 1, 1)).outer_sum(left) is None


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular", "replicate"])
def test_conv_same_padding_even_kernel(padding_mode: str) -> None:
    """``padding="same"`` with an even (dilated) kernel pads asymmetrically."""
    torch.manual_seed(0)
    layer = nn.Conv2d(2, 3, (2, 4), padding="same", dilation=(1, 1), padding_mode=padding_mode).double()
    assert_rule_exact(layer, torch.randn(N, 2, 5, 6, dtype=torch.float64), seed=0)


@SETTINGS
@given(
    num=st.integers(2, 8),
    dim=st.integers(1, 4),
    length=st.integers(1, 5),
    padding=st.sampled_from([None, 0, 1, -1]),
    seed=st.integers(0, 2**16),
)
def test_embedding_rule(num: int, dim: int, length: int, padding: int | None, seed: int) -> None:
    torch.manual_seed(seed)
    layer = nn.Embedding(num, dim, padding_idx=padding).double()
    with torch.no_grad():
        layer.weight.normal_()  # the padding row too: it must still get no gradient
    tokens = torch.randint(0, num, (N, length))
    if padding is not None:
        tokens[0, 0] = layer.padding_idx  # at least one padded position
        tokens[1, 0] = (layer.padding_idx + 1) % num  # and one that is not
    assert_rule_exact(layer, tokens, seed=seed)


def test_embedding_padding_row_gets_no_gradient() -> None:
    """Only padding tokens: the Gram of the embedding weight is exactly zero."""
    layer = nn.Embedding(5, 3, padding_idx=2).double()
    model = head_model(layer, torch.full((N, 4), 2))
    result = per_example_gram_blocks(
        model, torch.full((N, 4), 2), torch.zeros(N, dtype=torch.long), method="hooks", params="0"
    )
    assert torch.count_nonzero(result.gram) == 0


@SETTINGS
@given(
    extra=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=2),
    affine=st.sampled_from(["full", "no_bias"]),
    kind=st.sampled_from(["layer", "rms"]),
    seed=st.integers(0, 2**16),
)
def test_layernorm_and_rmsnorm_rules(extra: list[int], shape: list[int], affine: str, kind: str, seed: int) -> None:
    torch.manual_seed(seed)
    if kind == "layer" and all(s == 1 for s in shape):
        shape = [2]  # normalising a single value gives exactly zero: nothing to test
    if kind == "layer":
        layer: nn.Module = nn.LayerNorm(shape, bias=affine == "full")
    else:
        layer = nn.RMSNorm(shape, eps=1e-6)
    layer = layer.double()
    randomize_affine(layer)
    x = torch.randn(N, *extra, *shape, dtype=torch.float64) * 2 + 0.5
    assert_rule_exact(layer, x, seed=seed)


@SETTINGS
@given(
    groups=st.integers(1, 3),
    per_group=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_groupnorm_rule(groups: int, per_group: int, spatial: list[int], seed: int) -> None:
    torch.manual_seed(seed)
    channels = groups * per_group
    if per_group == 1 and all(s == 1 for s in spatial):
        spatial = [2]  # a group of one scalar normalises to zero: keep something to normalise
    layer = nn.GroupNorm(groups, channels).double()
    randomize_affine(layer)
    x = torch.randn(N, channels, *spatial, dtype=torch.float64) * 2 + 0.5
    assert_rule_exact(layer, x, seed=seed)


@SETTINGS
@given(
    channels=st.integers(1, 4),
    spatial=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_batchnorm_eval_rule(channels: int, spatial: list[int], seed: int) -> None:
    torch.manual_seed(seed)
    cls = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[len(spatial)]
    layer = cls(channels).double()
    randomize_affine(layer)
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.3, 2.0)
    layer.train()  # the engine must evaluate with running statistics regardless
    x = torch.randn(N, channels, *spatial, dtype=torch.float64)
    assert_rule_exact(layer, x, seed=seed)
    assert layer.training


def test_batchnorm2d_eval_rule_fixed() -> None:
    torch.manual_seed(3)
    layer = nn.BatchNorm2d(3).double()
    randomize_affine(layer)
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.3, 2.0)
    layer.eval()
    assert_rule_exact(layer, torch.randn(N, 3, 4, 5, dtype=torch.float64), seed=3)


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("kind", ["module_without_rule", "linear_subclass_with_own_forward"])
def test_layers_without_a_rule_fall_back_exactly(kind: str) -> None:
    class DoubledLinear(nn.Linear):
        """Overrides ``forward``: the Linear rule would see the wrong input and must not be used."""

        def forward(self, x: Tensor) -> Tensor:
            return super().forward(2.0 * x)

    class Gate(nn.Module):
        """A parameter entering non-linearly (sigmoid) before it meets the activations."""

        def __init__(self) -> None:
            super().__init__()
            self.gate = nn.Parameter(torch.randn(2, 1))

        def forward(self, x: Tensor) -> Tensor:
            return torch.sigmoid(self.gate) * x

    torch.manual_seed(1)
    layer, x = {
        "module_without_rule": (Gate(), torch.randn(N, 2, 3)),
        "linear_subclass_with_own_forward": (DoubledLinear(4, 3), torch.randn(N, 4)),
    }[kind]
    layer = layer.double()
    assert find_rule(layer) is None
    model = head_model(layer, x.double())
    y = torch.randint(0, 3, (N,))
    ref = per_example_gram_blocks(model, x.double(), y, method="loop").gram
    with pytest.warns(RuntimeWarning, match=rf"0: no layer rule for {type(layer).__name__}"):
        result = per_example_gram_blocks(model, x.double(), y, method="hooks")
    own = [k for k in result.paths if k.startswith("0.")]
    assert own and all(result.paths[k].startswith("fallback") for k in own)
    assert result.paths["3.weight"] in ("kernel_trick", "materialize")
    assert rel_err(result.gram, ref) <= 1e-10


def test_parameters_a_rule_does_not_know_fall_back_instead_of_counting_as_unused() -> None:
    """``weight_norm`` (the pre-parametrization API) gives a Linear the parameters ``weight_g`` and
    ``weight_v`` and recomputes ``weight`` before each forward: the Linear rule knows only
    ``weight``/``bias``, so the others must take the exact fallback (they once came out as unused,
    a silently wrong Gram)."""
    torch.manual_seed(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # weight_norm is deprecated but still used
        layer = torch.nn.utils.weight_norm(nn.Linear(4, 5).double())
    x = torch.randn(N, 4, dtype=torch.float64)
    model = head_model(layer, x)
    y = torch.randint(0, 3, (N,))
    ref = per_example_gram_blocks(model, x, y, method="loop").gram
    with pytest.warns(RuntimeWarning, match="rule has no gradient for its parameter 'weight_g'"):
        result = per_example_gram_blocks(model, x, y, method="hooks")
    assert result.paths["0.weight_g"].startswith("fallback")
    assert result.paths["0.weight_v"].startswith("fallback")
    assert result.paths["0.bias"] == "dense"
    assert rel_err(result.gram, ref) <= 1e-10


def test_linear_subclass_without_own_forward_uses_the_rule() -> None:
    class TaggedLinear(nn.Linear):
        pass

    assert find_rule(TaggedLinear(2, 2)) is find_rule(nn.Linear(2, 2)) is not None


class Scale(nn.Module):
    """``y = x ⊙ w`` over the last dimension: a custom layer for the registry test."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


def test_registering_a_custom_rule() -> None:
    from lightning_stiffness.gram.rules import base

    @register_rule(Scale)
    class ScaleRule(LayerRule):
        def per_example_grads(self, module: nn.Module, inp: Tensor, grad_out: Tensor):
            n = inp.shape[0]
            return {"weight": (inp * grad_out).reshape(n, -1, inp.shape[-1]).sum(1)}

    try:
        assert find_rule(Scale(3)) is not None
        torch.manual_seed(2)
        model = head_model(Scale(4).double(), torch.randn(N, 2, 4, dtype=torch.float64))
        x, y = torch.randn(N, 2, 4, dtype=torch.float64), torch.randint(0, 3, (N,))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            result = per_example_gram_blocks(model, x, y, method="hooks")
        assert result.paths["0.weight"] == "dense"
        ref = per_example_gram_blocks(model, x, y, method="loop").gram
        assert rel_err(result.gram, ref) <= 1e-12
    finally:
        base._REGISTRY.pop(Scale, None)
    assert find_rule(Scale(3)) is None


# --------------------------------------------------------------------------- cost model


def dense_term(n: int, positions: int, a: int, b: int) -> KroneckerTerm:
    return KroneckerTerm(DenseFactor(torch.zeros(n, positions, 1, a)), DenseFactor(torch.zeros(n, positions, 1, b)))


BIG = float(2**40)


def test_cost_model_prefers_ghost_for_single_position_wide_layers() -> None:
    term = dense_term(32, 1, 256, 256)
    cost = estimate_cost([term], 32)
    assert cost.kernel_trick_flops < cost.materialize_flops
    assert choose_path([term], 32, BIG) == "kernel_trick"


def test_cost_model_prefers_materialize_for_many_positions() -> None:
    term = dense_term(32, 64, 16, 16)
    cost = estimate_cost([term], 32)
    assert cost.materialize_flops < cost.kernel_trick_flops
    assert choose_path([term], 32, BIG) == "materialize"


def test_cost_model_takes_ghost_when_materializing_does_not_fit() -> None:
    n, positions, width = 1000, 6, 64
    term = dense_term(n, positions, width, width)
    cost = estimate_cost([term], n)
    # materialise is cheaper, but less than 2x cheaper
    assert cost.materialize_flops < cost.kernel_trick_flops <= 2 * cost.materialize_flops
    assert choose_path([term], n, BIG) == "materialize"
    assert choose_path([term], n, cost.materialize_bytes / 2) == "kernel_trick"


def test_cost_model_keeps_materialize_when_ghost_is_far_slower_even_without_memory() -> None:
    term = dense_term(8, 64, 16, 16)
    cost = estimate_cost([term], 8)
    assert cost.kernel_trick_flops > 2 * cost.materialize_flops
    assert choose_path([term], 8, cost.materialize_bytes / 2) == "materialize"


def test_cost_model_counts_embedding_one_hot_side_as_cheap() -> None:
    """An Embedding's index side costs 1 per inner product, not its vocabulary width."""
    n, positions = 16, 8
    index = KroneckerTerm(
        IndexFactor(torch.zeros(n, positions, dtype=torch.long), 10_000), DenseFactor(torch.zeros(n, positions, 1, 8))
    )
    dense = dense_term(n, positions, 10_000, 8)
    assert estimate_cost([index], n).kernel_trick_flops < estimate_cost([dense], n).kernel_trick_flops
    assert choose_path([index], n, BIG) == "kernel_trick"


def test_auto_strategy_follows_cost_model_in_a_real_model() -> None:
    """Linear on one position with wide factors → ghost; a conv over many pixels → materialise."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 12 * 12, 3))
    x = torch.randn(4, 2, 12, 12)
    y = torch.randint(0, 3, (4,))
    result = per_example_gram_blocks(model, x, y, method="hooks")
    assert result.paths["0.weight"] == "materialize"  # T = 144 positions, a·b = 4·18
    assert result.paths["3.weight"] == "kernel_trick"  # T = 1
    assert result.paths["0.bias"] == "dense" and result.paths["3.bias"] == "dense"
