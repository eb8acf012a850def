"""Tiny models from the libraries our users use (torchvision, Hugging Face transformers), for the
exactness matrix (tests/test_exactness_matrix.py) and the table in docs/performance.md.

Each builder returns a :class:`tests.zoo.Case` (model, inputs, targets), seeded, small enough that
the float64 per-example loop takes well under a second. ``ALLOWED_FALLBACK`` lists, per case, the
parameters that may still go to the exact vmap/loop fallback because no layer rule covers them
yet; every other parameter must take a rule's path.

Run ``python -m tests.library_zoo`` to print the measured table (error of ``auto`` and ``vmap``
against the float64 loop, path taken, number of fallback parameters).
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.zoo import Case

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

N = 4  # examples per case
SEQ = 7  # tokens per example
VOCAB = 64
CLASSES = 3


# ---------------------------------------------------------------- torchvision


def _image_case(name: str, build: Callable[[], nn.Module], size: int = 32, seed: int = 0) -> Case:
    torch.manual_seed(seed)
    model = build()
    _randomize_batchnorm(model)
    return Case(name, model, torch.randn(N, 3, size, size), torch.randint(0, CLASSES, (N,)))


def _randomize_batchnorm(model: nn.Module) -> None:
    """Non-trivial running statistics, so eval-mode BatchNorm is not the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)


def resnet18() -> Case:
    from torchvision.models import resnet18 as build

    return _image_case("resnet18", lambda: build(num_classes=CLASSES))


def mobilenet_v3_small() -> Case:
    from torchvision.models import mobilenet_v3_small as build

    return _image_case("mobilenet_v3_small", lambda: build(num_classes=CLASSES))


def squeezenet1_1() -> Case:
    from torchvision.models import squeezenet1_1 as build

    return _image_case("squeezenet1_1", lambda: build(num_classes=CLASSES), size=48)


def efficientnet_b0() -> Case:
    from torchvision.models import efficientnet_b0 as build

    return _image_case("efficientnet_b0", lambda: build(num_classes=CLASSES))


def vit_tiny() -> Case:
    """torchvision's VisionTransformer class with a tiny configuration (the vit_b_16 code path)."""
    from torchvision.models.vision_transformer import VisionTransformer

    return _image_case(
        "vit_tiny",
        lambda: VisionTransformer(
            image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=CLASSES
        ),
        size=16,
    )


def convnext_tiny_1stage() -> Case:
    """torchvision's ConvNeXt class, one narrow block per stage (the convnext_tiny code path)."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    settings = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, 24, 1), CNBlockConfig(24, None, 1)]
    return _image_case("convnext_small_cfg", lambda: ConvNeXt(settings, num_classes=CLASSES))


# ---------------------------------------------------------------- Hugging Face

#: Larger than the default 0.02 so attention is far from uniform and masks change the result.
INIT = 0.3


def _tokens(padding: str, seed: int) -> tuple[Tensor, Tensor | None]:
    """Token ids in [3, VOCAB) and an attention mask: ``none`` (no mask passed), ``right`` or ``left``
    (two of the examples padded with id 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (N, SEQ), generator=g)
    if padding == "none":
        return ids, None
    mask = torch.ones_like(ids)
    if padding == "right":
        mask[1, 5:] = 0
        mask[3, 3:] = 0
    elif padding == "left":
        mask[1, :2] = 0
        mask[3, :4] = 0
    else:
        raise ValueError(padding)
    return ids.masked_fill(mask == 0, 0), mask


def _text_inputs(padding: str, seed: int) -> dict[str, Tensor]:
    ids, mask = _tokens(padding, seed)
    return {"input_ids": ids} if mask is None else {"input_ids": ids, "attention_mask": mask}


