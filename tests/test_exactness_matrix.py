"""Exactness on models we did not write: torchvision classifiers and Hugging Face encoders,
decoders and encoder-decoders (tiny configurations, padded and unpadded), each against a float64
per-example loop; plus the Hugging Face layer rules (Conv1D, RMSNorm kin) and attention masks under
``vmap``.

``auto`` must be exact to 1e-5 (relative Frobenius) with no parameter on the fallback path beyond
the known gaps in ``tests.library_zoo.ALLOWED_FALLBACK``; ``vmap`` must be exact too (a decoder
that loses its causal mask under ``vmap`` is off by 1e-3 or more, see ``test_dropping_the_causal_mask_is_detected``).
"""

from __future__ import annotations

import copy
import functools
import importlib
import warnings

import pytest
import torch
from torch import Tensor, nn

from lightning_stiffness.gram import GramResult, per_example_gram, per_example_gram_blocks
from lightning_stiffness.gram.rules import base, find_rule, registered_names
from lightning_stiffness.gram.rules.hf_conv1d import HFConv1DRule
from lightning_stiffness.gram.rules.hf_rms_norm import OFFSET_SCALE_CLASSES, SCALE_CLASSES, HFRMSNormRule
from lightning_stiffness.gram.rules.hf_scaled_embedding import SCALED_EMBEDDING_CLASSES, HFScaledEmbeddingRule
from tests.conftest import rel_err
from tests.library_zoo import (
    HUGGING_FACE,
    LIBRARY_ZOO,
    SEQ,
    N,
    fallback_allowed,
    float64_loop_reference,
    library_zoo_cases,
    loss_of,
)
from tests.zoo import Case

pytestmark = pytest.mark.usefixtures("single_thread")

FALLBACK_PATHS = ("fallback-vmap", "fallback-loop")


@functools.cache
def case_and_reference(name: str) -> tuple[Case, Tensor]:
    case = LIBRARY_ZOO[name]()
    return case, float64_loop_reference(case)


def run(case: Case, **kwargs) -> GramResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return per_example_gram_blocks(
            case.model, case.inputs, case.targets, loss_fn=loss_of(case), return_blocks=False, **kwargs
        )


def _installed(name: str) -> None:
    pytest.importorskip("torchvision" if name not in HUGGING_FACE else "transformers")


@pytest.mark.parametrize("name", list(LIBRARY_ZOO))
def test_auto_matches_float64_loop_with_only_known_fallbacks(name: str) -> None:
    _installed(name)
    case, ref = case_and_reference(name)
    result = run(case, method="auto")
    assert result.nonfinite_examples == 0
    assert rel_err(result.gram, ref) <= 1e-5
    assert result.method == "hooks"
    trainable = {k for k, p in case.model.named_parameters() if p.requires_grad}
    assert set(result.paths) == trainable
    unexpected = {k for k, v in result.paths.items() if v in FALLBACK_PATHS and not fallback_allowed(name, k)}
    assert not unexpected, f"parameters without a layer rule: {sorted(unexpected)}"


@pytest.mark.parametrize("name", list(LIBRARY_ZOO))
def test_vmap_matches_float64_loop(name: str) -> None:
    _installed(name)
    case, ref = case_and_reference(name)
    # J Jᵀ is summed in float64 over column chunks, so vmap meets the bound on 11M-parameter models too
    result = run(case, method="vmap")
    assert result.method == "vmap"
    assert rel_err(result.gram, ref) <= 1e-5


def test_every_library_case_is_built() -> None:
    """The matrix is not silently empty: with both libraries installed every case runs."""
    pytest.importorskip("torchvision")
    pytest.importorskip("transformers")
    assert library_zoo_cases() == list(LIBRARY_ZOO)


# ---------------------------------------------------------------- Hugging Face masks under vmap


def padding_only_4d_mask(mask: Tensor) -> Tensor:
    """The former vmap workaround: a 4-D additive mask carrying padding only (no causal part)."""
    length = mask.shape[1]
    additive = (1.0 - mask[:, None, None, :].double()) * torch.finfo(torch.float64).min
    return additive.expand(-1, 1, length, length).contiguous()


@pytest.mark.parametrize("name", ["gpt2/right", "llama/left", "mistral-sw3/left"])
def test_dropping_the_causal_mask_is_detected(name: str) -> None:
    """Negative control: the padding-only 4-D mask the vmap path used to build changes a decoder's
    Gram by far more than the 1e-5 bound, so the matrix above would catch that bug."""
    pytest.importorskip("transformers")
    case, ref = case_and_reference(name)
    inputs = dict(case.inputs)
    inputs["attention_mask"] = padding_only_4d_mask(inputs["attention_mask"])
    wrong = per_example_gram(copy.deepcopy(case.model).double(), inputs, case.targets, method="loop")
    assert torch.isfinite(wrong).all()
    assert rel_err(wrong, ref) > 1e-3


