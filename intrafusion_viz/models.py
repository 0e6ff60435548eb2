"""Small reference models with the module names the Intra-Fusion experiments use.

The VGG and ResNet definitions follow the layout and module names of the
CIFAR models in ``kuangliu/pytorch-cifar`` (used by the Intra-Fusion paper), so
layer names such as ``features.0`` or ``layer1.0.conv1`` match published
checkpoints. They are written from the architecture description, not copied.

Examples
--------
>>> import torch
>>> from intrafusion_viz.models import build_model
>>> model = build_model("vgg11_bn", num_classes=10, width_mult=0.125)
>>> model(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "MLP",
    "SmallCNN",
    "VGG",
    "VGG_CONFIGS",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
    "BasicBlock",
    "ResNet",
    "resnet18",
    "resnet34",
    "MODEL_NAMES",
    "build_model",
]

#: Channel plans of the CIFAR VGG variants; ``"M"`` is a 2x2 max-pool.
VGG_CONFIGS: dict[str, list[Union[int, str]]] = {
    "VGG11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "VGG13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "VGG16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "VGG19": [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
    ],
}


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, int(round(channels * width_mult)))


class MLP(nn.Module):
    """Fully connected classifier: ``[Linear (+BatchNorm1d) + ReLU] * len(hidden)`` then ``classifier``.

    Parameters
    ----------
    in_features : int
        Number of input features; inputs of any shape ``(B, ...)`` are flattened
        to ``(B, in_features)``.
    hidden : sequence of int
        Width of each hidden layer.
    num_classes : int
        Output size of the final ``classifier`` Linear.
    batch_norm : bool
        Insert ``BatchNorm1d`` between each hidden Linear and its ReLU.

    Examples
    --------
    >>> MLP(64, (32,), 10)(torch.randn(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: Sequence[int] = (64, 32),
        num_classes: int = 10,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU())
            width = size
        self.flatten = nn.Flatten()
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``x`` of shape ``(B, ...)`` with ``in_features`` values per sample to logits ``(B, num_classes)``."""
        return self.classifier(self.features(self.flatten(x)))


class SmallCNN(nn.Module):
    """Tiny CNN for 8x8 digits or 28x28 MNIST.

    Each entry of ``width`` adds ``Conv2d(3x3, padding 1) + BatchNorm2d + ReLU +
    MaxPool2d(2)`` to ``features``; then global average pooling, flatten and a
    Linear ``classifier``.

    Parameters
    ----------
    in_channels : int
        Input channels (1 for grey-scale digits).
    num_classes : int
        Number of output logits.
    width : sequence of int
        Output channels of each conv block.
    input_size : int
        Side of the square input; used to check that every max-pool still has
        at least one pixel to pool (``input_size // 2**len(width) >= 1``).

    Examples
    --------
    >>> SmallCNN(width=(8, 16))(torch.randn(4, 1, 8, 8)).shape
    torch.Size([4, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: Sequence[int] = (16, 32),
        input_size: int = 8,
    ) -> None:
        super().__init__()
        if len(width) == 0:
            raise ValueError("SmallCNN needs at least one conv block (width must be non-empty).")
        if input_size // 2 ** len(width) < 1:
            raise ValueError(
                f"{len(width)} max-pool blocks shrink a {input_size}x{input_size} input below 1 pixel; "
                f"use at most {max(int(input_size).bit_length() - 1, 0)} blocks for this input_size."
            )
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels in width:
            layers += [
                nn.Conv2d(channels, out_channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = out_channels
        self.input_size = input_size
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, in_channels, H, W)`` to logits ``(B, num_classes)``."""
        return self.classifier(self.flatten(self.pool(self.features(x))))


class VGG(nn.Module):
    """CIFAR-style VGG (kuangliu/pytorch-cifar layout) for 32x32 inputs.

    ``features`` holds ``Conv2d(3x3, padding 1) [+ BatchNorm2d] + ReLU(inplace)``
    per channel entry of the config and ``MaxPool2d(2, 2)`` per ``"M"``, ending
    with ``AvgPool2d(1, 1)``; ``classifier`` is ``Linear(512 * width_mult, num_classes)``.
    With batch norm, VGG11's convs are ``features.0, 4, 8, 11, 15, 18, 22, 25``.

    Parameters
    ----------
    cfg_name : {"VGG11", "VGG13", "VGG16", "VGG19"}
        Key of :data:`VGG_CONFIGS`.
    num_classes : int
        Number of output logits.
    batch_norm : bool
        Put a ``BatchNorm2d`` after every conv.
    bias : bool
        Give the convs a bias (the reference models do).
    in_channels : int
        Input channels.
    width_mult : float
        Multiplies every channel count (rounded, at least 1); ``< 1`` gives fast test models.

    Examples
    --------
    >>> VGG("VGG11", width_mult=0.0625)(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        cfg_name: str = "VGG11",
        num_classes: int = 10,
        batch_norm: bool = True,
        bias: bool = True,
        in_channels: int = 3,
        width_mult: float = 1.0,
    ) -> None:
        super().__init__()
        if cfg_name not in VGG_CONFIGS:
            raise ValueError(f"Unknown VGG config {cfg_name!r}; choose one of {sorted(VGG_CONFIGS)}.")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}.")
        layers: list[nn.Module] = []
        channels = in_channels
        for entry in VGG_CONFIGS[cfg_name]:
            if entry == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out_channels = _scaled(int(entry), width_mult)
            layers.append(nn.Conv2d(channels, out_channels, kernel_size=3, padding=1, bias=bias))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            channels = out_channels
        layers.append(nn.AvgPool2d(kernel_size=1, stride=1))
        self.cfg_name = cfg_name
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, in_channels, 32, 32)`` to logits ``(B, num_classes)``."""
        out = self.features(x)
        return self.classifier(out.flatten(1))


def vgg11_bn(num_classes: int = 10, **kwargs) -> VGG:
    """VGG11 with batch norm; ``kwargs`` go to :class:`VGG` (e.g. ``width_mult``)."""
    return VGG("VGG11", num_classes=num_classes, batch_norm=True, **kwargs)


def vgg13_bn(num_classes: int = 10, **kwargs) -> VGG:
    """VGG13 with batch norm; ``kwargs`` go to :class:`VGG`."""
    return VGG("VGG13", num_classes=num_classes, batch_norm=True, **kwargs)


def vgg16_bn(num_classes: int = 10, **kwargs) -> VGG:
    """VGG16 with batch norm; ``kwargs`` go to :class:`VGG`."""
    return VGG("VGG16", num_classes=num_classes, batch_norm=True, **kwargs)


def vgg19_bn(num_classes: int = 10, **kwargs) -> VGG:
    """VGG19 with batch norm; ``kwargs`` go to :class:`VGG`."""
    return VGG("VGG19", num_classes=num_classes, batch_norm=True, **kwargs)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with a residual ``shortcut``.

    ``shortcut`` is an empty ``nn.Sequential`` (identity) when shapes match,
    otherwise ``Sequential(Conv2d(1x1, stride), BatchNorm2d)``.

    Parameters
    ----------
    in_planes, planes : int
        Input and output channels.
    stride : int
        Stride of ``conv1`` and of the projection shortcut.
    bias : bool
        Give the convs a bias.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, kernel_size=1, stride=stride, bias=bias),
                nn.BatchNorm2d(planes * self.expansion),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, in_planes, H, W)`` to ``(B, planes, H / stride, W / stride)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Out-of-place on purpose: an in-place add confuses graph tracers.
        out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """CIFAR-style ResNet (kuangliu/pytorch-cifar layout).

    3x3 stride-1 stem ``conv1`` + ``bn1`` without max-pool, stages
    ``layer1..layer4`` of widths ``width * (1, 2, 4, 8)`` with strides
    ``(1, 2, 2, 2)``, global average pooling and a Linear ``linear``.

    Parameters
    ----------
    block : type
        Residual block class, e.g. :class:`BasicBlock`.
    num_blocks : sequence of 4 int
        Blocks per stage.
    num_classes : int
        Number of output logits.
    in_channels : int
        Input channels.
    width : int
        Channels of the stem and of ``layer1`` (64 in the reference model).
    bias : bool
        Give every conv a bias.

    Examples
    --------
    >>> resnet18(width=4)(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        block: Callable[..., nn.Module] = BasicBlock,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks needs 4 entries (one per stage), got {list(num_blocks)}.")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}.")
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, num_blocks[0], 1, bias)
        self.layer2 = self._make_layer(block, width * 2, num_blocks[1], 2, bias)
        self.layer3 = self._make_layer(block, width * 4, num_blocks[2], 2, bias)
        self.layer4 = self._make_layer(block, width * 8, num_blocks[3], 2, bias)
        self.linear = nn.Linear(width * 8 * getattr(block, "expansion", 1), num_classes)

    def _make_layer(self, block, planes: int, count: int, stride: int, bias: bool) -> nn.Sequential:
        blocks = []
        for block_stride in [stride] + [1] * (count - 1):
            blocks.append(block(self.in_planes, planes, block_stride, bias=bias))
            self.in_planes = planes * getattr(block, "expansion", 1)
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(B, in_channels, H, W)`` (any ``H, W >= 8``) to logits ``(B, num_classes)``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.flatten(1))


