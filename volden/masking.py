"""3D J-partition masking for Noise2Self.

A J-partition splits the voxels into ``gz * gy * gx`` phases by their coordinates modulo a
grid. In training some phases are masked per sample: their voxels are replaced by a value that
does not depend on them (the mean of their non-masked neighbours, the 'donut'; one non-masked
neighbour drawn at random, Noise2Void's manipulation; or random values drawn from non-masked
voxels), and the loss is taken on those voxels only. Because every fill reads non-masked voxels
only, no fill value ever depends on a masked voxel, whatever the grid spacing and however many
phases are masked together: a union of phases is a J of its own. More masked voxels mean more
loss voxels per step, the lever against the noise of the targets.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

FillMode = Literal["donut", "neighbour", "random"]
FILL_MODES: tuple[str, ...] = ("donut", "neighbour", "random")
_NEIGHBOURS = [offset for offset in itertools.product((-1, 0, 1), repeat=3) if offset != (0, 0, 0)]


def phase_mask(
    shape: tuple[int, int, int],
    grid: tuple[int, int, int],
    phase: tuple[int, int, int],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Boolean mask of the voxels of one phase of the J-partition (True = masked)."""
    axes = [
        (torch.arange(n, device=device) % g) == p for n, g, p in zip(shape, grid, phase)
    ]
    return axes[0][:, None, None] & axes[1][None, :, None] & axes[2][None, None, :]


def phases_mask(
    shape: tuple[int, int, int],
    grid: tuple[int, int, int],
    numbers: list[int],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Boolean mask of the union of the phases numbered ``numbers`` (row-major over the grid)."""
    masks = (phase_mask(shape, grid, tuple(int(i) for i in np.unravel_index(n, grid)), device) for n in numbers)
    return functools.reduce(torch.logical_or, masks)


def random_phase_masks(
    batch: int,
    shape: tuple[int, int, int],
    grid: tuple[int, int, int],
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    phases: int = 1,
) -> torch.Tensor:
    """``phases`` distinct phases drawn at random per sample and masked together, as a
    (batch, 1, z, y, x) boolean tensor."""
    count = math.prod(grid)
    masks = [
        phases_mask(shape, grid, torch.randperm(count, generator=generator)[:phases].tolist(), device)
        for _ in range(batch)
    ]
    return torch.stack(masks)[:, None]


def _donut_kernel(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    kernel = torch.ones((1, 1, 3, 3, 3), dtype=dtype, device=device)
    kernel[0, 0, 1, 1, 1] = 0
    return kernel


def donut_fill(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the non-masked voxels among the 26 neighbours of each voxel.

    Voxels without any non-masked neighbour get the mean of the sample's non-masked voxels.
    """
    keep = (~mask).to(x.dtype)
    kernel = _donut_kernel(x.dtype, x.device)
    total = F.conv3d(x * keep, kernel, padding=1)
    count = F.conv3d(keep, kernel, padding=1)
    return torch.where(count > 0, total / count.clamp_min(1), _sample_mean(x, keep))


def _sample_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of each sample's kept voxels: the fill of a voxel with no kept neighbour."""
    return (x * keep).sum(dim=(2, 3, 4), keepdim=True) / keep.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1)


def neighbour_fill(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """On the masked voxels, the value of one of their 26 neighbours, drawn at random among the
    non-masked ones.

    The input keeps the noise's texture where the donut's mean is smoother than anything the
    network sees at inference. One uniform draw per masked voxel picks the rank of the neighbour
    among the available ones (drawn on the generator's device, so a CPU generator serves CUDA
    too). Voxels without a non-masked neighbour get the sample's mean, as in :func:`donut_fill`.
    """
    keep = ~mask
    padded_x = F.pad(x, (1,) * 6)  # a border of masked zeros: every voxel has 26 neighbours
    padded_keep = F.pad(keep, (1,) * 6)
    strides = torch.tensor(padded_x[:, 0].stride(), device=x.device)
    masked = torch.nonzero(mask[:, 0])  # (n, 4): sample, z, y, x
    centres = ((masked + torch.tensor([0, 1, 1, 1], device=x.device)) * strides).sum(1)
    steps = (torch.tensor(_NEIGHBOURS, device=x.device) * strides[1:]).sum(1)
    neighbours = centres[:, None] + steps[None, :]  # (n, 26) indices into the flat padded sample
    available = padded_keep[:, 0].flatten()[neighbours]
    seen = available.cumsum(1, dtype=torch.uint8)  # available neighbours up to each direction
    count = seen[:, -1]
    draw = torch.rand(len(masked), generator=generator, device=generator.device if generator else x.device)
    rank = (draw.to(x.device) * count).floor().to(torch.uint8) + 1
    choice = (seen < rank[:, None]).sum(1).clamp_max(len(_NEIGHBOURS) - 1)  # where the count reaches the rank
    values = padded_x[:, 0].flatten()[neighbours[torch.arange(len(masked), device=x.device), choice]]
    fallback = _sample_mean(x, keep.to(x.dtype)).flatten()[masked[:, 0]]
    out = x.clone()
    out[mask] = torch.where(count > 0, values, fallback)
    return out


def random_fill(
    x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Values of randomly drawn non-masked voxels of the same sample."""
    flat = x.flatten(1)
    keep = ~mask.flatten(1)
    out = torch.empty_like(flat)
    for b in range(flat.shape[0]):
        pool = flat[b][keep[b]]
        picks = torch.randint(0, pool.numel(), (flat.shape[1],), generator=generator)
        out[b] = pool[picks.to(pool.device)]
    return out.view_as(x)


def apply_mask(
    x: torch.Tensor,
    mask: torch.Tensor,
    fill: FillMode = "donut",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The network input of Noise2Self: ``x`` with the masked voxels replaced by the fill."""
    if fill == "donut":
        values = donut_fill(x, mask)
    elif fill == "neighbour":
        values = neighbour_fill(x, mask, generator)
    elif fill == "random":
        values = random_fill(x, mask, generator)
    else:
        raise ValueError(f"unknown fill mode {fill!r}; expected one of {FILL_MODES}")
    return torch.where(mask, values, x)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked voxels only (the self-supervised loss)."""
    weight = mask.to(prediction.dtype)
    return ((prediction - target) ** 2 * weight).sum() / weight.sum().clamp_min(1)
