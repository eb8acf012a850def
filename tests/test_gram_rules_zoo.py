"""Layer rules for the layers of common torchvision, timm and Hugging Face models.

Each layer type sits in a tiny float64 model; the kernel Gram must equal an independent float64
per-example ``torch.autograd.grad`` loop to 1e-5 (relative Frobenius), and no parameter of the
layer may take the fallback (``paths`` and no fallback warning).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_stiffness.gram import GramResult, per_example_gram_blocks
from lightning_stiffness.gram.hooks import block_name
from lightning_stiffness.gram.sharding import clean_name
from tests.conftest import independent_gram, independent_jacobian, rel_err

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-5


def kernel_result(model: nn.Module, x: Any, y: Tensor, **kwargs: Any) -> GramResult:
    """The kernel Gram, failing on any RuntimeWarning (a fallback or a non-finite result)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return per_example_gram_blocks(model, x, y, method="hooks", **kwargs)


def assert_exact_no_fallback(
    model: nn.Module, x: Tensor, n_classes: int = 3, seed: int = 0, reference: nn.Module | None = None
) -> GramResult:
    """Kernel Gram == independent float64 loop (over ``reference``, default ``model``), with no
    parameter on the fallback."""
    model = model.double()
    y = torch.randint(0, n_classes, (x.shape[0],), generator=torch.Generator().manual_seed(seed))
    result = kernel_result(model, x, y)
    assert not result.gram.requires_grad and not any(b.requires_grad for b in result.blocks.values())
    fallback = {k: v for k, v in result.paths.items() if v.startswith("fallback")}
    assert not fallback, fallback
    assert set(result.paths) == {clean_name(k) for k, p in model.named_parameters() if p.requires_grad}
    jac = independent_jacobian(model if reference is None else reference.double(), x, y).detach()
    ref = jac @ jac.T
    assert ref.abs().max() > 1e-8
    err = rel_err(result.gram, ref)
    assert err <= TOL, err
    # every module's block on its own, so a small layer's error cannot hide in the total
    columns: dict[str, list[Tensor]] = {}
    offset = 0
    for name, p in model.named_parameters():
        columns.setdefault(block_name(clean_name(name)), []).append(jac[:, offset : offset + p.numel()])
        offset += p.numel()
    assert set(result.blocks) == set(columns)
    for block, cols in columns.items():
        j = torch.cat(cols, dim=1)
        block_ref = j @ j.T
        assert block_ref.norm() > 1e-12 * ref.norm(), f"degenerate test: the gradients of {block!r} vanish"
        gap = float((result.blocks[block].double() - block_ref).norm())
        assert gap <= TOL * float(block_ref.norm()) + 1e-15 * float(ref.norm()), (block, gap, float(block_ref.norm()))
    return result


def head(layer: nn.Module, x: Tensor, n_classes: int = 3) -> nn.Sequential:
    """``layer`` then a head whose backprop differs at every output position."""
    with torch.no_grad():
        width = layer.double()(x).reshape(x.shape[0], -1).shape[1]
    return nn.Sequential(layer, nn.Tanh(), nn.Flatten(), nn.Linear(width, n_classes))


def randomize(module: nn.Module) -> nn.Module:
    """Non-trivial affine parameters and running statistics (defaults are 1/0)."""
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-1.5, 1.5)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return module


