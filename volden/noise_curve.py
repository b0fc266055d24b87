"""The camera's noise curve, var = a * mean + b in the input's units, fitted from the noisy volume.

Microscopy cameras record Poisson shot noise through a gain, plus Gaussian read noise, so the
noise's variance is a straight line in the expected signal (Foi et al. 2008). volden fits it
from the data alone: in sampled chunks, second differences along x and y (over sqrt(6)) have
the noise's variance where the signal is locally linear; their variance in bins of the 3x3x3
local mean, fitted by a line weighted by the voxels per bin, gives a and b. The posterior step
(``posterior``) needs the curve, and a wrong curve costs more than none, so :meth:`NoiseCurve.check`
refuses one that is not a camera's over the range it was fitted on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import dask
import dask.array as da
import numpy as np
import torch
from scipy import ndimage

from .errors import VoldenError
from .normalisation import Normalisation, sample_chunk_indices

BINS = 20
MIN_BIN_VOXELS = 100
FLOOR = 1e-6  # the least noise variance, normalised units: the posterior divides by it


@dataclass(frozen=True)
class NoiseCurve:
    """var = a * mean + b (input units), fitted over local means from ``low`` to ``high``."""

    a: float
    b: float
    low: float
    high: float

    def variance(self, mean: np.ndarray | float) -> np.ndarray | float:
        return self.a * mean + self.b

    def normalised_variance(self, mean: torch.Tensor, normalisation: Normalisation) -> torch.Tensor:
        """The noise variance, in the network's units, at the normalised ``mean``: the mean is
        taken back to input units for the line, the variance divided by the scale squared, and
        kept above :data:`FLOOR` (the line may dip under 0 outside the fitted range)."""
        in_input = mean * normalisation.std + normalisation.mean
        return ((self.a * in_input + self.b) / normalisation.std**2).clamp_min(FLOOR)

    def check(self) -> None:
        """A VoldenError unless the line is a camera's: its variance positive over the range it
        was fitted on (where the posterior will evaluate it), and not falling with the signal."""
        if self.a < 0:
            raise VoldenError(f"the noise curve fitted from the volume ({self}) falls as the signal rises: "
                              "not a camera's shot noise; train without --posterior")
        if self.variance(self.low) <= 0:
            raise VoldenError(f"the noise curve fitted from the volume ({self}) is negative at mean {self.low:.4g}, "
                              f"inside the data's range ({self.low:.4g} to {self.high:.4g}); train without --posterior")

    def __str__(self) -> str:
        return f"var = {self.a:.4g} x mean {'-' if self.b < 0 else '+'} {abs(self.b):.4g}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NoiseCurve":
        return cls(**{k: float(data[k]) for k in ("a", "b", "low", "high")})


def fit_array(image: np.ndarray, bins: int = BINS) -> NoiseCurve:
    """The noise curve of one array (at least 3 voxels along y and x)."""
    return fit_binned(*_local_pairs(np.asarray(image, dtype=np.float64)), bins)


def fit_binned(mean: np.ndarray, residual: np.ndarray, bins: int = BINS) -> NoiseCurve:
    """The line through the variances of ``residual`` in ``bins`` quantile bins of ``mean``
    (voxel by voxel), weighted by the square root of the voxels in each bin."""
    edges = np.quantile(mean, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    used = counts >= MIN_BIN_VOXELS
    sums = np.bincount(which, mean, bins)
    squares = np.bincount(which, residual**2, bins) - np.bincount(which, residual, bins) ** 2 / np.maximum(counts, 1)
    means, variances = sums[used] / counts[used], squares[used] / counts[used]
    if len(means) < 2 or np.ptp(means) == 0:
        raise VoldenError("the sampled chunks hold too few distinct intensities to fit a noise curve")
    a, b = np.polyfit(means, variances, 1, w=np.sqrt(counts[used]))
    return NoiseCurve(float(a), float(b), float(means.min()), float(means.max()))


def fit_noise_curve(data: da.Array, max_chunks: int = 16, seed: int = 0) -> NoiseCurve:
    """The noise curve of a lazy 3D volume, from up to ``max_chunks`` chunks sampled at random
    (each read once, in parallel) and fitted together."""
    rng = np.random.default_rng(seed)
    indices = sample_chunk_indices(data.numblocks, max_chunks, rng)
    blocks = [np.asarray(b, dtype=np.float64) for b in dask.compute(*[data.blocks[i] for i in indices])]
    pairs = [_local_pairs(b) for b in blocks if min(b.shape[-2:]) >= 3]
    if not pairs:
        raise VoldenError(f"the volume's chunks {data.chunksize} are too thin to fit a noise curve (3 voxels in y and x)")
    return fit_binned(np.concatenate([m for m, _ in pairs]), np.concatenate([r for _, r in pairs]), BINS)


def _local_pairs(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local mean, second difference over sqrt(6)) at every voxel inside y and x."""
    local = ndimage.uniform_filter(image, 3)
    residuals = [(2 * image[..., 1:-1] - image[..., :-2] - image[..., 2:]) / math.sqrt(6),
                 (2 * image[..., 1:-1, :] - image[..., :-2, :] - image[..., 2:, :]) / math.sqrt(6)]
    means = [local[..., 1:-1], local[..., 1:-1, :]]
    return np.concatenate([m.ravel() for m in means]), np.concatenate([r.ravel() for r in residuals])
