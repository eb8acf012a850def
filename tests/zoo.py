"""Small models covering every layer rule and every fallback, for exactness tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Case:
    name: str
    model: nn.Module
    inputs: Any
    targets: Tensor


def mlp() -> Case:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(10, 16), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)
    )
    return Case("mlp", model, torch.randn(7, 10), torch.randint(0, 4, (7,)))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2, bias=False)
        self.dw = nn.Conv2d(8, 8, 3, padding="same", groups=8, padding_mode="reflect")
        self.c3 = nn.Conv2d(8, 6, (2, 3), stride=(1, 2))
        self.gn = nn.GroupNorm(3, 6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.c1(x)))
        x = F.relu(self.c2(x))
        x = self.dw(x)
        x = self.gn(self.c3(x))
        return self.fc(x.mean(dim=(2, 3)))


def cnn() -> Case:
    torch.manual_seed(1)
    model = ConvNet()
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return Case("cnn", model, torch.randn(6, 3, 12, 12), torch.randint(0, 5, (6,)))


class TextConv(nn.Module):
    """Embedding (padding_idx) → Conv1d → LayerNorm → RMSNorm → Conv3d-free head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8, padding_idx=0)
        self.conv = nn.Conv1d(8, 12, 3, padding=1)
        self.ln = nn.LayerNorm(12)
        self.rms = nn.RMSNorm(12)
        self.head = nn.Linear(12, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.conv(self.emb(tokens).transpose(1, 2)).transpose(1, 2)
        h = self.rms(F.gelu(self.ln(h)))
        return self.head(h.mean(dim=1))


def text_conv() -> Case:
    torch.manual_seed(2)
    tokens = torch.randint(0, 20, (6, 9))
    tokens[:, -2:] = 0  # padding
    return Case("text_conv", TextConv(), tokens, torch.randint(0, 3, (6,)))


class TiedLM(nn.Module):
    """Embedding whose weight is reused by the output Linear (and a functional use)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(15, 6)
        self.mix = nn.Linear(6, 6)
        self.out = nn.Linear(6, 15, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, tokens: Tensor) -> Tensor:
        h = torch.tanh(self.mix(self.emb(tokens)))
        h = torch.tanh(self.mix(h))  # the same Linear called twice
        return self.out(h.mean(dim=1))


def tied() -> Case:
    torch.manual_seed(3)
    return Case("tied", TiedLM(), torch.randint(0, 15, (5, 4)), torch.randint(0, 15, (5,)))


class FunctionalTied(nn.Module):
    """Weight used through its module and again functionally (F.linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 5)
        self.proj = nn.Linear(5, 5)

    def forward(self, tokens: Tensor) -> Tensor:
        h = torch.tanh(self.proj(self.emb(tokens))).mean(dim=1)
        return F.linear(h, self.emb.weight)


def functional_tied() -> Case:
    torch.manual_seed(4)
    return Case("functional_tied", FunctionalTied(), torch.randint(0, 11, (5, 3)), torch.randint(0, 11, (5,)))


class AttentionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(13, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.ln = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.emb(tokens)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(self.ln(h + a).mean(dim=1))


def attention() -> Case:
    torch.manual_seed(5)
    return Case("attention", AttentionNet(), torch.randint(0, 13, (5, 6)), torch.randint(0, 3, (5,)))


class RawParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(6))
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.tanh(x * self.scale))


def raw_param() -> Case:
    torch.manual_seed(6)
    return Case("raw_param", RawParam(), torch.randn(5, 6), torch.randint(0, 3, (5,)))


def conv3d() -> Case:
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv3d(2, 4, 2, stride=(1, 2, 1), padding=(1, 0, 1)), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)
    )
    x = torch.randn(4, 2, 3, 4, 3)
    model(x)  # materialise the lazy layer
    return Case("conv3d", model, x, torch.randint(0, 3, (4,)))


def tiny_bert() -> Case:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(8)
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=16,
        num_labels=3,
        attn_implementation="eager",
    )
    model = BertForSequenceClassification(config)
    ids = torch.randint(5, 40, (4, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[3, 4:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return Case("tiny_bert", model, {"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (4,)))


ZOO: dict[str, Callable[[], Case]] = {
    f.__name__: f for f in (mlp, cnn, text_conv, tied, functional_tied, attention, raw_param, conv3d, tiny_bert)
}