def resnet18(num_classes: int = 10, width: int = 64, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-18 (BasicBlock, ``[2, 2, 2, 2]``); ``kwargs`` go to :class:`ResNet`."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, width=width, **kwargs)


def resnet34(num_classes: int = 10, width: int = 64, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-34 (BasicBlock, ``[3, 4, 6, 3]``); ``kwargs`` go to :class:`ResNet`."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_channels=in_channels, width=width, **kwargs)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "small_cnn": SmallCNN,
    "vgg11_bn": vgg11_bn,
    "vgg13_bn": vgg13_bn,
    "vgg16_bn": vgg16_bn,
    "vgg19_bn": vgg19_bn,
    "resnet18": resnet18,
    "resnet34": resnet34,
}

#: Names accepted by :func:`build_model`.
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by registry name.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES` (case-insensitive): ``"mlp"``, ``"small_cnn"``,
        ``"vgg11_bn"``, ``"vgg13_bn"``, ``"vgg16_bn"``, ``"vgg19_bn"``,
        ``"resnet18"``, ``"resnet34"``.
    **kwargs
        Passed to the constructor, e.g. ``num_classes=100`` or ``width_mult=0.25``.

    Returns
    -------
    nn.Module
        A freshly initialised model.

    Raises
    ------
    ValueError
        If ``name`` is not registered; the message lists the valid names.

    Examples
    --------
    >>> build_model("small_cnn", num_classes=10)(torch.randn(3, 1, 8, 8)).shape
    torch.Size([3, 10])
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"Unknown model name {name!r}; valid names are: {', '.join(MODEL_NAMES)}.")
    return _REGISTRY[key](**kwargs)