def x64(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1, output_padding=1), (4, 2, 5)),
        (lambda: nn.ConvTranspose2d(4, 6, (2, 3), stride=(2, 1), dilation=(1, 2), groups=2), (3, 4, 3, 4)),
        (lambda: nn.ConvTranspose3d(2, 2, 2, stride=2, bias=False), (3, 2, 2, 3, 2)),
        (lambda: nn.PReLU(), (4, 3, 5)),
        (lambda: nn.PReLU(3), (4, 3, 2, 2)),
        (lambda: nn.InstanceNorm1d(3, affine=True), (4, 3, 5)),
        (lambda: nn.InstanceNorm2d(3, affine=True, track_running_stats=True), (4, 3, 3, 3)),
        (lambda: nn.InstanceNorm3d(2, affine=True), (3, 2, 2, 3, 2)),
    ],
    ids=["convT1d", "convT2d-groups", "convT3d", "prelu", "prelu-channels", "inorm1d", "inorm2d-running", "inorm3d"],
)
def test_torch_layer(layer: Any, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    module = randomize(layer())
    x = x64(*shape)
    assert_exact_no_fallback(head(module, x), x)


def timm_norm_layers() -> list[tuple[str, Any, tuple[int, ...]]]:
    from timm.layers import norm, norm_act

    return [
        ("LayerNorm2d", lambda: norm.LayerNorm2d(3), (4, 3, 2, 3)),
        ("LayerNorm", lambda: norm.LayerNorm(5), (4, 3, 5)),
        ("GroupNorm", lambda: norm.GroupNorm(4, num_groups=2), (4, 4, 3)),
        ("BatchNormAct2d-relu", lambda: norm_act.BatchNormAct2d(3), (4, 3, 2, 3)),
        ("BatchNormAct2d-silu", lambda: norm_act.BatchNormAct2d(3, act_layer=nn.SiLU), (4, 3, 2, 3)),
        ("GroupNormAct-gelu", lambda: norm_act.GroupNormAct(4, num_groups=2, act_layer=nn.GELU), (4, 4, 3, 2)),
        ("GroupNorm1Act", lambda: norm_act.GroupNorm1Act(4, act_layer=nn.Hardswish), (4, 4, 3)),
        ("LayerNormAct", lambda: norm_act.LayerNormAct(5, act_layer=nn.Tanh), (4, 3, 5)),
        ("LayerNormAct2d", lambda: norm_act.LayerNormAct2d(3), (4, 3, 2, 3)),
    ]


@pytest.mark.parametrize("index", range(9))
def test_timm_norm_layer(index: int) -> None:
    pytest.importorskip("timm")
    _, layer, shape = timm_norm_layers()[index]
    torch.manual_seed(index)
    x = x64(*shape, seed=index)
    assert_exact_no_fallback(head(randomize(layer()), x), x)


def test_torchvision_layer_norm_2d() -> None:
    from torchvision.models.convnext import LayerNorm2d

    x = x64(4, 3, 2, 3)
    assert_exact_no_fallback(head(randomize(LayerNorm2d(3)), x), x)


class Tokens(nn.Module):
    """ViT-style stem: class token expanded and concatenated, position embedding added, layer scale."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.randn(1, 6, 4))
        self.gamma = nn.Parameter(torch.randn(4))
        self.scale = nn.Parameter(torch.randn(4, 1))
        self.head = nn.Linear(4 * 6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x)
        h = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), h], dim=1)
        h = torch.tanh(h + self.pos_embed)
        h = h * self.gamma.type_as(h).reshape(1, 1, -1) * 2.0
        h = torch.tanh(h).mul(self.scale.t())
        return self.head(h.flatten(1))


def test_raw_parameters() -> None:
    torch.manual_seed(0)
    result = assert_exact_no_fallback(Tokens(), x64(4, 5, 3))
    assert {result.paths[k] for k in ("cls_token", "pos_embed", "gamma", "scale")} == {"dense"}


class Multiplied(nn.Module):
    """A raw parameter used in a matmul, not a broadcasting op: not covered, left to the fallback."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = nn.Parameter(torch.randn(2, 2))
        self.offset = nn.Parameter(torch.randn(2))
        self.head = nn.Linear(2 * 3, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(x @ (self.extra * 2.0) + self.offset).flatten(1))


def test_raw_parameter_outside_broadcast_falls_back() -> None:
    model = Multiplied().double()
    x, y = x64(4, 3, 2), torch.tensor([0, 1, 2, 0])
    with pytest.warns(RuntimeWarning, match="extra"):
        result = per_example_gram_blocks(model, x, y, method="hooks")
    assert result.paths["extra"].startswith("fallback")
    assert result.paths["offset"] == "dense"
    assert rel_err(result.gram, independent_gram(model, x, y)) <= TOL


COMPILATIONS: list[int] = []


def recording_backend(gm: Any, example_inputs: Any) -> Any:
    """A compiler backend that records its calls: the measurement must not run the compiled module."""
    COMPILATIONS.append(1)
    return gm.forward


class WithCompiledBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 6)
        self.net = torch.compile(nn.Sequential(nn.Tanh(), nn.Linear(6, 5), nn.LayerNorm(5)), backend=recording_backend)
        self.head = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.net(self.stem(x)))


