"""Refuse input voxels that are NaN or Inf before anything is written: one such voxel spreads
through the network's receptive field (a NaN at one voxel made 13,520 NaN output voxels)."""

from __future__ import annotations

import dask.array as da
import numpy as np

from .errors import VoldenError
from .volume import Volume


def _holds_nonfinite(block: np.ndarray) -> np.ndarray:
    return np.full((1,) * block.ndim, not np.isfinite(block).all())


def first_nonfinite_chunk(data: da.Array) -> tuple[tuple[int, int], ...] | None:
    """The (start, stop) per axis of the first chunk of ``data`` holding NaN or Inf, or None;
    integer data holds none and is not read."""
    if data.dtype.kind not in "fc":
        return None
    flags = data.map_blocks(_holds_nonfinite, chunks=(1,) * data.ndim, dtype=bool).compute()
    bad = np.argwhere(flags)
    if not len(bad):
        return None
    starts = [np.cumsum((0,) + c) for c in data.chunks]
    return tuple((int(s[i]), int(s[i + 1])) for s, i in zip(starts, bad[0]))


def check_finite(volumes: list[Volume], where: str) -> None:
    """A VoldenError naming the first chunk with NaN or Inf voxels, in the first volume that has one."""
    for volume in volumes:
        chunk = first_nonfinite_chunk(volume.data)
        if chunk is None:
            continue
        at = ", ".join(f"{axis} {a}-{b}" for axis, (a, b) in zip("zyx", chunk))
        which = f" (volume {volume.index} of the image)" if volume.index else ""
        raise VoldenError(f"{where} holds NaN or Inf voxels{which}, the first in the chunk at {at}; "
                          "replace them before denoising (nothing was written)")
