"""NaN and Inf input voxels, found before anything is written: one such voxel spreads through
the network's receptive field (a NaN at one voxel made 13,520 NaN output voxels).

By default a run refuses them, naming the first chunk that holds one; with ``--nonfinite
fill`` they are counted (the count goes into the output's provenance) and each tile replaces
them as it is read (:func:`fill_nonfinite`) by the model's normalisation mean, the value the
network sees as "nothing here". Integer data holds none and is not read.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import dask.array as da
import numpy as np

from .damage import locate
from .errors import VoldenError
from .volume import Volume

NONFINITE = ("refuse", "fill")


def _holds_nonfinite(block: np.ndarray) -> np.ndarray:
    return np.full((1,) * block.ndim, not np.isfinite(block).all())


def _read_all(volume: Volume, where: str, reduce: Callable[[da.Array], da.Array]) -> np.ndarray:
    """``reduce(volume.data)`` computed; a chunk that cannot be read is named."""
    try:
        return np.asarray(reduce(volume.data).compute())
    except Exception as err:
        raise locate(volume.source, [(0, n) for n in volume.shape], where, err) from None


def first_nonfinite_chunk(volume: Volume, where: str) -> tuple[tuple[int, int], ...] | None:
    """The (start, stop) per axis of the first chunk holding NaN or Inf, or None."""
    data = volume.data
    if data.dtype.kind not in "fc":
        return None
    flags = _read_all(volume, where, lambda d: d.map_blocks(_holds_nonfinite, chunks=(1,) * d.ndim, dtype=bool))
    bad = np.argwhere(flags)
    if not len(bad):
        return None
    starts = [np.cumsum((0,) + c) for c in data.chunks]
    return tuple((int(s[i]), int(s[i + 1])) for s, i in zip(starts, bad[0]))


def count_nonfinite(volume: Volume, where: str) -> int:
    if volume.data.dtype.kind not in "fc":
        return 0
    return int(_read_all(volume, where, lambda d: (~da.isfinite(d)).sum()))


def check_finite(volumes: list[Volume], where: str, mode: str = "refuse") -> int:
    """NaN and Inf voxels of ``volumes``: with ``mode`` "refuse", a VoldenError naming the first
    chunk holding one; with "fill", how many there are (to be filled as tiles are read)."""
    if mode == "fill":
        return sum(count_nonfinite(volume, where) for volume in volumes)
    for volume in volumes:
        chunk = first_nonfinite_chunk(volume, where)
        if chunk is None:
            continue
        at = ", ".join(f"{axis} {a}-{b}" for axis, (a, b) in zip("zyx", chunk))
        which = f" (volume {volume.index} of the image)" if volume.index else ""
        raise VoldenError(f"{where} holds NaN or Inf voxels{which}, the first in the chunk at {at}; "
                          "replace them, or pass --nonfinite fill (nothing was written)")
    return 0


def fill_nonfinite(region: np.ndarray, value: float) -> np.ndarray:
    """``region`` with NaN and Inf replaced by ``value`` (in place where it is float)."""
    if region.dtype.kind in "fc":
        region[~np.isfinite(region)] = value
    return region


def filled_volume(volume: Volume, where: str) -> tuple[Volume, int]:
    """``volume`` with its NaN and Inf voxels filled lazily by the mean of the others, and how
    many there are (training's ``--nonfinite fill``: no model, so no normalisation mean yet)."""
    count = count_nonfinite(volume, where)
    if not count:
        return volume, 0
    data = volume.data
    value = float(_read_all(volume, where, lambda d: da.nanmean(da.where(da.isfinite(d), d, np.nan))))
    return replace(volume, data=data.map_blocks(lambda b: fill_nonfinite(b.copy(), value), dtype=data.dtype)), count
