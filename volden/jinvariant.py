"""The self-supervised loss of any denoiser, made J-invariant by masking, on blocks of a lazy volume.

For one phase of a J-partition grid the masked voxels are replaced by the mean of their unmasked
neighbours (the donut fill of :mod:`volden.masking`), the denoiser runs on that input, and its
output is compared with the noisy values of the masked voxels. The output there does not read
those values, so with noise independent between voxels the loss is the true error plus the
noise variance (Batson & Royer, 2019): it ranks denoisers as the clean volume would, from the
noisy data alone, and a classic filter, a trained network and the raw input (whose J-invariant
version is the fill itself) are measured on one scale, in squared input units.

Blocks are read with a margin of real context, so filters see what they would see in the whole
volume; beyond the volume's edge the filled block is extended by reflection, after masking, so
no reflected copy of a masked voxel reaches the denoiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol, Sequence

import dask
import dask.array as da
import numpy as np
import torch

from .errors import VoldenError
from .masking import apply_mask, phase_mask
from .normalisation import sample_chunk_indices

Box = tuple[tuple[int, int], ...]
GRID = (3, 3, 3)  # the loss's partition: 1/27 of the voxels per phase, the paper's density (about 1/25)
BLOCK = (32, 64, 64)  # the blocks measured, at most this large
BLOCKS = 8
PHASES = 4  # per block: blocks differ in content more than phases do


class Denoiser(Protocol):
    """What the loss needs of a denoiser: a function of an array, and how far it reads."""

    reach: tuple[int, int, int]

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Identity:
    """No denoising: the raw input, whose J-invariant version is the donut fill."""

    reach: tuple[int, int, int] = (0, 0, 0)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return image

    def __str__(self) -> str:
        return "input (no denoising)"


class Losses(NamedTuple):
    """Mean squared error on the masked voxels per denoiser, and how many voxels it averages."""

    values: np.ndarray
    voxels: int


def sample_blocks(region: Box, block: Sequence[int], count: int, seed: int = 0) -> list[Box]:
    """Up to ``count`` blocks chosen at random from a tiling of ``region`` into near-equal cells
    of at most ``block`` voxels (so together they can cover all of it)."""
    edges = [np.linspace(lo, hi, -(-(hi - lo) // b) + 1).round().astype(int) for (lo, hi), b in zip(region, block)]
    cells = tuple(len(e) - 1 for e in edges)
    picks = sample_chunk_indices(cells, count, np.random.default_rng(seed))
    return [tuple((int(e[i]), int(e[i + 1])) for e, i in zip(edges, index)) for index in picks]


@dataclass(frozen=True)
class _Block:
    values: np.ndarray  # the block and its margin, clipped to the volume
    pad: list[tuple[int, int]]  # the rest of the margin, beyond the volume's edge
    core: tuple[slice, ...]  # the block inside ``values``


def _read_blocks(data: da.Array, boxes: Sequence[Box], margin: Sequence[int]) -> list[_Block]:
    """Every block with its margin, read in one parallel pass."""
    outer = [[(max(lo - m, 0), min(hi + m, n)) for (lo, hi), m, n in zip(box, margin, data.shape)] for box in boxes]
    arrays = dask.compute(*[data[tuple(slice(a, b) for a, b in o)] for o in outer])
    return [
        _Block(
            values=np.asarray(values, dtype=np.float32),
            pad=[(m - (lo - a), m - (b - hi)) for (lo, hi), (a, b), m in zip(box, o, margin)],
            core=tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(box, o)),
        )
        for box, o, values in zip(boxes, outer, arrays)
    ]


def masked_losses(
    data: da.Array,
    boxes: Sequence[Box],
    denoisers: Sequence[Denoiser],
    grid: tuple[int, int, int] = GRID,
    phases: int | None = None,
    seed: int = 0,
) -> Losses:
    """Self-supervised loss of the J-invariant version of each denoiser over the blocks ``boxes``.

    Parameters
    ----------
    data : dask array
        The noisy volume (z, y, x); only the blocks and their margins are read.
    boxes : sequence of ((z0, z1), (y0, y1), (x0, x1))
        Where to measure, e.g. from :func:`sample_blocks`.
    denoisers : sequence of callables with a ``reach``
        Each maps an array to an array of the same shape and reads ``reach`` voxels either side.
    grid : (int, int, int)
        The J-partition; masked voxels are this far apart, so each fill reads no masked voxel.
    phases : int, optional
        Phases measured per block, drawn at random (all of them by default). Every denoiser sees
        the same blocks and phases, so their differences are measured more closely than their
        values.
    seed : int
        Seeds the choice of phases.
    """
    if any(n < g for n, g in zip(data.shape, grid)):
        raise VoldenError(f"the volume {tuple(data.shape)} is smaller than the masking grid {grid}")
    margin = np.max([d.reach for d in denoisers], axis=0)
    all_phases = list(np.ndindex(*grid))
    rng = np.random.default_rng(seed)
    sums = np.zeros(len(denoisers))
    voxels = 0
    for block in _read_blocks(data, boxes, margin):
        count = len(all_phases) if phases is None else min(phases, len(all_phases))
        for p in rng.choice(len(all_phases), count, replace=False):
            mask = phase_mask(block.values.shape, grid, all_phases[p])
            filled = apply_mask(torch.from_numpy(block.values)[None, None], mask[None, None])[0, 0].numpy()
            padded = np.pad(filled, block.pad, mode="reflect")
            core = mask.numpy()[block.core]
            target = block.values[block.core][core].astype(np.float64)
            for i, denoise in enumerate(denoisers):
                # each denoiser gets just its own reach of context: the core's values are the same
                view = tuple(slice(m - r, m + s.stop - s.start + r) for m, r, s in zip(margin, denoise.reach, block.core))
                out = denoise(padded[view])[tuple(slice(r, -r or None) for r in denoise.reach)]
                sums[i] += np.sum((out[core] - target) ** 2)
            voxels += int(core.sum())
    return Losses(sums / max(voxels, 1), voxels)


def ranking_lines(named: Sequence[tuple[str, float]], voxels: int, blocks: int, where: str) -> list[str]:
    """A ranked table of losses, lowest first, with what they were measured on."""
    width = max(len(name) for name, _ in named)
    ranked = sorted(named, key=lambda item: item[1])
    return [
        f"self-supervised loss (MSE on masked voxels, squared input units; lower is better) on {voxels} masked "
        f"voxels of {blocks} block{'s' if blocks > 1 else ''} of {where}:",
        f"rank  {'denoiser':<{width}}  loss",
        *(f"{rank:>4}  {name:<{width}}  {loss:.5g}" for rank, (name, loss) in enumerate(ranked, 1)),
        "(the input's J-invariant version is the mean of each voxel's 26 neighbours: a mild denoiser itself)",
    ]
