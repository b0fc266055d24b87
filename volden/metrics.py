"""Image quality against a clean reference, computed block-wise so volumes need not fit in memory."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np


def psnr(estimate: da.Array | np.ndarray, reference: da.Array | np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB; the peak is the reference's range unless given."""
    estimate = da.asarray(estimate).astype(np.float64)
    reference = da.asarray(reference).astype(np.float64)
    mse = ((estimate - reference) ** 2).mean()
    if data_range is None:
        low, high, mse = dask.compute(reference.min(), reference.max(), mse)
        data_range = float(high - low)
    else:
        mse = mse.compute()
    return float(10 * np.log10(data_range**2 / mse))