def test_compiled_submodule_is_measured_through_its_original_module() -> None:
    torch.manual_seed(0)
    model = WithCompiledBlock()
    COMPILATIONS.clear()
    names_before = [k for k, _ in model.named_parameters()]
    assert "net._orig_mod.1.weight" in names_before
    eager = copy.deepcopy(model)
    eager.net = eager.net._orig_mod  # the reference loop runs the same parameters uncompiled
    result = assert_exact_no_fallback(model, x64(4, 4), reference=eager)
    assert {"net.1.weight", "net.2.weight"} <= set(result.paths)
    assert result.paths["net.1.weight"] in ("kernel_trick", "materialize")
    assert [k for k, _ in model.named_parameters()] == names_before  # the compiled wrapper is back in place
    assert type(model.net).__name__ == "OptimizedModule"
    assert COMPILATIONS == []  # measured through _orig_mod, eagerly


class Attention(nn.Module):
    def __init__(self, batch_first: bool, **kwargs: Any) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.proj = nn.Linear(3, 4)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=batch_first, **kwargs)
        self.head = nn.Linear(4 * 5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.proj(x))  # (N, L, E)
        mask = x[:, :, 0] > 0.5  # a per-example key padding mask, never masking the first key
        mask[:, 0] = False
        if self.batch_first:
            a, _ = self.attn(h, h, h, key_padding_mask=mask)
        else:
            t = h.transpose(0, 1)
            a, _ = self.attn(t, t, t, key_padding_mask=mask, need_weights=False)
            a = a.transpose(0, 1)
        return self.head(torch.tanh(a).flatten(1))


@pytest.mark.parametrize(
    "batch_first, kwargs",
    [(True, {}), (False, {}), (True, {"kdim": 3, "vdim": 3, "add_bias_kv": True}), (False, {"bias": False})],
    ids=["batch-first", "seq-first", "separate-kv-bias", "no-bias"],
)
def test_multihead_attention(batch_first: bool, kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = Attention(batch_first, **kwargs)
    if "kdim" in kwargs:  # keys and values straight from the input (kdim = vdim = 3): the separate projections
        model.forward = lambda x: model.head(  # type: ignore[method-assign]
            torch.tanh(model.attn(torch.tanh(model.proj(x)), x, x)[0]).flatten(1)
        )
    result = assert_exact_no_fallback(model, x64(4, 5, 3))
    assert result.paths["attn.out_proj.weight"] == "dense"


@pytest.mark.parametrize("cell", [nn.RNN, nn.GRU, nn.LSTM])
@pytest.mark.parametrize("batch_first", [True, False])
def test_recurrent(cell: type[nn.RNNBase], batch_first: bool) -> None:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            extra = {"proj_size": 2} if cell is nn.LSTM else {}
            self.rnn = cell(3, 4, num_layers=2, bidirectional=True, batch_first=batch_first, **extra)
            out = 2 * (2 if cell is nn.LSTM else 4)
            self.head = nn.Linear(out, 3)

        def forward(self, x: Tensor) -> Tensor:
            seq = x if batch_first else x.transpose(0, 1)
            out, _ = self.rnn(seq)
            last = out[:, -1] if batch_first else out[-1]
            return self.head(last)

    model = Net()
    result = assert_exact_no_fallback(model, x64(4, 5, 3))
    assert result.paths["rnn.weight_hh_l1_reverse"] == "dense"


# --------------------------------------------------------------------------- whole classifiers


def timm_vit() -> nn.Module:
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2,
        num_classes=3,
    )  # fmt: skip


def timm_convnext() -> nn.Module:
    import timm

    return timm.create_model("convnext_atto", pretrained=False, num_classes=3, dims=(4, 4, 4, 4), depths=(1, 1, 1, 1))


