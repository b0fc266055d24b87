"""Lazy blocked inference: ``denoise(array, model)`` returns a dask array.

The graph has four layers over the blocks of a :class:`~volden.tiling.Tiling`:
input pieces (the parts of the input blocks each tile needs), tiles (gathered, padded by
reflection at the volume's edge, predicted and weighted by the blending window), tile pieces
(the parts of each weighted tile that fall into each neighbouring block) and output blocks
(summed, divided by the summed weights, returned in the input's units). The model is one key of
the graph, so a distributed worker receives it once and keeps it on its device.
"""

from __future__ import annotations

import operator
from pathlib import Path

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .errors import VoldenError
from .model import Model, load_model
from .predict import default_halo, max_voxels_for, predict_weighted, resolve_device
from .tiling import Blend, Index, Tiling, intersect, weight_sum, window_1d
from .views import DEFAULT_VIEWS, symmetries

def default_block(
    shape: tuple[int, ...], halo: tuple[int, ...], divisor: tuple[int, ...], max_voxels: int
) -> tuple[int, int, int]:
    """The largest block whose tile (block + 2 halo) one forward pass takes at once.

    The halo costs ((B + 2h) / B)^3; for a given tile volume that is least when each side of
    the block is in proportion to its halo, so the side with the most block per halo shrinks
    first. Sides start at the volume's (rounded up to the pooling divisor) and stay at least
    twice the halo.
    """
    block = [-(-s // d) * d for s, d in zip(shape, divisor)]
    least = [max(d, -(-2 * h // d) * d) for h, d in zip(halo, divisor)]
    block = [max(b, m) for b, m in zip(block, least)]
    while np.prod([b + 2 * h for b, h in zip(block, halo)], dtype=np.float64) > max_voxels:
        shrinkable = [a for a in range(3) if block[a] - divisor[a] >= least[a]]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda a: block[a] / max(halo[a], 1))
        block[axis] -= divisor[axis]
    return (block[0], block[1], block[2])


def plan_blocks(
    model: Model,
    shape: tuple[int, ...],
    block: tuple[int, int, int] | None = None,
    halo: tuple[int, int, int] | None = None,
    max_voxels: int | None = None,
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The block and halo to use, or a VoldenError saying why not.

    The default block is sized from ``max_voxels`` (what one forward pass takes on the device
    that will run it; by default this machine's).
    """
    halo = halo or default_halo(model)
    divisor = model.config.divisor
    if block is None:
        budget = max_voxels or max_voxels_for(resolve_device("auto"), model.config.width)
        block = default_block(shape, halo, divisor, budget)
    if any(b % d or h % d for b, h, d in zip(block, halo, divisor)):
        raise VoldenError(
            f"block {tuple(block)} and halo {tuple(halo)} must be multiples of the network's pooling "
            f"{divisor} along each axis, or tiles would pool on different grids"
        )
    if any(h > b for h, b in zip(halo, block)):
        raise VoldenError(f"halo {tuple(halo)} must not exceed the block {tuple(block)}")
    return block, halo


def predict_tile(
    model: Model,
    region: np.ndarray,
    pad: list[tuple[int, int]],
    block: tuple[int, ...],
    halo: tuple[int, ...],
    blend: Blend,
    device: str,
    max_voxels: int | None,
    views: int = DEFAULT_VIEWS,
) -> np.ndarray:
    """The weighted prediction on a tile: ``region`` is its part inside the volume (in the
    input's dtype), ``pad`` what lies outside (filled by reflection, as in training)."""
    window = tuple(window_1d(b, h, blend) for b, h in zip(block, halo))
    return predict_weighted(model, region, pad, window, device, max_voxels, views)  # type: ignore[arg-type]


def tile_geometry(tiling: Tiling, index: Index) -> tuple[list[tuple[int, int]], list[tuple[int, int]], tuple[int, ...]]:
    """A tile's range inside the volume, its padding beyond the volume, and its block's shape."""
    tile = tiling.tile_range(index)
    inside = [(max(a, 0), min(b, n)) for (a, b), n in zip(tile, tiling.shape)]
    pad = [(lo - a, b - hi) for (a, b), (lo, hi) in zip(tile, inside)]
    block_shape = tuple(b - a for a, b in tiling.block_range(index))
    return inside, pad, block_shape


def _gather_and_predict(
    model: Model,
    device: str,
    max_voxels: int | None,
    views: int,
    pieces: list[np.ndarray],
    placements: list[tuple[slice, ...]],
    inside: list[tuple[int, int]],
    pad: list[tuple[int, int]],
    block: tuple[int, ...],
    halo: tuple[int, ...],
    blend: Blend,
) -> np.ndarray:
    region = np.empty([b - a for a, b in inside], dtype=pieces[0].dtype)
    for piece, where in zip(pieces, placements):
        region[where] = piece
    return predict_tile(model, region, pad, block, halo, blend, device, max_voxels, views)


def blend_block(
    model: Model,
    pieces: list[np.ndarray],
    placements: list[tuple[slice, ...]],
    tiling: Tiling,
    index: Index,
    blend: Blend,
) -> np.ndarray:
    """Overlap-add of the weighted tile pieces (in neighbour order), normalised, back in
    input units."""
    weights = weight_sum(tiling, index, blend)
    total = np.zeros(weights.shape, dtype=np.float32)
    for piece, where in zip(pieces, placements):
        total[where] += piece
    total /= weights
    return model.normalisation.invert(total)


def denoise(
    data: da.Array,
    model: Model | str | Path,
    block: tuple[int, int, int] | None = None,
    halo: tuple[int, int, int] | None = None,
    blend: Blend = "gaussian",
    device: str = "auto",
    max_voxels: int | None = None,
    views: int = DEFAULT_VIEWS,
) -> da.Array:
    """Denoise a 3D dask array lazily; the result (float32, input units) is chunked by ``block``.

    ``views`` > 1 averages each tile's prediction over that many symmetries of the yx plane
    (test-time augmentation; see ``predict.symmetries``), at that many times the compute.

    ``device`` is resolved where each task runs, so 'auto' uses a worker's GPU when it has one.
    """
    if data.ndim != 3:
        raise ValueError(f"denoise takes a 3D (z, y, x) array, got shape {data.shape}")
    symmetries(views)  # a bad count fails here, not inside a task
    if not isinstance(model, Model):
        model = load_model(model)
    block, halo = plan_blocks(model, tuple(data.shape), block, halo)
    tiling = Tiling(tuple(data.shape), block, halo)  # type: ignore[arg-type]
    source = data.rechunk(tiling.chunks)
    digest = model.digest
    token = tokenize(source.name, digest, tiling, blend, device, max_voxels, views)
    model_key = f"volden-model-{tokenize(digest, model.normalisation)}"
    in_name, tile_name = f"volden-input-piece-{token}", f"volden-tile-{token}"
    out_piece_name, out_name = f"volden-tile-piece-{token}", f"volden-denoise-{token}"
    graph: dict = {model_key: model}
    for index in tiling.blocks():
        inside, pad, block_shape = tile_geometry(tiling, index)
        keys, placements = [], []
        for n in tiling.neighbours(index):
            overlap = intersect(tiling.block_range(n), inside)
            if overlap is None:
                continue
            key = (in_name, *index, *n)
            graph[key] = (operator.getitem, (source.name, *n), overlap[0])
            keys.append(key)
            placements.append(overlap[1])
        graph[(tile_name, *index)] = (
            _gather_and_predict, model_key, device, max_voxels, views, keys, placements, inside, pad,
            block_shape, tiling.halo, blend,
        )
    for index in tiling.blocks():
        keys, placements = [], []
        for n in tiling.neighbours(index):
            overlap = intersect(tiling.tile_range(n), tiling.block_range(index))
            if overlap is None:
                continue
            key = (out_piece_name, *index, *n)
            graph[key] = (operator.getitem, (tile_name, *n), overlap[0])
            keys.append(key)
            placements.append(overlap[1])
        graph[(out_name, *index)] = (
            blend_block, model_key, keys, placements, tiling, index, blend,
        )
    hlg = HighLevelGraph.from_collections(out_name, graph, dependencies=[source])
    return da.Array(hlg, out_name, chunks=tiling.chunks, dtype=np.float32)