def _hf_classifier(
    name: str, config_cls: str, model_cls: str, padding: str, seed: int, attn: str | None = None, **config: Any
) -> Case:
    import transformers

    torch.manual_seed(seed)
    cfg = getattr(transformers, config_cls)(num_labels=CLASSES, pad_token_id=0, initializer_range=INIT, **config)
    if attn is not None:
        cfg._attn_implementation = attn
    model = getattr(transformers, model_cls)(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    return Case(name, model, _text_inputs(padding, seed), torch.randint(0, CLASSES, (N,), generator=g))


_BERT_LIKE = dict(
    vocab_size=VOCAB,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=32,
)
_DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=24,
    max_position_embeddings=32,
)


def bert(padding: str = "right") -> Case:
    return _hf_classifier(f"bert/{padding}", "BertConfig", "BertForSequenceClassification", padding, 10, **_BERT_LIKE)


def roberta(padding: str = "left") -> Case:
    return _hf_classifier(
        f"roberta/{padding}", "RobertaConfig", "RobertaForSequenceClassification", padding, 11, **_BERT_LIKE
    )


def gpt2(padding: str = "right", attn: str | None = None) -> Case:
    suffix = f"/{attn}" if attn else ""
    return _hf_classifier(
        f"gpt2/{padding}{suffix}",
        "GPT2Config",
        "GPT2ForSequenceClassification",
        padding,
        12,
        attn,
        vocab_size=VOCAB,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=32,
        bos_token_id=1,
        eos_token_id=2,
    )


def gpt2_lm(padding: str = "right") -> Case:
    """GPT-2 language model (``lm_head`` tied to the token embedding), per-token targets; padded
    positions carry the target -100, which cross-entropy ignores."""
    import transformers

    torch.manual_seed(19)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=32, initializer_range=INIT, pad_token_id=0
    )
    model = transformers.GPT2LMHeadModel(cfg)
    inputs = _text_inputs(padding, 19)
    targets = torch.roll(inputs["input_ids"], -1, dims=1)
    if "attention_mask" in inputs:
        targets = targets.masked_fill(torch.roll(inputs["attention_mask"], -1, dims=1) == 0, -100)
    return LibraryCase(f"gpt2-lm/{padding}", model, inputs, targets, token_loss)


def llama(padding: str = "left") -> Case:
    return _hf_classifier(f"llama/{padding}", "LlamaConfig", "LlamaForSequenceClassification", padding, 13, **_DECODER)


def qwen2(padding: str = "right") -> Case:
    return _hf_classifier(f"qwen2/{padding}", "Qwen2Config", "Qwen2ForSequenceClassification", padding, 14, **_DECODER)


def mistral_sliding(padding: str = "left") -> Case:
    """Mistral with a sliding window shorter than the sequence (a mask that is neither causal nor padding)."""
    return _hf_classifier(
        f"mistral-sw3/{padding}",
        "MistralConfig",
        "MistralForSequenceClassification",
        padding,
        15,
        sliding_window=3,
        **_DECODER,
    )


def gemma(padding: str = "right") -> Case:
    return _hf_classifier(
        f"gemma/{padding}", "GemmaConfig", "GemmaForSequenceClassification", padding, 16, head_dim=8, **_DECODER
    )


@dataclass
class LibraryCase(Case):
    """A case with its own per-example loss (``None``: the library default, cross-entropy on logits)."""

    loss_fn: Callable[[Any, Tensor], Tensor] | None = None


def token_loss(outputs: Any, targets: Tensor) -> Tensor:
    """Per-example language-model loss: token cross-entropies of ``(N, T, V)`` logits, summed over ``T``."""
    return F.cross_entropy(outputs.logits.transpose(1, 2), targets, reduction="none").sum(dim=1)


