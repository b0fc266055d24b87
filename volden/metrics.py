"""Image quality against a clean reference, computed block-wise so volumes need not fit in memory."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
from scipy import ndimage

SSIM_SIGMA = 1.5  # Wang et al. (2004): an 11-tap Gaussian window
SSIM_TRUNCATE = 3.5
SSIM_K = (0.01, 0.03)


def _as_float(array: da.Array | np.ndarray) -> da.Array:
    return da.asarray(array).astype(np.float64)


def reference_range(reference: da.Array | np.ndarray) -> float:
    """Max - min of the reference: the peak of PSNR and the scale of SSIM's constants."""
    reference = da.asarray(reference)
    low, high = dask.compute(reference.min(), reference.max())
    return float(high - low)


def _decibels(data_range: float, mse: float) -> float:
    return float(10 * np.log10(data_range**2 / mse))


def psnr(estimate: da.Array | np.ndarray, reference: da.Array | np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB; the peak is the reference's range unless given."""
    estimate, reference = _as_float(estimate), _as_float(reference)
    mse = ((estimate - reference) ** 2).mean()
    if data_range is None:
        low, high, mse = dask.compute(reference.min(), reference.max(), mse)
        data_range = float(high - low)
    else:
        mse = mse.compute()
    return _decibels(data_range, mse)


def ssim_radius(sigma: float = SSIM_SIGMA) -> int:
    """Half the window of :func:`ssim`: volumes need at least ``2 * radius + 1`` voxels a side."""
    return int(SSIM_TRUNCATE * sigma + 0.5)


def _ssim_map(x: np.ndarray, y: np.ndarray, sigma: float, c1: float, c2: float) -> np.ndarray:
    def local_mean(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = local_mean(x), local_mean(y)
    vx = local_mean(x * x) - ux * ux
    vy = local_mean(y * y) - uy * uy
    vxy = local_mean(x * y) - ux * uy
    return (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def _mean_ssim(estimate: da.Array, reference: da.Array, data_range: float, sigma: float) -> da.Array:
    """Lazy mean SSIM: the map is computed per block with overlaps as wide as the window, so
    block faces see what one whole-array pass sees; the edge, where the window leaves the
    volume, is left out (as scikit-image does)."""
    radius = ssim_radius(sigma)
    if min(estimate.shape) < 2 * radius + 1:
        raise ValueError(f"SSIM needs at least {2 * radius + 1} voxels a side, not {estimate.shape}")
    c1, c2 = ((k * data_range) ** 2 for k in SSIM_K)
    reference = reference.rechunk(estimate.chunks)
    index = da.map_overlap(_ssim_map, estimate, reference, depth=radius, boundary="none", dtype=np.float64,
                           sigma=sigma, c1=c1, c2=c2)
    return index[(slice(radius, -radius),) * index.ndim].mean()


def ssim(
    estimate: da.Array | np.ndarray,
    reference: da.Array | np.ndarray,
    data_range: float | None = None,
    sigma: float = SSIM_SIGMA,
) -> float:
    """Mean structural similarity with a Gaussian window (Wang et al., 2004), block-wise.

    Equal to scikit-image's ``structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False)``; the data range is the reference's unless given.
    """
    estimate, reference = _as_float(estimate), _as_float(reference)
    data_range = reference_range(reference) if data_range is None else data_range
    return float(_mean_ssim(estimate, reference, data_range, sigma).compute())


def psnr_ssim(
    estimate: da.Array | np.ndarray, reference: da.Array | np.ndarray, data_range: float | None = None
) -> tuple[float, float | None]:
    """PSNR (dB) and SSIM in one pass over both volumes (after one over the reference for its
    range, unless given); SSIM is None for a volume thinner than its window."""
    estimate, reference = _as_float(estimate), _as_float(reference)
    data_range = reference_range(reference) if data_range is None else data_range
    lazy = [((estimate - reference) ** 2).mean()]
    thick = min(estimate.shape) >= 2 * ssim_radius() + 1
    if thick:
        lazy.append(_mean_ssim(estimate, reference, data_range, SSIM_SIGMA))
    values = dask.compute(*lazy)
    return _decibels(data_range, values[0]), float(values[1]) if thick else None
