"""SegNet: an encoder-decoder whose decoder up-samples with the encoder's max-pooling indices.

Badrinarayanan et al., "SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image
Segmentation" (TPAMI 2017). Each encoder stage is a few conv-BN-ReLU blocks followed by a 2x2 max
pooling that keeps its argmax indices; the matching decoder stage max-unpools with those indices
(so boundaries are restored where the encoder found them, without learned up-sampling) and
convolves. With ``depth=5, base_width=64, convs_per_stage=(2, 2, 3, 3, 3), kernel_size=3`` this is
the SegNet-VGG16 shape.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class SegNetConfig:
    """Everything that determines a SegNet's shape; checkpoints carry it."""

    depth: int = 5  # encoder stages (each halves the resolution); 96 px allows up to 5
    base_width: int = 64  # filters of stage 1; each later stage doubles them ...
    max_width: int = 512  # ... up to this cap (VGG16 stops at 512)
    convs_per_stage: tuple[int, ...] = (2, 2, 3, 3, 3)  # conv-BN-ReLU blocks, one number per stage
    kernel_size: int = 3  # odd, so that "same" padding keeps the size
    dropout: float = 0.0  # channel dropout after the deepest encoder and decoder stages
    in_channels: int = 1  # greyscale MR
    num_classes: int = 4  # background, RV, myocardium, LV

    def __post_init__(self) -> None:
        if not 1 <= self.depth <= 6:
            raise ValueError(f"depth must be within 1..6, got {self.depth}")
        if len(self.convs_per_stage) != self.depth:
            raise ValueError(
                f"convs_per_stage needs one entry per stage ({self.depth}), got {self.convs_per_stage}"
            )
        if min(self.convs_per_stage) < 1:
            raise ValueError(f"every stage needs at least one conv, got {self.convs_per_stage}")
        if self.kernel_size % 2 == 0 or self.kernel_size < 1:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.base_width < 1 or self.max_width < self.base_width:
            raise ValueError(f"need 1 <= base_width <= max_width, got {self.base_width}, {self.max_width}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be within [0, 1), got {self.dropout}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Filters of each encoder stage, e.g. (64, 128, 256, 512, 512)."""
        return tuple(min(self.base_width * 2**i, self.max_width) for i in range(self.depth))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SegNetConfig:
        values = dict(values)
        values["convs_per_stage"] = tuple(values["convs_per_stage"])
        return cls(**values)


def _conv_block(c_in: int, c_out: int, kernel_size: int) -> nn.Sequential:
    # No conv bias: BatchNorm's shift makes it redundant.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _stage(widths: list[int], kernel_size: int) -> nn.Sequential:
    """Conv blocks taking widths[0] channels through widths[1], ..., widths[-1]."""
    return nn.Sequential(*(_conv_block(a, b, kernel_size) for a, b in itertools.pairwise(widths)))


class SegNet(nn.Module):
    """SegNet with max-unpooling by the encoder's pooling indices.

    ``forward``: ``(B, in_channels, H, W) -> (B, num_classes, H, W)`` logits (no softmax), where
    H and W are divisible by ``2**depth``.
    """

    def __init__(
        self,
        *,
        depth: int = 5,
        base_width: int = 64,
        max_width: int = 512,
        convs_per_stage: tuple[int, ...] = (2, 2, 3, 3, 3),
        kernel_size: int = 3,
        dropout: float = 0.0,
        in_channels: int = 1,
        num_classes: int = 4,
    ) -> None:
        super().__init__()
        self.config = SegNetConfig(
            depth=depth,
            base_width=base_width,
            max_width=max_width,
            convs_per_stage=tuple(convs_per_stage),
            kernel_size=kernel_size,
            dropout=dropout,
            in_channels=in_channels,
            num_classes=num_classes,
        )
        widths = self.config.widths
        k = kernel_size

        self.encoders = nn.ModuleList()
        c_in = in_channels
        for width, n_convs in zip(widths, convs_per_stage):
            self.encoders.append(_stage([c_in] + [width] * n_convs, k))
            c_in = width

        # Decoder stage i mirrors encoder stage i: its convs keep stage i's width and the last
        # one steps down to the width of stage i-1 (stage 0 keeps its own, for the classifier).
        self.decoders = nn.ModuleList()
        for i, (width, n_convs) in enumerate(zip(widths, convs_per_stage)):
            c_out = widths[i - 1] if i > 0 else width
            self.decoders.append(_stage([width] * n_convs + [c_out], k))

        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(widths[0], num_classes, k, padding=k // 2)

    @classmethod
    def from_config(cls, config: SegNetConfig) -> SegNet:
        return cls(**config.to_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []  # (indices, size before pooling) per stage
        for encoder in self.encoders:
            x = encoder(x)
            size = x.shape[-2:]
            x, indices = F.max_pool2d(x, 2, stride=2, return_indices=True)
            pooled.append((indices, size))
        x = self.dropout(x)
        for i in reversed(range(len(self.decoders))):
            indices, size = pooled[i]
            x = F.max_unpool2d(x, indices, 2, stride=2, output_size=size)
            x = self.decoders[i](x)
            if i == len(self.decoders) - 1:
                x = self.dropout(x)
        return self.classifier(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
