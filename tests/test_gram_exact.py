"""Exactness of the per-example-gradient Gram on the model zoo, against float64 references.

Every zoo model × every method must reproduce the float64 per-example loop to a relative
Frobenius error of 1e-5 in float32; the library's own loop is in turn checked against a plain
``torch.autograd.grad`` loop that does not use the library at all.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import Tensor, nn

from lightning_stiffness.gram import GramResult, per_example_gram, per_example_gram_blocks
from tests.conftest import double_model, independent_gram, independent_jacobian, rel_err, to_double
from tests.zoo import ZOO, Case

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = [
    ("hooks", "kernel_trick"),
    ("hooks", "materialize"),
    ("hooks", "auto"),
    ("vmap", "auto"),
    ("auto", "auto"),
]

#: Parameters that the kernel path cannot cover and must hand to the exact fallback.
EXPECTED_FALLBACK: dict[str, set[str]] = {
    "functional_tied": {"emb.weight"},
}
#: What the fallback warning must name for those models.
FALLBACK_WARNING_NAMES = {"functional_tied": "emb"}

KRONECKER_TYPES = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding)


def _needs_transformers(name: str) -> None:
    if name == "tiny_bert":
        pytest.importorskip("transformers")


@functools.cache
def case_and_reference(name: str) -> tuple[Case, Tensor]:
    """The zoo case and its float64 per-example-loop Gram (computed once per session)."""
    case = ZOO[name]()
    ref = per_example_gram(double_model(case.model), to_double(case.inputs), case.targets, method="loop")
    assert ref.dtype == torch.float64
    return case, ref


def kronecker_weight_names(model: nn.Module) -> set[str]:
    """Names (as in ``named_parameters``) of the weights of Linear/Conv/Embedding modules."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    return {
        by_id[id(m.weight)]
        for m in model.modules()
        if isinstance(m, KRONECKER_TYPES) and getattr(m, "weight", None) is not None
    }


def run_recording(model: nn.Module, inputs, targets, **kwargs) -> tuple[GramResult, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = per_example_gram_blocks(model, inputs, targets, **kwargs)
    return result, list(caught)


def fallback_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, RuntimeWarning) and "no exact layer rule" in str(w.message)
    ]


def check_structure(result: GramResult, n: int, dtype: torch.dtype, model: nn.Module) -> None:
    gram = result.gram
    assert gram.shape == (n, n)
    assert gram.dtype == dtype
    scale = gram.abs().max()
    assert scale > 0
    assert (gram - gram.T).abs().max() <= 1e-6 * scale, "Gram is not symmetric"
    assert torch.all(torch.diagonal(gram) >= 0), "squared norms on the diagonal must be non-negative"
    # blocks: one per owning module, and they add up to the total
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    expected_blocks = {name.rpartition(".")[0] or name for name in trainable}
    assert set(result.blocks) == expected_blocks
    for block in result.blocks.values():
        assert block.shape == (n, n) and block.dtype == dtype
    total = torch.stack(list(result.blocks.values())).sum(0)
    assert rel_err(total, gram) <= 1e-6
    assert set(result.paths) == set(trainable)


