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
import dask.array as da
import numpy as np
import zarr
from distributed import Client, as_completed

from . import ome
from ._version import __version__
from .errors import VoldenError
from .inference import denoise
from .model import Model
from .predict import default_halo
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


def check_output_path(input_path: str | Path, output_path: str | Path, overwrite: bool) -> None:
    """Refuse an output that would overwrite, sit inside, or contain the input."""
    source, target = Path(input_path).resolve(), Path(output_path).resolve()
    if target == source or source in target.parents:
        raise VoldenError(f"{output_path} lies inside the input {input_path}; write the output elsewhere")
    if target in source.parents:
        raise VoldenError(f"{output_path} contains the input {input_path}; write the output elsewhere")
    if target.exists() and not overwrite:
        raise VoldenError(f"{output_path} exists; pass --overwrite to replace it")


def _as_output(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(block), info.min, info.max).astype(dtype)
    return block.astype(dtype)


def _write(block: np.ndarray, target: zarr.Array, region: tuple[slice, ...]) -> int:
    target[region] = block
    return block.size


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
    halo = config.halo or default_halo(model)
    result = denoise(volume.data, model, config.block, halo, config.blend, config.device)
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
        starts = [np.cumsum((0,) + c[:-1]) for c in result.chunks]
        writes = []
        for index in np.ndindex(*result.numblocks):
            region = tuple(slice(int(s[i]), int(s[i]) + c[i]) for s, c, i in zip(starts, result.chunks, index))
            block = result.blocks[index]
            writes.append(dask.delayed(_write)(block.map_blocks(_as_output, dtype, dtype=dtype), target, region))
        _run(writes, client, progress)
        ome.finalize_image(output, volume.voxel_size, volume.unit, Path(volume.path).name + " (denoised)", config.ome_version)
    except BaseException:
        shutil.rmtree(output, ignore_errors=True)
        raise
    return output


def _run(writes: list, client: Client | None, progress: Callable[[int, int], None] | None) -> None:
    total = len(writes)
    if client is None:
        for done, write in enumerate(writes, 1):
            write.compute(scheduler="threads")
            if progress:
                progress(done, total)
        return
    futures = client.compute(writes)
    for done, future in enumerate(as_completed(futures), 1):
        future.result()
        if progress:
            progress(done, total)
