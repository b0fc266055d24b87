"""A 3D UNet fit for self-supervised, tiled denoising.

Two constraints from the method shape it (see DESIGN.md): no per-sample normalisation layers
(InstanceNorm/GroupNorm would make overlapping tiles disagree), and no global input-to-output
skip (at inference the unmasked centre voxel would pass its noise straight through). Pooling is
anisotropic: z is pooled only where it is long enough and not much coarser than y and x.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

Factor = tuple[int, int, int]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the network, stored with the model."""

    depth: int = 2
    width: int = 16
    pools: tuple[Factor, ...] = field(default=((1, 2, 2), (2, 2, 2)))
    convs_per_level: int = 2
    outputs: int = 1  # channels of the head: 1 for a denoiser, 2 for a prior (mean, log variance)

    def __post_init__(self) -> None:
        if self.depth < 0 or len(self.pools) != self.depth:
            raise ValueError(f"depth {self.depth} needs {self.depth} pooling factors, got {self.pools}")
        if self.width < 1 or self.convs_per_level < 1 or self.outputs < 1:
            raise ValueError("width, convs_per_level and outputs must be positive")

    @property
    def divisor(self) -> Factor:
        """Input sizes must be multiples of this per axis."""
        total = [1, 1, 1]
        for factor in self.pools:
            total = [t * f for t, f in zip(total, factor)]
        return (total[0], total[1], total[2])

    def to_dict(self) -> dict:
        return {**asdict(self), "pools": [list(p) for p in self.pools]}

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        return cls(
            depth=int(data["depth"]),
            width=int(data["width"]),
            pools=tuple(tuple(int(v) for v in p) for p in data["pools"]),
            convs_per_level=int(data["convs_per_level"]),
            outputs=int(data.get("outputs", 1)),  # model.json written before priors had none
        )


def plan_pools(
    patch: tuple[int, int, int],
    depth: int,
    voxel_size: tuple[float, float, float] | None = None,
    min_size: int = 8,
) -> tuple[Factor, ...]:
    """Pooling factors per level: pool an axis only while it stays >= ``min_size`` voxels
    after pooling and (for z) while its voxels are not coarser than twice those in y and x."""
    size = list(patch)
    spacing = list(voxel_size) if voxel_size else [1.0, 1.0, 1.0]
    pools = []
    for _ in range(depth):
        finest_lateral = min(spacing[1], spacing[2])
        factor = []
        for axis in range(3):
            coarse = axis == 0 and spacing[0] >= 2 * finest_lateral
            pool = size[axis] // 2 >= min_size and size[axis] % 2 == 0 and not coarse
            factor.append(2 if pool else 1)
        for axis in range(3):
            size[axis] //= factor[axis]
            spacing[axis] *= factor[axis]
        pools.append((factor[0], factor[1], factor[2]))
    return tuple(pools)


def _conv_block(channels_in: int, channels_out: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers.append(nn.Conv3d(channels_in if i == 0 else channels_out, channels_out, 3, padding=1))
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


class UNet3D(nn.Module):
    """Encoder-decoder with skip connections between levels, one input channel and ``config.outputs`` output channels."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = [config.width * 2**level for level in range(config.depth + 1)]
        self.encoders = nn.ModuleList(
            _conv_block(1 if level == 0 else widths[level - 1], widths[level], config.convs_per_level)
            for level in range(config.depth)
        )
        self.pools = nn.ModuleList(nn.MaxPool3d(f, f) for f in config.pools)
        self.bottleneck = _conv_block(
            widths[config.depth - 1] if config.depth else 1, widths[config.depth], config.convs_per_level
        )
        self.ups = nn.ModuleList(
            nn.ConvTranspose3d(widths[level + 1], widths[level], f, f)
            for level, f in enumerate(config.pools)
        )
        self.decoders = nn.ModuleList(
            _conv_block(2 * widths[level], widths[level], config.convs_per_level)
            for level in range(config.depth)
        )
        self.head = nn.Conv3d(widths[0], config.outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder, pool in zip(self.encoders, self.pools):
            x = encoder(x)
            skips.append(x)
            x = pool(x)
        x = self.bottleneck(x)
        for level in reversed(range(self.config.depth)):
            x = self.ups[level](x)
            x = self.decoders[level](torch.cat([x, skips[level]], dim=1))
        return self.head(x)


def receptive_radius(config: UNetConfig) -> tuple[int, int, int]:
    """How far (voxels, per axis) an output voxel can see into the input."""
    radius = []
    for axis in range(3):
        scale, reach = 1, 0
        for factor in config.pools:
            reach += config.convs_per_level * scale
            reach += (factor[axis] - 1) * scale
            scale *= factor[axis]
        reach += config.convs_per_level * scale
        for factor in reversed(config.pools):
            scale //= factor[axis]
            reach += (factor[axis] - 1) * scale + config.convs_per_level * scale
        radius.append(reach)
    return (radius[0], radius[1], radius[2])


def unet_from_kwargs(**config) -> UNet3D:
    """The network from plain keyword arguments (those of :meth:`UNetConfig.to_dict`), for
    tools that build a network from a source file and its arguments: a bioimage.io package
    ships this file, which needs nothing but torch."""
    return UNet3D(UNetConfig.from_dict(config))