@pytest.mark.parametrize(("method", "layer_path"), CONFIGS)
@pytest.mark.parametrize("name", list(ZOO))
def test_float32_gram_matches_float64_loop(name: str, method: str, layer_path: str) -> None:
    _needs_transformers(name)
    case, ref = case_and_reference(name)
    result, caught = run_recording(case.model, case.inputs, case.targets, method=method, layer_path=layer_path)

    n = case.targets.shape[0]
    check_structure(result, n, torch.float32, case.model)
    assert rel_err(result.gram, ref) <= 1e-5
    assert result.nonfinite_examples == 0

    if method == "vmap":
        assert result.method == "vmap"
        assert set(result.paths.values()) == {"vmap"}
        assert not fallback_warnings(caught)
        return

    assert result.method == "hooks"
    fallback = {k for k, v in result.paths.items() if v.startswith("fallback")}
    expected_fallback = EXPECTED_FALLBACK.get(name, set())
    assert fallback == expected_fallback, result.paths
    messages = fallback_warnings(caught)
    if expected_fallback:
        assert len(messages) == 1, messages
        assert f"covers {len(expected_fallback)} parameter(s)" in messages[0]
        assert FALLBACK_WARNING_NAMES[name] in messages[0]
    else:
        assert not messages, messages

    # MultiheadAttention's out_proj is a Linear that the attention rule covers (dense, module-local)
    kron = {k for k in kronecker_weight_names(case.model) - expected_fallback if ".out_proj." not in k}
    assert kron, "every zoo model has at least one Linear/Conv/Embedding weight on the kernel path"
    for pname, strategy in result.paths.items():
        if pname in expected_fallback:
            continue
        if pname in kron:
            allowed = {layer_path} if layer_path != "auto" else {"kernel_trick", "materialize"}
            assert strategy in allowed, (pname, strategy)
        else:
            assert strategy == "dense", (pname, strategy)


@pytest.mark.parametrize(("method", "layer_path"), [*CONFIGS, ("loop", "auto")])
@pytest.mark.parametrize("name", [n for n in ZOO if n != "tiny_bert"])
def test_float64_model_gives_float64_gram(name: str, method: str, layer_path: str) -> None:
    case, ref = case_and_reference(name)
    model = double_model(case.model)
    result, _ = run_recording(model, to_double(case.inputs), case.targets, method=method, layer_path=layer_path)
    check_structure(result, case.targets.shape[0], torch.float64, model)
    assert rel_err(result.gram, ref) <= 1e-10


@pytest.mark.parametrize("name", [n for n in ZOO if n != "tiny_bert"])
def test_library_loop_matches_independent_autograd_reference(name: str) -> None:
    """The reference itself is checked: plain autograd, one example at a time, flatten, J Jᵀ."""
    case, ref = case_and_reference(name)
    assert isinstance(case.inputs, Tensor)
    model = double_model(case.model)
    independent = independent_gram(model, to_double(case.inputs), case.targets)
    assert rel_err(ref, independent) <= 1e-12
    # and the default float32 path against the independent reference directly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = per_example_gram(case.model, case.inputs, case.targets)
    assert rel_err(fast, independent) <= 1e-5


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_diagonal_is_squared_gradient_norm(name: str) -> None:
    case, _ = case_and_reference(name)
    model = double_model(case.model)
    x = to_double(case.inputs)
    jac = independent_jacobian(model, x, case.targets)
    gram = per_example_gram(model, x, case.targets, method="hooks")
    torch.testing.assert_close(torch.diagonal(gram), (jac * jac).sum(1), rtol=1e-10, atol=0)
    # a genuinely off-diagonal structure, not a scaled identity
    off = gram - torch.diag(torch.diagonal(gram))
    assert off.abs().max() > 1e-3 * gram.abs().max()


def _sdpa_bert() -> tuple[nn.Module, dict[str, Tensor], Tensor]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(11)
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=12,
        num_labels=3,
        initializer_range=0.3,  # non-uniform attention, so the padding mask matters
    )
    model = transformers.BertForSequenceClassification(config)
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(3, 30, (4, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return model, {"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (4,))


@pytest.mark.parametrize("method", ["hooks", "vmap"])
def test_hf_bert_sdpa_padded_mask(method: str) -> None:
    model, inputs, targets = _sdpa_bert()
    ref = per_example_gram(double_model(model), inputs, targets, method="loop")
    assert ref.dtype == torch.float64
    result, caught = run_recording(model, inputs, targets, method=method)
    check_structure(result, 4, torch.float32, model)
    assert rel_err(result.gram, ref) <= 1e-5
    if method == "hooks":
        assert not fallback_warnings(caught)
        assert not any(v.startswith("fallback") for v in result.paths.values()), result.paths
    # the mask matters: ignoring it would change the padded examples' gradients
    unmasked = per_example_gram(double_model(model), {"input_ids": inputs["input_ids"]}, targets, method="loop")
    assert rel_err(unmasked, ref) > 1e-3