def timm_mobilenetv3() -> nn.Module:
    import timm

    return timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=3)


def torchvision_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8, num_classes=3
    )
    nn.init.normal_(model.heads.head.weight)  # zero-initialised: every other gradient would vanish
    nn.init.normal_(model.class_token)
    return model


def torchvision_convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(4, 8, 1), CNBlockConfig(8, None, 1)], num_classes=3)


def hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
        num_labels=3,
    )  # fmt: skip
    return ViTForImageClassification(config)


def hf_convnext() -> nn.Module:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    return ConvNextForImageClassification(
        ConvNextConfig(hidden_sizes=[4, 8], depths=[1, 1], num_stages=2, num_labels=3, image_size=16)
    )


CLASSIFIERS = {
    f.__name__: f
    for f in (timm_vit, timm_convnext, timm_mobilenetv3, torchvision_vit, torchvision_convnext, hf_vit, hf_convnext)
}


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifier_has_no_fallback(name: str) -> None:
    pytest.importorskip({"timm": "timm", "torchvision": "torchvision", "hf": "transformers"}[name.split("_")[0]])
    torch.manual_seed(0)
    model = CLASSIFIERS[name]()
    with torch.no_grad():  # ConvNeXt's 1e-6 layer scales would make every block's gradient vanish
        for pname, p in model.named_parameters():
            if "gamma" in pname or "layer_scale" in pname:
                p.uniform_(0.5, 1.5)
    size = 32 if name in ("timm_mobilenetv3", "timm_convnext") else 16
    assert_exact_no_fallback(model, x64(3, 3, size, size))


class Bag(nn.Module):
    def __init__(self, mode: str, weighted: bool) -> None:
        super().__init__()
        self.weighted = weighted
        self.bag = nn.EmbeddingBag(7, 4, mode=mode, padding_idx=0)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        if self.weighted:
            weights = (tokens.to(self.head.weight.dtype) + 1.0).sqrt()
            return self.head(torch.tanh(self.bag(tokens, per_sample_weights=weights)))
        return self.head(torch.tanh(self.bag(tokens)))


@pytest.mark.parametrize("mode, weighted", [("sum", False), ("sum", True), ("mean", False)])
def test_embedding_bag(mode: str, weighted: bool) -> None:
    torch.manual_seed(0)
    tokens = torch.randint(0, 7, (4, 5), generator=torch.Generator().manual_seed(1))
    tokens[1, :3] = 0  # padding, excluded from sums and from the mean's count
    tokens[2, 1] = tokens[2, 3]  # a repeated index within one bag
    result = assert_exact_no_fallback(Bag(mode, weighted), tokens)
    assert result.paths["bag.weight"] in ("kernel_trick", "materialize")


class MaskedAttention(nn.Module):
    """A per-example 3-D ``attn_mask`` (``N·heads`` rows): each example owns ``heads`` consecutive rows."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4 * 5, 3)

    def forward(self, x: Tensor) -> Tensor:
        scores = x[:, :, :1] * x[:, None, :, 0]  # (N, L, L), depends on the example only
        mask = scores.repeat_interleave(self.attn.num_heads, dim=0)
        a, _ = self.attn(x, x, x, attn_mask=mask)
        return self.head(torch.tanh(a).flatten(1))


@pytest.mark.parametrize("route", ["vmap", "loop"])
def test_multihead_attention_with_per_example_3d_mask(route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both module-local routes: ``vmap`` of the per-example VJP, and the per-example loop that
    modules without batching rules take."""
    from lightning_stiffness.gram.rules import module_local

    if route == "loop":
        monkeypatch.setattr(module_local, "_NO_VMAP", {nn.MultiheadAttention})
    torch.manual_seed(0)
    assert_exact_no_fallback(MaskedAttention(), x64(4, 5, 4))


class Packed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        lengths = torch.full((x.shape[0],), x.shape[1])
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed)
        return self.head(h[-1])


