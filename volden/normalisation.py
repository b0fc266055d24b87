"""Global intensity normalisation, estimated once from a sample of chunks.

Every patch in training and every block in inference is normalised with the same numbers,
stored with the model: per-tile statistics would make neighbouring tiles disagree at seams.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import dask
import dask.array as da
import numpy as np

from .errors import VoldenError


@dataclass(frozen=True)
class Normalisation:
    """``(x - mean) / std`` and the intensity levels that tell background from structure."""

    mean: float
    std: float
    low: float  # 2nd percentile, raw units
    high: float  # 99.9th percentile, raw units

    def apply(self, x: np.ndarray) -> np.ndarray:
        """A new float32 array (computed in place: volumes are large)."""
        y = np.array(x, dtype=np.float32)
        y -= np.float32(self.mean)
        y /= np.float32(self.std)
        return y

    def invert(self, x: np.ndarray) -> np.ndarray:
        y = np.array(x, dtype=np.float32)
        y *= np.float32(self.std)
        y += np.float32(self.mean)
        return y

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Normalisation":
        return cls(**{k: float(data[k]) for k in ("mean", "std", "low", "high")})


def sample_chunk_indices(
    numblocks: tuple[int, ...], count: int, rng: np.random.Generator
) -> list[tuple[int, ...]]:
    """Up to ``count`` distinct chunk indices, spread at random over the chunk grid."""
    total = int(np.prod(numblocks))
    picks = rng.choice(total, size=min(count, total), replace=False)
    return [tuple(int(i) for i in np.unravel_index(p, numblocks)) for p in sorted(picks)]


def estimate_normalisation(
    data: da.Array, max_chunks: int = 16, max_voxels: int = 2**24, seed: int = 0
) -> Normalisation:
    """Statistics of a random sample of whole chunks (each read once, in parallel)."""
    rng = np.random.default_rng(seed)
    indices = sample_chunk_indices(data.numblocks, max_chunks, rng)
    blocks = dask.compute(*[data.blocks[i] for i in indices])
    voxels = np.concatenate([np.asarray(b, dtype=np.float32).ravel() for b in blocks])
    if not np.all(np.isfinite(voxels)):
        raise VoldenError(
            f"the sampled chunks hold NaN or Inf values ({np.count_nonzero(~np.isfinite(voxels))} of "
            f"{voxels.size} voxels); replace them before denoising"
        )
    if voxels.size > max_voxels:
        voxels = rng.choice(voxels, max_voxels, replace=False)
    low, high = np.percentile(voxels, [2, 99.9])
    std = float(voxels.std())
    if std == 0:
        raise VoldenError(f"the sampled chunks are constant (all {voxels[0]:g}): nothing to denoise")
    return Normalisation(mean=float(voxels.mean()), std=std, low=float(low), high=float(high))
