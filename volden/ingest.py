"""``volden ingest``: image files to OME-Zarr, streamed.

The input (a TIFF stack or folder of slices, a BigDataViewer XML with its HDF5 or N5, an N5
dataset, a CZI file: see :mod:`volden.formats`) is read a plane, or a slab of a chunked store,
at a time and written one z-slab (the output's chunk depth) at a time, so memory holds the slabs
still filling (one per time point and channel the input interleaves) whatever the size of the
input. What can be wrong with the input is found from its headers before the output is created;
the output is declared an OME-Zarr image only once every plane is in, and is removed if the
ingest fails, so a failed ingest leaves nothing behind.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import zarr

from . import ome
from ._version import __version__
from .errors import VoldenError
from .formats import inspect_input
from .formats.source import Calibration, Plane, Source
from .formats.units import METRE_EXPONENTS, factor, length_unit, positive
from .layout import viewer_chunks
from .paths import check_output_path

WRITERS = 4  # threads compressing rows of a slab: each holds a row's copies while it works


def resolve_calibration(
    found: Calibration, voxel_size: Sequence[float] | None, unit: str | None, metadata: str = "the TIFF metadata"
) -> tuple[tuple[float, float, float], str | None, str]:
    """The voxel size and unit to write, and where they came from (for the command's summary).

    ``voxel_size`` replaces the metadata's; ``unit`` is the unit written: the metadata's sizes are
    converted to it when the metadata names a unit of its own. ``metadata`` names where ``found``
    was read.
    """
    target = length_unit(unit) if unit else found.unit
    if unit and target is None:
        raise VoldenError(f"--unit {unit}: not a length unit volden knows ({', '.join(METRE_EXPONENTS)})")
    if voxel_size is not None:
        if len(voxel_size) != 3 or any(positive(v) is None for v in voxel_size):
            given = ",".join(f"{v:g}" for v in voxel_size)
            raise VoldenError(f"--voxel-size {given}: a voxel size is three positive numbers Z,Y,X")
        z, y, x = (float(v) for v in voxel_size)
        return (z, y, x), target, "from --voxel-size"
    z, y, x = (1.0 if v is None else v * factor(found.unit, target) for v in found.voxel_size)
    missing = [axis for axis, v in zip("zyx", found.voxel_size) if v is None]
    if not missing:
        return (z, y, x), target, f"from {metadata}"
    what = f"not in {metadata}"
    if len(missing) < 3:
        what = f"{','.join(missing)} {what}, set to 1"
    return (z, y, x), target, f"{what}: pass --voxel-size Z,Y,X"


# --------------------------------------------------------------------------------------------
# Writing.


def output_layout(shape: Sequence[int], ome_version: str) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Chunks (1 along t and c, the viewer's chunk in space) and, on zarr v3, shards of one row of
    chunks of a z-slab.

    :func:`write_planes` writes a slab one such row at a time, so zarr's encoder holds a few rows,
    not a slab; and a large volume is a file per row (8 per slab of 2048 x 2048 planes), not one
    per chunk.
    """
    lead = len(shape) - 3
    spatial = viewer_chunks(tuple(shape[-3:]))
    chunks = (1,) * lead + spatial
    if ome_version != "0.5":
        return chunks, None
    shards = chunks[:-1] + (-(-int(shape[-1]) // spatial[-1]) * spatial[-1],)
    return chunks, (shards if shards != chunks else None)


def write_planes(
    target: zarr.Array, planes: Iterable[Plane], progress: Callable[[int, int], None] | None = None
) -> None:
    """Write 2D planes (or runs of them) into ``target`` one z-slab (its chunk depth) at a time.

    Planes may come in any order: a slab is written once all its planes are in, then dropped, so
    memory holds only the slabs still filling; a run that is a whole slab is written as it came,
    without a copy. A slab goes out in rows of shards (or chunks), compressed on several threads
    (zstd releases the GIL).
    """
    depth, rows = target.chunks[-3], (target.shards or target.chunks)[-2]
    z_size, (height, width) = target.shape[-3], target.shape[-2:]
    total, done = math.prod(target.shape[:-2]), 0
    filling: dict[tuple[int, ...], np.ndarray] = {}
    filled: dict[tuple[int, ...], int] = {}
    with ThreadPoolExecutor(min(os.cpu_count() or 1, WRITERS, -(-height // rows))) as pool:
        for index, run in planes:
            *volume, first = index
            run = run.reshape((-1, height, width))
            z = first
            while z < first + len(run):
                start = z - z % depth
                stop = min(start + depth, z_size)
                part, key = run[z - first:stop - first], (*volume, start)
                if key not in filling and len(part) == stop - start:
                    _write_slab(pool, target, (*volume, slice(start, stop)), part, rows)
                else:
                    if key not in filling:
                        filling[key], filled[key] = np.empty((stop - start, height, width), target.dtype), 0
                    filling[key][z - start:z - start + len(part)] = part
                    filled[key] += len(part)
                    if filled[key] == stop - start:
                        del filled[key]
                        _write_slab(pool, target, (*volume, slice(start, stop)), filling.pop(key), rows)
                z += len(part)
            done += len(run)
            if progress is not None:
                progress(done, total)
            del run, part  # before the next read, so two slabs are never held at once
    if filling:
        raise VoldenError(f"the input held fewer planes than its headers announce ({total})")


def _write_slab(pool: ThreadPoolExecutor, target: zarr.Array, region: tuple, slab: np.ndarray, rows: int) -> None:
    """Write ``slab`` at ``region`` of ``target`` in bands of ``rows``, on the pool's threads."""

    def write_rows(top: int) -> None:
        target[(*region, slice(top, top + rows))] = slab[:, top:top + rows]

    list(pool.map(write_rows, range(0, slab.shape[1], rows)))


def _noting_ranges(planes: Iterable[Plane], axis: int, ranges: dict[int, tuple[float, float]]) -> Iterator[Plane]:
    """The same planes, widening ``ranges[channel]`` (``axis`` of the index) to the finite values seen."""
    for index, plane in planes:
        values = plane if plane.dtype.kind in "iub" else plane[np.isfinite(plane)]
        if values.size:
            low, high = ranges.get(index[axis], (math.inf, -math.inf))
            ranges[index[axis]] = (min(low, float(values.min())), max(high, float(values.max())))
        yield index, plane


@dataclass(frozen=True)
class Ingested:
    """What :func:`ingest_image` wrote, for the command's summary line."""

    source: Source
    meta: ome.ImageMeta
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    voxel_note: str  # where the voxel size came from
    seconds: float


def ingest_image(
    input: str | Path,
    output: str | Path,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    ome_version: str = "0.5",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Ingested:
    """Convert an image file (:func:`volden.formats.inspect_input` says which) into the OME-Zarr
    ``output``.

    Axes, voxel size, unit and channel names come from the file's metadata unless ``voxel_size``
    (z, y, x) or ``unit`` say otherwise. ``progress(done, total)`` is called as planes are in.
    """
    start = time.perf_counter()
    if ome_version not in ome.OME_VERSIONS:
        raise VoldenError(f"--ome-version {ome_version}: volden writes OME-Zarr {' or '.join(ome.OME_VERSIONS)}")
    check_output_path(input, output, overwrite)
    source = inspect_input(input)
    voxel, written_unit, note = resolve_calibration(source.calibration, voxel_size, unit, source.metadata)
    chunks, shards = output_layout(source.shape, ome_version)
    provenance = {
        "input": str(source.path.resolve()), **source.provenance(),
        "voxel_size": list(voxel_size) if voxel_size else None, "unit": unit, "ome_version": ome_version,
    }
    names, ranges = source.calibration.channel_names, {}
    planes = source.read_planes(chunks[-3])
    if names:  # their display windows span the values seen
        planes = _noting_ranges(planes, source.axes.index("c"), ranges)
    output = Path(output)
    _remove(output)  # only there with ``overwrite``
    try:
        target = ome.create_image(output, source.shape, chunks, source.dtype,
                                  {"version": __version__, "ingest": provenance}, ome_version, axes=source.axes,
                                  shards=shards)
        write_planes(target, planes, progress)
        lead = len(source.axes) - 3
        meta = ome.ImageMeta(
            source.axes, (1.0,) * lead + voxel, (None,) * lead + (written_unit,) * 3,
            ome.channel_entries(names, ranges) if names else None, source.path.name,
        )
        ome.finalize_image(output, meta, ome_version)
    except BaseException:
        _remove(output)  # ours: made in this call, and an unfinished ingest cannot be resumed
        raise
    return Ingested(source, meta, chunks, shards, note, time.perf_counter() - start)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
