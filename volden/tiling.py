"""Geometry of blocked inference: output blocks, the haloed tiles around them, blending windows.

Output block ``b`` is grown by the halo ``h`` into a tile; the prediction on a tile is weighted
by a window that tapers across the halo. A voxel's output is ``sum_b w_b p_b / sum_b w_b`` over
the tiles that contain it, at most three per axis since ``h <= B``. The windows are separable,
so their sum is the product of per-axis sums.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Literal

import numpy as np

Blend = Literal["gaussian", "linear", "crop"]
BLENDS: tuple[str, ...] = ("gaussian", "linear", "crop")
Index = tuple[int, int, int]
GAUSSIAN_SIGMA = 0.125  # of the tile length, as in MONAI's sliding-window inference


@dataclass(frozen=True)
class Tiling:
    """Blocks of ``block`` voxels (the last one per axis may be shorter) with a halo each."""

    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    halo: tuple[int, int, int]

    def __post_init__(self) -> None:
        if any(b < 1 for b in self.block):
            raise ValueError(f"block {self.block} must be positive")
        if any(h < 0 or h > b for h, b in zip(self.halo, self.block)):
            raise ValueError(f"halo {self.halo} must lie between 0 and the block {self.block}")

    @property
    def grid(self) -> Index:
        n = [-(-s // b) for s, b in zip(self.shape, self.block)]
        return (n[0], n[1], n[2])

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        return tuple(
            tuple(min(b, s - i * b) for i in range(g)) for s, b, g in zip(self.shape, self.block, self.grid)
        )

    def blocks(self) -> Iterator[Index]:
        return itertools.product(*[range(g) for g in self.grid])  # type: ignore[return-value]

    def block_range(self, index: Index) -> list[tuple[int, int]]:
        return [(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, self.block, self.shape)]

    def tile_range(self, index: Index) -> list[tuple[int, int]]:
        """The tile around a block; it may reach past the volume (filled by reflection)."""
        return [(a - h, b + h) for (a, b), h in zip(self.block_range(index), self.halo)]

    def neighbours(self, index: Index) -> Iterator[Index]:
        for offset in itertools.product((-1, 0, 1), repeat=3):
            n = tuple(i + o for i, o in zip(index, offset))
            if all(0 <= v < g for v, g in zip(n, self.grid)):
                yield n  # type: ignore[misc]


def intersect(
    a: list[tuple[int, int]], b: list[tuple[int, int]]
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Where ranges ``a`` and ``b`` overlap, as slices relative to ``a`` and to ``b``."""
    lo = [max(x[0], y[0]) for x, y in zip(a, b)]
    hi = [min(x[1], y[1]) for x, y in zip(a, b)]
    if any(l >= h for l, h in zip(lo, hi)):
        return None
    in_a = tuple(slice(l - x[0], h - x[0]) for l, h, x in zip(lo, hi, a))
    in_b = tuple(slice(l - y[0], h - y[0]) for l, h, y in zip(lo, hi, b))
    return in_a, in_b


@lru_cache(maxsize=64)
def window_1d(block: int, halo: int, blend: Blend) -> np.ndarray:
    """Weights along one axis of a tile of ``block + 2 * halo`` voxels.

    The outer half of the halo gets no weight: predictions there see the tile's edge (zero
    padding inside the network). 'linear' ramps across the remaining overlap of two tiles, so
    neighbouring windows sum to one; 'gaussian' is a Gaussian of sigma 1/8 of the tile; 'crop'
    keeps the block only.
    """
    length = block + 2 * halo
    margin = halo // 2
    t = np.arange(length, dtype=np.float64) + 0.5
    if blend == "crop" or halo == 0:
        w = ((t > halo) & (t < halo + block)).astype(np.float64)
    elif blend == "linear":
        w = np.clip((np.minimum(t, length - t) - margin) / (2 * (halo - margin)), 0, 1)
    elif blend == "gaussian":
        sigma = GAUSSIAN_SIGMA * length
        w = np.exp(-0.5 * ((t - length / 2) / sigma) ** 2)
        w[(t < margin) | (t > length - margin)] = 0
    else:
        raise ValueError(f"unknown blend {blend!r}; expected one of {BLENDS}")
    return w.astype(np.float32)


def tile_window(block: tuple[int, ...], halo: tuple[int, ...], blend: Blend) -> np.ndarray:
    """The separable 3D window of a tile."""
    wz, wy, wx = (window_1d(b, h, blend) for b, h in zip(block, halo))
    return wz[:, None, None] * wy[None, :, None] * wx[None, None, :]


def weight_sum(tiling: Tiling, index: Index, blend: Blend) -> np.ndarray:
    """Summed window weights of all tiles covering block ``index`` (separable product)."""
    sums = []
    for axis in range(3):
        lo, hi = tiling.block_range(index)[axis]
        total = np.zeros(hi - lo, dtype=np.float32)
        for n in (index[axis] - 1, index[axis], index[axis] + 1):
            if not 0 <= n < tiling.grid[axis]:
                continue
            start = n * tiling.block[axis]
            length = min(tiling.block[axis], tiling.shape[axis] - start)
            w = window_1d(length, tiling.halo[axis], blend)
            t0 = start - tiling.halo[axis]
            a, b = max(lo, t0), min(hi, t0 + w.size)
            if a < b:
                total[a - lo : b - lo] += w[a - t0 : b - t0]
        sums.append(total)
    return sums[0][:, None, None] * sums[1][None, :, None] * sums[2][None, None, :]
