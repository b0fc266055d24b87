"""Classic denoisers as named, parameterised functions: the baselines Noise2Self calibrates.

Sizes are in voxels per axis (z, y, x). A single number is the lateral size; the z size is then
scaled by the voxel size, so the filter is round in micrometres (equal to the lateral size when
the voxel size is unknown). The 'donut' median leaves the centre voxel out of its footprint,
which makes it J-invariant by construction: its output at a voxel never reads that voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import dask.array as da
import numpy as np
from scipy import ndimage

from .errors import VoldenError

METHODS: tuple[str, ...] = ("gaussian", "median")
GAUSSIAN_TRUNCATE = 4.0  # scipy's default: the kernel reaches 4 sigma
# The calibration grids: lateral sizes, and the z sigma as a multiple of its voxel-size scaling
# (0: no smoothing along z), so that a z resolution unlike the lateral one is found too.
GAUSSIAN_SIGMAS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
GAUSSIAN_Z_FACTORS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
MEDIAN_RADII: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0)

Size = float | Sequence[float]
Triple = tuple[float, float, float]


def per_axis(size: Size, voxel_size: Sequence[float] | None = None) -> Triple:
    """``size`` as (z, y, x) voxels: a number is lateral, with z scaled by the voxel size."""
    if np.ndim(size) == 0:
        lateral = float(size)  # type: ignore[arg-type]
        ratio = voxel_size[1] / voxel_size[0] if voxel_size else 1.0
        return (lateral * ratio, lateral, lateral)
    sizes = tuple(float(s) for s in size)  # type: ignore[union-attr]
    if len(sizes) != 3:
        raise ValueError(f"a size is one number or three (z, y, x), not {sizes}")
    return sizes  # type: ignore[return-value]


def gaussian(image: np.ndarray, sigma: Size, voxel_size: Sequence[float] | None = None) -> np.ndarray:
    """Gaussian filter (float32, reflected at the edge) of standard deviation ``sigma`` voxels."""
    return ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), per_axis(sigma, voxel_size),
                                   truncate=GAUSSIAN_TRUNCATE)


def ball(radius: Size, voxel_size: Sequence[float] | None = None, donut: bool = False) -> np.ndarray:
    """Footprint of the voxels within an ellipsoid of ``radius`` voxels; ``donut`` drops the
    centre. An axis whose radius is below 1 collapses to the centre plane."""
    radii = per_axis(radius, voxel_size)
    grids = np.ogrid[tuple(slice(-int(r), int(r) + 1) for r in radii)]
    footprint = sum((g / r) ** 2 if r > 0 else 0 * g for g, r in zip(grids, radii)) <= 1
    if donut:
        footprint[tuple(int(r) for r in radii)] = False
        if not footprint.any():
            raise ValueError(f"a donut of radius {radii} holds no voxel: make a radius at least 1")
    return footprint


def median(
    image: np.ndarray, radius: Size, voxel_size: Sequence[float] | None = None, donut: bool = False
) -> np.ndarray:
    """Median (float32, reflected at the edge) over a ball of ``radius`` voxels; with ``donut``,
    of the neighbours only (J-invariant)."""
    return ndimage.median_filter(np.asarray(image, dtype=np.float32), footprint=ball(radius, voxel_size, donut))


@dataclass(frozen=True)
class Classic:
    """One classic denoiser with its size in voxels (z, y, x); ``str()`` gives its spec, which
    :func:`parse_classic` reads back (``gaussian:0.625,1.25,1.25``)."""

    method: str
    size: Triple

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.method == "gaussian":
            return gaussian(image, self.size)
        return median(image, self.size)

    def __str__(self) -> str:
        return f"{self.method}:{','.join(f'{s:.4g}' for s in self.size)}"

    @property
    def reach(self) -> tuple[int, int, int]:
        """How many voxels either side the output at a voxel reads."""
        if self.method == "gaussian":
            return tuple(int(GAUSSIAN_TRUNCATE * s + 0.5) for s in self.size)  # type: ignore[return-value]
        return tuple(int(s) for s in self.size)  # type: ignore[return-value]

    def lazy(self, data: da.Array) -> da.Array:
        """The filter over a dask array, block by block with overlaps: equal to one whole-array
        pass, in float32."""
        return da.map_overlap(self, data.astype(np.float32), depth=self.reach, boundary="none", dtype=np.float32)


def parse_classic(spec: str, voxel_size: Sequence[float] | None = None) -> Classic:
    """``METHOD:SIZE`` (lateral voxels, z scaled by the voxel size) or ``METHOD:Z,Y,X``."""
    method, _, size = spec.partition(":")
    try:
        values = [float(v) for v in size.split(",")]
        if method not in METHODS or len(values) not in (1, 3) or min(values) < 0:
            raise ValueError
    except ValueError:
        raise VoldenError(
            f"{spec!r} is not a classic denoiser: expected METHOD:SIZE or METHOD:Z,Y,X with METHOD one of "
            f"{', '.join(METHODS)} and sizes >= 0 in voxels, e.g. gaussian:1.5"
        ) from None
    return Classic(method, per_axis(values[0] if len(values) == 1 else values, voxel_size))


def candidates(method: str, voxel_size: Sequence[float] | None = None) -> list[Classic]:
    """The parameter grid calibration searches for ``method``."""
    if method == "gaussian":
        return [
            Classic("gaussian", (round(z * factor, 4), y, x))
            for factor in GAUSSIAN_Z_FACTORS
            for z, y, x in (per_axis(sigma, voxel_size) for sigma in GAUSSIAN_SIGMAS)
        ]
    if method == "median":
        return [Classic("median", per_axis(radius, voxel_size)) for radius in MEDIAN_RADII]
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