@pytest.mark.parametrize(
    ("name", "mask_key"),
    [
        ("bert/right", "attention_mask"),
        ("roberta/left", "attention_mask"),
        ("gpt2/left/eager", "attention_mask"),  # right padding cannot matter to a causal classifier
        ("llama/left", "attention_mask"),
        ("mistral-sw3/left", "attention_mask"),
        ("t5/right", "attention_mask"),
        ("bart/left", "attention_mask"),
        ("bart/right+decoder-mask", "decoder_attention_mask"),
    ],
)
def test_padding_masks_change_the_gram(name: str, mask_key: str) -> None:
    """The padded cases are not vacuous: without their mask the Gram differs by far more than 1e-5,
    so a path that dropped or misplaced the mask would fail the matrix."""
    pytest.importorskip("transformers")
    case, ref = case_and_reference(name)
    inputs = {k: v for k, v in case.inputs.items() if k != mask_key}
    model64 = copy.deepcopy(case.model).double()
    unmasked = per_example_gram(model64, inputs, case.targets, loss_fn=loss_of(case), method="loop")
    assert rel_err(unmasked, ref) > 1e-3


def test_vmap_refuses_a_model_that_branches_on_data_with_a_clear_message() -> None:
    """Packed-sequence detection (``position_ids``, no mask, no cache) reads positions in Python;
    ``vmap`` refuses it, naming the model, and ``auto`` (layer rules, no vmap) stays exact."""
    pytest.importorskip("transformers")
    case, _ = case_and_reference("llama/none")
    positions = torch.arange(SEQ).repeat(N, 1)
    inputs = {**case.inputs, "position_ids": positions, "use_cache": False}
    with pytest.raises(RuntimeError, match="LlamaForSequenceClassification branches on tensor values"):
        per_example_gram(case.model, inputs, case.targets, method="vmap")
    ref = per_example_gram(copy.deepcopy(case.model).double(), inputs, case.targets, method="loop")
    result = run(Case("llama+positions", case.model, inputs, case.targets), method="auto")
    assert rel_err(result.gram, ref) <= 1e-5


class Wrapper(nn.Module):
    """A user module around a Hugging Face model (as a LightningModule holds one)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits


def test_vmap_on_a_module_wrapping_a_decoder() -> None:
    pytest.importorskip("transformers")
    case, ref = case_and_reference("llama/left")
    result = run(Case("wrapped", Wrapper(case.model), case.inputs, case.targets), method="vmap")
    assert result.method == "vmap"
    assert rel_err(result.gram, ref) <= 1e-5


def test_vmap_restores_transformers_mask_checks() -> None:
    pytest.importorskip("transformers")
    import transformers.masking_utils as masking
    from transformers.modeling_utils import PreTrainedModel

    before = (
        masking._ignore_causal_mask_sdpa,
        masking._ignore_bidirectional_mask_sdpa,
        PreTrainedModel.warn_if_padding_and_no_attention_mask,
    )
    case, _ = case_and_reference("gpt2/none")
    run(case, method="vmap")
    after = (
        masking._ignore_causal_mask_sdpa,
        masking._ignore_bidirectional_mask_sdpa,
        PreTrainedModel.warn_if_padding_and_no_attention_mask,
    )
    assert after == before


# ---------------------------------------------------------------- Hugging Face layer rules


def test_registered_names_exist_in_installed_transformers() -> None:
    """A rule registered by name for a class the installed version renamed would silently never apply."""
    pytest.importorskip("transformers")
    for qualified in registered_names():
        module, _, cls = qualified.rpartition(".")
        assert hasattr(importlib.import_module(module), cls), qualified


@pytest.mark.parametrize("layer_path", ["kernel_trick", "materialize"])
def test_gpt2_conv1d_rule_in_both_kronecker_paths(layer_path: str) -> None:
    pytest.importorskip("transformers")
    case, ref = case_and_reference("gpt2/left/eager")
    result = run(case, method="hooks", layer_path=layer_path)
    assert rel_err(result.gram, ref) <= 1e-5
    conv1d = [n for n, m in case.model.named_modules() if type(m).__name__ == "Conv1D"]
    assert conv1d and all(isinstance(find_rule(case.model.get_submodule(n)), HFConv1DRule) for n in conv1d)
    for n in conv1d:
        assert result.paths[f"{n}.weight"] == layer_path
        assert result.paths[f"{n}.bias"] == "dense"


class NormNet(nn.Module):
    """Linear → norm (the class under test) → tanh → Linear, on (N, T, 5) inputs."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 8)
        self.norm = norm
        self.out = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.norm(self.inp(x)))).mean(dim=1)


