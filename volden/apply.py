"""``volden apply``: denoise a volume into a new OME-Zarr, block by block, on a Dask cluster.

Everything is checked before anything is written; the output is created with ``status:
running`` and declared an OME-Zarr image only when every block is in. If the run fails, the
half-written output is removed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import dask
import numpy as np
import zarr
from distributed import Client, as_completed

from . import ome
from ._version import __version__
from .errors import VoldenError
from .inference import denoise, plan_blocks
from .model import Model
from .paths import check_output_path
from .tiling import BLENDS, Blend
from .volume import Volume

OUTPUT_DTYPES = ("float32", "input")


@dataclass(frozen=True)
class ApplyConfig:
    """What ``volden apply`` takes besides the paths."""

    block: tuple[int, int, int] | None = None
    halo: tuple[int, int, int] | None = None
    blend: Blend = "gaussian"
    device: str = "auto"
    dtype: str = "float32"
    overwrite: bool = False
    ome_version: str = "0.5"

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise VoldenError(f"--blend must be one of {', '.join(BLENDS)}")
        if self.dtype not in OUTPUT_DTYPES:
            raise VoldenError(f"--dtype must be one of {', '.join(OUTPUT_DTYPES)}")
        if self.ome_version not in ome.OME_VERSIONS:
            raise VoldenError(f"--ome-version must be one of {', '.join(ome.OME_VERSIONS)}")
        if self.block and min(self.block) < 1:
            raise VoldenError(f"--block {self.block}: every size must be positive")
        if self.halo and min(self.halo) < 0:
            raise VoldenError(f"--halo {self.halo}: sizes cannot be negative")


def _write(block: np.ndarray, target: zarr.Array, dtype: np.dtype, block_info=None) -> np.ndarray:
    """Write one output block to its region (chunk-aligned, so writes never collide)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        block = np.clip(np.rint(block), info.min, info.max)
    target[tuple(slice(a, b) for a, b in block_info[0]["array-location"])] = block.astype(dtype)
    return np.array([[[block.size]]])


def apply_model(
    model: Model,
    volume: Volume,
    output: str | Path,
    config: ApplyConfig = ApplyConfig(),
    client: Client | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Denoise ``volume`` into the OME-Zarr ``output``; ``progress(done, total)`` per block."""
    output = Path(output)
    check_output_path(volume.path, output, config.overwrite)
    block, halo = plan_blocks(model, volume.shape, config.block, config.halo)
    result = denoise(volume.data, model, block, halo, config.blend, config.device)
    dtype = volume.data.dtype if config.dtype == "input" else np.dtype(np.float32)
    if config.overwrite and output.exists():
        shutil.rmtree(output)
    attrs = {
        "version": __version__,
        "input": str(volume.path),
        "array": volume.array_path,
        "model": model.path,
        "model_sha256": model.digest,
        "block": list(result.chunksize),
        "halo": list(halo),
        "blend": config.blend,
    }
    try:
        target = ome.create_image(output, volume.shape, result.chunksize, dtype, attrs, config.ome_version)
        written = result.map_blocks(_write, target, dtype, chunks=(1, 1, 1), dtype=np.int64)
        _run(list(written.to_delayed().ravel()), client, progress)
        ome.finalize_image(output, volume.voxel_size, volume.unit, Path(volume.path).name + " (denoised)", config.ome_version)
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise
    return output


def _run(writes: list, client: Client | None, progress: Callable[[int, int], None] | None) -> None:
    total = len(writes)
    if client is None:
        dask.compute(*writes, scheduler="threads")
        if progress:
            progress(total, total)
        return
    futures = client.compute(writes)
    for done, future in enumerate(as_completed(futures), 1):
        future.result()
        if progress:
            progress(done, total)
