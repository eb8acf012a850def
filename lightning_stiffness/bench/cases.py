"""The benchmark's cases: models with probe batches (MLP, paper v3's CNN, ResNet-18, BERT) and
the ``--only`` keys that build them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BenchCase", "bert_case", "build_cases", "mlp_case", "resnet18_case", "small_cnn_case", "three_conv_net"]


@dataclass
class BenchCase:
    name: str
    model: nn.Module
    inputs: Any
    targets: Tensor
    skip: dict[str, str] = field(default_factory=dict)  # method -> why it is not run


def mlp_case(n: int, device: torch.device, width: int) -> BenchCase:
    model = nn.Sequential(nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    return BenchCase(
        f"MLP 784-{width}-{width}-10",
        model.to(device),
        torch.randn(n, 784, device=device),
        torch.randint(0, 10, (n,), device=device),
    )


#: Forced kernel trick on 32x32 convolutions: T = H·W = 1024 positions, about 10¹³ FLOP at N = 256 (minutes on a
#: CPU); the cost model never takes that path there, so the benchmark does not either.
GHOST_ON_EARLY_CONVS = "T = 1024 convs, ~1e13 FLOP"


def three_conv_net(channels: tuple[int, int, int]) -> nn.Sequential:
    """3x3 convs ('same' padding, ReLU, 2x2 max-pool each) on 32x32 RGB, then one Linear."""
    layers: list[nn.Module] = []
    width = 3
    for c in channels:
        layers += [nn.Conv2d(width, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        width = c
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * 4 * 4, 10))


def small_cnn_case(n: int, device: torch.device, channels: tuple[int, int, int] = (16, 32, 32)) -> BenchCase:
    model = three_conv_net(channels)
    name = "-".join(map(str, channels))
    return BenchCase(
        f"CNN {name}{' (paper v3)' if channels == (16, 32, 32) else ''}, 32x32",
        model.to(device),
        torch.randn(n, 3, 32, 32, device=device),
        torch.randint(0, 10, (n,), device=device),
        skip={"kernel_trick": GHOST_ON_EARLY_CONVS},
    )


def resnet18_case(n: int, device: torch.device) -> BenchCase:
    from torchvision.models import resnet18

    model = resnet18(num_classes=10)
    return BenchCase(
        "ResNet-18 (eval BN), 32x32",
        model.to(device),
        torch.randn(n, 3, 32, 32, device=device),
        torch.randint(0, 10, (n,), device=device),
        skip={"kernel_trick": GHOST_ON_EARLY_CONVS},
    )


def bert_case(n: int, device: torch.device, *, base: bool, seq_len: int) -> BenchCase:
    from transformers import BertConfig, BertForSequenceClassification

    config: Any

    head: dict[str, Any] = {"num_labels": 3, "attn_implementation": "sdpa"}
    if base:
        config = BertConfig(**head)
        name = f"BERT-base (110M), {seq_len} tokens"
    else:
        small: dict[str, Any] = {
            "vocab_size": 1000,
            "hidden_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        }
        config = BertConfig(intermediate_size=256, **small, **head)
        name = f"tiny BERT (2x128), {seq_len} tokens"
    model = BertForSequenceClassification(config).to(device)  # type: ignore[arg-type]
    ids = torch.randint(1, config.vocab_size, (n, seq_len), device=device)
    mask = torch.ones_like(ids)
    mask[: n // 2, seq_len * 3 // 4 :] = 0
    return BenchCase(name, model, {"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (n,), device=device))


CaseFactory = Callable[[], tuple[BenchCase, int, bool]]


def build_cases(device: torch.device, full: bool) -> list[tuple[str, CaseFactory]]:
    """(name, factory → (case, N, run the recipe?)); CPU sizes by default, GPU sizes
    with ``--full``. Factories are lazy, so ``--only`` needs only the packages its cases use."""
    gpu = device.type == "cuda"
    width, n_resnet = (1024, 512) if gpu else (512, 128)
    cases: list[tuple[str, CaseFactory]] = [
        ("mlp", lambda: (mlp_case(512, device, width), 512, True)),
        ("cnn", lambda: (small_cnn_case(256, device), 256, True)),
        ("cnn-wide", lambda: (small_cnn_case(256, device, (64, 128, 256)), 256, True)),
        ("resnet18", lambda: (resnet18_case(n_resnet, device), n_resnet, True)),
        ("tiny-bert", lambda: (bert_case(64, device, base=False, seq_len=32), 64, True)),
    ]
    if full:
        cases.append(("mlp-8192", lambda: (mlp_case(8192, device, 2048), 8192, False)))
        cases.append(("bert-base", lambda: (bert_case(256, device, base=True, seq_len=128), 256, False)))
    return cases