def _norm_case(norm: nn.Module) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(20)
    with torch.no_grad():
        norm.weight.uniform_(-1.0, 1.5)
    return NormNet(norm), torch.randn(5, 4, 5) * 3, torch.randint(0, 3, (5,))


@pytest.mark.parametrize("qualified", [*SCALE_CLASSES, *OFFSET_SCALE_CLASSES])
def test_each_registered_rms_norm_class_matches_loop(qualified: str) -> None:
    pytest.importorskip("transformers")
    module, _, cls_name = qualified.rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    norm = cls(8, eps=1e-5)
    assert isinstance(find_rule(norm), HFRMSNormRule)
    model, x, y = _norm_case(norm)
    ref = per_example_gram(copy.deepcopy(model).double(), x.double(), y, method="loop")
    result = per_example_gram_blocks(model, x, y, method="hooks")
    assert rel_err(result.gram, ref) <= 1e-5
    assert rel_err(result.blocks["norm"], _norm_block_reference(model, x, y)) <= 1e-5
    assert result.paths["norm.weight"] == "dense"


def _norm_block_reference(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    m64 = copy.deepcopy(model).double()
    return per_example_gram(m64, x.double(), y, method="loop", params="norm")


class EmbeddingNet(nn.Module):
    """Embedding (the class under test) → tanh → mean over tokens → Linear."""

    def __init__(self, emb: nn.Module) -> None:
        super().__init__()
        self.emb = emb
        self.out = nn.Linear(6, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.out(torch.tanh(self.emb(ids)).mean(dim=1))


@pytest.mark.parametrize("qualified", SCALED_EMBEDDING_CLASSES)
def test_each_registered_scaled_embedding_class_matches_loop(qualified: str) -> None:
    pytest.importorskip("transformers")
    module, _, cls_name = qualified.rpartition(".")
    cls = getattr(importlib.import_module(module), cls_name)
    torch.manual_seed(21)
    emb = cls(12, 6, 0, embed_scale=2.5)  # padding_idx 0: no gradient at padded positions
    assert isinstance(find_rule(emb), HFScaledEmbeddingRule)
    model = EmbeddingNet(emb)
    ids = torch.randint(1, 12, (5, 4))
    ids[1, 2:] = 0
    ids[3, 1:] = 0
    y = torch.randint(0, 3, (5,))
    ref = per_example_gram(copy.deepcopy(model).double(), ids, y, method="loop")
    for layer_path in ("kernel_trick", "materialize"):
        result = per_example_gram_blocks(model, ids, y, method="hooks", layer_path=layer_path)
        assert rel_err(result.gram, ref) <= 1e-5
        assert result.paths["emb.weight"] == layer_path


class SquaredScaleRMSNorm(nn.Module):
    """Looks like an RMSNorm (weight, variance_epsilon) but computes ``w² ⊙ x̂``: ∂y/∂w = 2w ⊙ x̂."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.variance_epsilon = 1e-6

    def forward(self, x: Tensor) -> Tensor:
        return self.weight**2 * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


class ScaledConv1D(nn.Module):
    """Looks like HF's Conv1D but computes ``x (2W) + b``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.randn(nf))

    def forward(self, x: Tensor) -> Tensor:
        return x @ (2 * self.weight) + self.bias


@pytest.mark.parametrize("module_cls", [SquaredScaleRMSNorm, ScaledConv1D])
def test_name_registered_rule_refuses_a_forward_with_other_math(module_cls: type[nn.Module]) -> None:
    """A class registered by name whose forward is not the rule's math goes to the exact fallback."""
    qualified = f"{module_cls.__module__}.{module_cls.__qualname__}"
    rule = HFRMSNormRule() if module_cls is SquaredScaleRMSNorm else HFConv1DRule()
    base._BY_NAME[qualified] = rule
    try:
        layer = module_cls(8) if module_cls is SquaredScaleRMSNorm else module_cls(8, 8)
        assert find_rule(layer) is rule
        assert rule.unsupported_reason(layer) is not None
        model, x, y = _norm_case(layer)
        ref = per_example_gram(copy.deepcopy(model).double(), x.double(), y, method="loop")
        result = run(Case("fake", model, x, y), method="auto")
        assert rel_err(result.gram, ref) <= 1e-5
        assert result.paths["norm.weight"] in FALLBACK_PATHS
    finally:
        base._BY_NAME.pop(qualified, None)