def _hf_seq2seq(
    name: str, config_cls: str, model_cls: str, padding: str, seed: int, decoder_mask: bool = False, **config: Any
) -> Case:
    """A seq2seq LM: padded encoder input, decoder inputs given (left-padded with their own mask when
    ``decoder_mask``: with right padding a causal decoder would never look at the pads), per-token
    targets summed per example."""
    import transformers

    torch.manual_seed(seed)
    cfg = getattr(transformers, config_cls)(pad_token_id=0, decoder_start_token_id=0, **config)
    model = getattr(transformers, model_cls)(cfg)
    _scale_init(model)
    inputs = _text_inputs(padding, seed)
    g = torch.Generator().manual_seed(seed + 1)
    decoder_ids = torch.randint(3, VOCAB, (N, 5), generator=g)
    targets = torch.randint(3, VOCAB, (N, 5), generator=g)
    inputs = {**inputs, "decoder_input_ids": decoder_ids}
    if decoder_mask:
        dmask = torch.ones_like(decoder_ids)
        dmask[0, :2] = 0
        dmask[2, :1] = 0
        inputs["decoder_attention_mask"] = dmask
        targets = targets.masked_fill(dmask == 0, -100)
    return LibraryCase(name, model, inputs, targets, token_loss)


def _scale_init(model: nn.Module) -> None:
    """Re-draw weights with a larger spread (T5/BART read no ``initializer_range`` of the same meaning)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, INIT)


def t5(padding: str = "right") -> Case:
    return _hf_seq2seq(
        f"t5/{padding}",
        "T5Config",
        "T5ForConditionalGeneration",
        padding,
        17,
        vocab_size=VOCAB,
        d_model=16,
        d_kv=8,
        d_ff=24,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    )


def bart(padding: str = "left", decoder_mask: bool = False) -> Case:
    return _hf_seq2seq(
        f"bart/{padding}" + ("+decoder-mask" if decoder_mask else ""),
        "BartConfig",
        "BartForConditionalGeneration",
        padding,
        18,
        decoder_mask,
        vocab_size=VOCAB,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=24,
        decoder_ffn_dim=24,
        max_position_embeddings=32,
    )


TORCHVISION: dict[str, Callable[[], Case]] = {
    "resnet18": resnet18,
    "mobilenet_v3_small": mobilenet_v3_small,
    "squeezenet1_1": squeezenet1_1,
    "efficientnet_b0": efficientnet_b0,
    "vit_tiny": vit_tiny,
    "convnext_small_cfg": convnext_tiny_1stage,
}

HUGGING_FACE: dict[str, Callable[[], Case]] = {
    "bert/right": lambda: bert("right"),
    "bert/none": lambda: bert("none"),
    "roberta/left": lambda: roberta("left"),
    "gpt2/none": lambda: gpt2("none"),
    "gpt2/right": lambda: gpt2("right"),
    "gpt2/left/eager": lambda: gpt2("left", "eager"),
    "gpt2-lm/right": lambda: gpt2_lm("right"),
    "llama/left": lambda: llama("left"),
    "llama/none": lambda: llama("none"),
    "qwen2/right": lambda: qwen2("right"),
    "mistral-sw3/left": lambda: mistral_sliding("left"),
    "gemma/right": lambda: gemma("right"),
    "t5/right": lambda: t5("right"),
    "bart/left": lambda: bart("left"),
    "bart/none": lambda: bart("none"),
    "bart/right+decoder-mask": lambda: bart("right", decoder_mask=True),
}

LIBRARY_ZOO: dict[str, Callable[[], Case]] = {**TORCHVISION, **HUGGING_FACE}

_BART_POSITIONS = ("model.encoder.embed_positions.", "model.decoder.embed_positions.")

#: Parameters (name prefixes) that no layer rule covers yet; they may use the exact fallback.
#: Everything else must be on a rule's path. Known gaps, as of this matrix:
#: * raw parameters used outside any module (ViT ``class_token``/``pos_embedding``, ConvNeXt ``layer_scale``);
#: * ``nn.MultiheadAttention`` (ViT);
#: * torchvision's ``LayerNorm2d`` (a LayerNorm subclass with its own forward, ConvNeXt);
#: * embeddings looked up with ids that have no example axis: T5's relative attention bias (a
#:   (query, key) bucket table) and BART's learned positions.
ALLOWED_FALLBACK: dict[str, tuple[str, ...]] = {
    "vit_tiny": ("class_token", "encoder.pos_embedding", "encoder.layers.encoder_layer_0.self_attention."),
    "convnext_small_cfg": (
        "features.1.0.layer_scale",
        "features.3.0.layer_scale",
        "features.5.0.layer_scale",
        "features.0.1.",
        "features.2.0.",
        "features.4.0.",
        "classifier.0.",
    ),
    "t5/right": (
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.",
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.",
    ),
    "bart/left": _BART_POSITIONS,
    "bart/none": _BART_POSITIONS,
    "bart/right+decoder-mask": _BART_POSITIONS,
}


def library_zoo_cases() -> list[str]:
    """Names of the cases whose library is installed."""
    names = []
    for name in LIBRARY_ZOO:
        module = "torchvision" if name in TORCHVISION else "transformers"
        try:
            __import__(module)
        except ImportError:
            continue
        names.append(name)
    return names


def fallback_allowed(case: str, param: str) -> bool:
    return any(param.startswith(prefix) for prefix in ALLOWED_FALLBACK.get(case, ()))


# ---------------------------------------------------------------- measurement


@dataclass
class Measurement:
    case: str
    params: int
    err_auto: float
    err_vmap: float
    method: str
    paths: dict[str, int]
    fallback: list[str]
    seconds_auto: float


def _double(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.double() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _double(v) for k, v in obj.items()}
    return obj


def loss_of(case: Case) -> Callable[[Any, Tensor], Tensor] | None:
    return case.loss_fn if isinstance(case, LibraryCase) else None


def float64_loop_reference(case: Case) -> Tensor:
    from lightning_stiffness.gram import per_example_gram

    model64 = copy.deepcopy(case.model).double()
    return per_example_gram(model64, _double(case.inputs), case.targets, loss_fn=loss_of(case), method="loop")


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def measure(name: str) -> Measurement:
    """Errors of ``auto`` and ``vmap`` against the float64 loop, and the paths ``auto`` took."""
    from lightning_stiffness.gram import per_example_gram_blocks

    case = LIBRARY_ZOO[name]()
    ref = float64_loop_reference(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        auto = per_example_gram_blocks(
            case.model, case.inputs, case.targets, loss_fn=loss_of(case), method="auto", return_blocks=False
        )
        seconds = time.perf_counter() - start
        vmapped = per_example_gram_blocks(
            case.model, case.inputs, case.targets, loss_fn=loss_of(case), method="vmap", return_blocks=False
        )
    paths: dict[str, int] = {}
    for strategy in auto.paths.values():
        paths[strategy] = paths.get(strategy, 0) + 1
    fallback = [k for k, v in auto.paths.items() if v.startswith("fallback") or v in ("vmap", "loop")]
    return Measurement(
        name,
        sum(p.numel() for p in case.model.parameters()),
        rel_err(auto.gram, ref),
        rel_err(vmapped.gram, ref),
        auto.method,
        paths,
        fallback,
        seconds,
    )


def markdown_table(rows: list[Measurement]) -> str:
    lines = [
        "| model | params | err auto | err vmap | paths of `auto` (parameter count) | fallback parameters |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        paths = ", ".join(f"{k} {v}" for k, v in sorted(r.paths.items()))
        fallback = f"{len(r.fallback)}" + (f": {_short(r.fallback)}" if r.fallback else "")
        lines.append(f"| {r.case} | {r.params:,} | {r.err_auto:.1e} | {r.err_vmap:.1e} | {paths} | {fallback} |")
    return "\n".join(lines)


def _short(names: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:3])
    return shown + (f" … (+{len(names) - 3})" if len(names) > 3 else "")


if __name__ == "__main__":
    torch.set_num_threads(1)
    results = []
    for case_name in library_zoo_cases():
        results.append(measure(case_name))
        print(f"{case_name}: done", flush=True)
    print(markdown_table(results))