def test_packed_sequence_falls_back_exactly() -> None:
    torch.manual_seed(0)
    model = Packed().double()
    x, y = x64(4, 5, 3), torch.tensor([0, 1, 2, 0])
    with pytest.warns(RuntimeWarning, match="packed sequence"):
        result = per_example_gram_blocks(model, x, y, method="hooks")
    assert all(result.paths[k].startswith("fallback") for k in result.paths if k.startswith("rnn."))
    assert result.paths["head.weight"] in ("kernel_trick", "materialize")
    assert rel_err(result.gram, independent_gram(model, x, y)) <= TOL


def test_third_party_rules_register_only_once_their_library_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rules for timm/torchvision/transformers classes register when the user's code has imported the
    library; the engine itself never imports one (no module-level import in ``gram/``)."""
    import ast
    import pathlib
    import sys
    import types

    from lightning_stiffness.gram.rules import base

    calls: list[int] = []
    base.register_when_imported("not_imported_library_xyz", lambda: calls.append(1))
    assert base.find_rule(nn.Linear(2, 2)) is not None
    assert calls == []
    monkeypatch.setitem(sys.modules, "not_imported_library_xyz", types.ModuleType("not_imported_library_xyz"))
    base.find_rule(nn.Linear(2, 2))
    base.find_rule(nn.Linear(2, 2))
    assert calls == [1]

    package = pathlib.Path(base.__file__).parents[1]
    for path in package.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            third = [n for n in names if n.split(".")[0] in ("timm", "torchvision", "transformers")]
            assert not third, f"{path.name} imports {third} at module level"


def local_module_layers() -> dict[str, tuple[Any, tuple[int, ...]]]:
    """Third-party layers covered by module-local VJPs, with an input shape (examples on dim 0)."""
    from timm.layers import std_conv
    from timm.models import beit, eva
    from torchvision.models import maxvit

    return {
        "beit-attention": (lambda: beit.Attention(8, num_heads=2, qkv_bias=True, window_size=(2, 2)), (3, 5, 8)),
        "eva-attention": (lambda: eva.EvaAttention(8, num_heads=2, qkv_bias=True, scale_norm=False), (3, 4, 8)),
        "std-conv": (lambda: std_conv.StdConv2d(2, 3, 3, padding=1), (3, 2, 4, 4)),
        "scaled-std-conv": (lambda: std_conv.ScaledStdConv2d(2, 3, 3, padding=1), (3, 2, 4, 4)),
        "maxvit-rel-attention": (
            lambda: maxvit.RelativePositionalMultiHeadAttention(8, head_dim=4, max_seq_len=4),
            (3, 2, 4, 8),
        ),
    }


@pytest.mark.parametrize(
    "name", ["beit-attention", "eva-attention", "std-conv", "scaled-std-conv", "maxvit-rel-attention"]
)
def test_module_local_third_party_layer(name: str) -> None:
    pytest.importorskip("timm")
    layer, shape = local_module_layers()[name]
    torch.manual_seed(0)
    module = layer()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.5)  # the biases and position tables start at zero
    x = x64(*shape)
    result = assert_exact_no_fallback(head(module, x), x)
    assert {v for k, v in result.paths.items() if k.startswith("0.")} <= {"dense", "kernel_trick", "materialize"}


class SequenceFirstToken(nn.Module):
    """A class token expanded along dim 1 (sequence-first) with T = N: dim 0 is not the example
    axis, so the raw-parameter capture must refuse rather than take the positions for examples."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, 3))
        self.head = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:  # x: (N, T, 3) with T == N
        seq = x.transpose(0, 1)  # (T, N, 3)
        h = torch.tanh(seq + self.cls_token.expand(-1, x.shape[0], -1))
        return self.head(h.mean(dim=0))


def test_raw_parameter_expanded_along_another_axis_falls_back() -> None:
    model = SequenceFirstToken().double()
    x, y = x64(4, 4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.warns(RuntimeWarning, match="cls_token"):
        result = per_example_gram_blocks(model, x, y, method="hooks")
    assert result.paths["cls_token"].startswith("fallback")
    assert rel_err(result.gram, independent_gram(model, x, y)) <= TOL
