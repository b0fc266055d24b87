"""A multiscale pyramid below level 0 of an OME-Zarr image, for viewers.

Each level halves y and x; z is halved too only once it is no coarser than y and x, so an
anisotropic lightsheet stack becomes more isotropic level by level instead of losing its thin
axis first. A level is the mean of the voxels it covers (the edge is repeated where a side is
odd) and its voxels are placed at their centres (an OME ``translation``). Level ``k`` is
computed from level ``k - 1`` as stored, so each level reads the one above it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from . import ome
from .layout import VIEWER_CHUNK, viewer_chunks


def level_factors(meta: ome.ImageMeta, shape: tuple[int, ...], levels: int) -> list[tuple[int, ...]]:
    """Per level below level 0, how much each axis is downsampled relative to the one above."""
    spatial = {a: i for i, a in enumerate(meta.axes) if a in ome.SPATIAL_AXES}
    scale, size = list(meta.scale), list(shape)
    found = []
    for _ in range(levels):
        factors = [1] * len(shape)
        for axis, i in spatial.items():
            halve = axis != "z" or scale[i] <= scale[spatial["y"]]
            if halve and size[i] > 1:
                factors[i] = 2
        for i, f in enumerate(factors):
            scale[i] *= f
            size[i] = -(-size[i] // f)
        found.append(tuple(factors))
    return found


def levels_of(meta: ome.ImageMeta, per_level: list[tuple[int, ...]]) -> list[ome.Level]:
    """The OME levels of the pyramid: level 0 and one per ``per_level`` factors, with their
    scale and offset."""
    found = [ome.Level("0", tuple(meta.scale))]
    total = [1] * len(meta.axes)
    for k, factors in enumerate(per_level, 1):
        total = [t * f for t, f in zip(total, factors)]
        scale = tuple(s * t for s, t in zip(meta.scale, total))
        offset = tuple((t - 1) / 2 * s for s, t in zip(meta.scale, total))
        found.append(ome.Level(str(k), scale, offset))
    return found


def downsample(data: da.Array, factors: tuple[int, ...]) -> da.Array:
    """Mean over ``factors`` windows, the edge repeated to make odd sides whole; same dtype."""
    pad = [(0, -n % f) for n, f in zip(data.shape, factors)]
    if any(p for _, p in pad):
        data = da.pad(data, pad, mode="edge")
    mean = da.coarsen(np.mean, data.astype(np.float32), dict(enumerate(factors)))
    if np.issubdtype(data.dtype, np.integer):
        mean = da.round(mean)
    return mean.astype(data.dtype)


def write_pyramid(path: str | Path, meta: ome.ImageMeta, levels: int, client: Any = None) -> list[ome.Level]:
    """Write ``levels`` downsampled copies of array ``0`` of the image at ``path``; return all
    levels for the OME metadata. Runs on ``client`` when given (a dask distributed client)."""
    group = zarr.open_group(str(path), mode="r+")
    above = group["0"]
    per_level = level_factors(meta, tuple(above.shape), levels)
    found = levels_of(meta, per_level)
    for level, factors in zip(found[1:], per_level):
        data = downsample(da.from_zarr(above), factors)
        chunks = viewer_chunks(data.shape, (1,) * (data.ndim - 3) + VIEWER_CHUNK)
        target = ome.create_level(group, level.path, data.shape, chunks, data.dtype, meta.axes)
        stored = da.store(data.rechunk(chunks), target, lock=False, compute=False)
        if client is not None:
            client.compute(stored).result()
        else:
            dask.compute(stored)
        above = target
    return found
