"""``volden ingest``: TIFF / OME-TIFF stacks and folders of 2D TIFF slices to OME-Zarr, streamed.

The input is read one 2D plane at a time and written one z-slab (the output's chunk depth) at a
time, so memory holds the slabs still filling (one per time point and channel the input
interleaves) whatever the size of the stack. What can be wrong with the input (not a TIFF, 2D
only, slices of different shapes or dtypes) is found from the TIFF headers before the output is
created; the output is declared an OME-Zarr image only once every plane is in, and is removed
if the ingest fails, so a failed ingest leaves nothing behind.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import tifffile
import zarr

from . import ome
from ._version import __version__
from .errors import VoldenError
from .layout import viewer_chunks
from .paths import check_output_path

TIFF_SUFFIXES = (".tif", ".tiff")
# tifffile's axis codes -> OME axes. A plain multi-page TIFF counts its pages along Q or I; the
# samples of an RGB TIFF (S) are its channels.
OME_AXES = {"T": "t", "C": "c", "S": "c", "Z": "z", "Q": "z", "I": "z", "Y": "y", "X": "x"}
# Lengths OME-Zarr names (UDUNITS-2) that microscopy uses, as powers of ten of a metre (so that
# conversions are exact where they can be), and how TIFF writers spell them.
METRE_EXPONENTS = {"angstrom": -10, "picometer": -12, "nanometer": -9, "micrometer": -6, "millimeter": -3,
                   "centimeter": -2, "meter": 0}
SPELLINGS = {"å": "angstrom", "pm": "picometer", "nm": "nanometer", "um": "micrometer", "µm": "micrometer",
             "μm": "micrometer", "\\u00b5m": "micrometer", "micron": "micrometer", "microns": "micrometer",
             "mm": "millimeter", "cm": "centimeter", "m": "meter"}
# Micrometres per TIFF ResolutionUnit (centimetre, millimetre, micrometre); inches are a printer's.
RESOLUTION_UNIT_UM = {3: 1e4, 4: 1e3, 5: 1.0}
WRITERS = 4  # threads compressing rows of a slab: each holds a row's copies while it works
# Channel colours, green and magenta first: the pair most eyes tell apart.
PALETTE = ("00FF00", "FF00FF", "00FFFF", "FF0000", "0000FF", "FFFF00", "FFFFFF")

Plane = tuple[tuple[int, ...], np.ndarray]  # (index along the output's leading axes, z last; a 2D plane)


def length_unit(text: str | None) -> str | None:
    """The OME-Zarr name of a length unit as TIFF metadata spells it; None for none or 'pixel'."""
    key = (text or "").strip().lower()
    return key if key in METRE_EXPONENTS else SPELLINGS.get(key)


@dataclass(frozen=True)
class Calibration:
    """What a TIFF's metadata says of its voxels: size (z, y, x; None where it says nothing), unit,
    channel names."""

    voxel_size: tuple[float | None, float | None, float | None] = (None, None, None)
    unit: str | None = None
    channel_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TiffSource:
    """A TIFF stack or a folder of 2D TIFF slices, as its headers describe it."""

    path: Path
    kind: str  # "stack" or "slices"
    files: tuple[Path, ...]  # the stack, or the slices in z order
    axes: tuple[str, ...]  # the output's OME axes
    shape: tuple[int, ...]  # along those axes
    dtype: np.dtype
    calibration: Calibration
    tiff_axes: str  # tifffile's axes of the stack (its storage order)
    series: tuple[int, int] = (0, 1)  # which series of the file, of how many

    @property
    def planes(self) -> int:
        return math.prod(self.shape[:-2])

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def read_planes(self) -> Iterator[Plane]:
        """Every 2D plane with its output index, in the order the input stores them."""
        if self.kind == "slices":
            for z, file in enumerate(self.files):
                with tifffile.TiffFile(file) as tif:
                    yield (z,), _read(file, tif.series[0].asarray)
            return
        # Where each tifffile axis but Y and X goes in the output index, and which of them a page holds (S).
        to_output = [self.axes.index(OME_AXES[axis]) for axis in self.tiff_axes if axis not in "YX"]
        with tifffile.TiffFile(self.path) as tif:
            series = tif.series[self.series[0]]
            page_dims = len(series.keyframe.shape)
            outer_shape = tuple(series.shape[:-page_dims])  # one page per index along these
            inner = [i for i, axis in enumerate(self.tiff_axes[-page_dims:]) if axis not in "YX"]
            pages = _pages(self.path, tif, series, math.prod(outer_shape))
            for outer, page in zip(np.ndindex(*outer_shape), pages):
                for within in np.ndindex(*(page.shape[i] for i in inner)):
                    selection: list[Any] = [slice(None)] * page_dims
                    for i, value in zip(inner, within):
                        selection[i] = value
                    index = tuple(value for _, value in sorted(zip(to_output, (*outer, *within))))
                    yield index, page[tuple(selection)]


def _pages(path: Path, tif: tifffile.TiffFile, series: tifffile.TiffPageSeries, count: int) -> Iterator[np.ndarray]:
    """The ``count`` pages of ``series`` in order, each decoded alone (a missing one as zeros).

    An ImageJ hyperstack over 4 GB has one page header, its planes stored raw one after another:
    those are read from the file plane by plane.
    """
    shape = series.keyframe.shape
    if len(series) >= count:
        for number in range(count):
            page = series[number]
            yield np.zeros(shape, series.dtype) if page is None else _read(path, page.asarray)
        return
    dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
    nbytes = math.prod(shape) * dtype.itemsize
    for number in range(count):
        tif.filehandle.seek(series.dataoffset + number * nbytes)
        yield np.frombuffer(tif.filehandle.read(nbytes), dtype).reshape(shape)


def _read(path: Path, read: Callable[[], np.ndarray]) -> np.ndarray:
    try:
        return read()
    except (tifffile.TiffFileError, ValueError, KeyError) as err:
        reason = err.args[0] if err.args else type(err).__name__
        raise VoldenError(f"{path}: cannot read its pixels ({reason})") from err


def _open_tiff(path: Path) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError) as err:
        raise VoldenError(f"{path}: cannot read it as a TIFF file ({err})") from None


def inspect_tiff(path: str | Path) -> TiffSource:
    """Describe a TIFF stack or a folder of 2D TIFF slices from headers alone, or refuse it."""
    path = Path(path)
    if path.is_dir():
        return _inspect_slices(path)
    if not path.exists():
        raise VoldenError(f"{path}: no such file or directory")
    with _open_tiff(path) as tif:
        if not tif.series:
            raise VoldenError(f"{path} holds no image")
        series = tif.series[0]
        axes, shape = _ome_axes(series.axes, series.shape, path)
        page = tuple(series.keyframe.shape)  # a page holds the last axes of the image: Y, X (and S)
        if tuple(series.shape[-len(page):]) != page or not {"Y", "X"} <= set(series.axes[-len(page):]):
            raise VoldenError(f"{path}: its pages {page} are not planes of its image {series.shape} "
                              f"(axes {series.axes}); volden cannot read it plane by plane")
        channels = shape[axes.index("c")] if "c" in axes else 1
        return TiffSource(path, "stack", (path,), axes, shape, np.dtype(series.dtype), _calibration(tif, channels),
                          series.axes, (0, len(tif.series)))


def _ome_axes(tiff_axes: str, shape: Sequence[int], where: Path) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The OME axes (t, c, z, y, x order) and shape of a stack with tifffile's ``tiff_axes``."""
    mapped = [OME_AXES.get(axis) for axis in tiff_axes]
    described = f"axes {', '.join(tiff_axes)}, shape {tuple(shape)}"
    if None in mapped or len(set(mapped)) != len(mapped) or not {"y", "x"} <= set(mapped):
        raise VoldenError(f"{where} has {described}; volden ingests stacks with axes T, C, Z (or pages), Y, X")
    if "z" not in mapped:
        raise VoldenError(f"{where} holds a 2D image ({described}); volden needs a 3D stack (z, y, x)")
    axes = tuple(axis for axis in ome.AXIS_ORDER if axis in mapped)
    return axes, tuple(int(shape[mapped.index(axis)]) for axis in axes)


def _natural_key(path: Path) -> list[Any]:
    """Sort key that puts slice_2 before slice_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _inspect_slices(folder: Path) -> TiffSource:
    """A folder of 2D TIFF slices (hidden files and other suffixes ignored), all of one shape and dtype."""
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith(".")
         and p.is_file()),
        key=_natural_key,
    )
    if len(files) < 2:
        held = f"one TIFF slice ({files[0].name})" if files else "no TIFF files (.tif, .tiff)"
        raise VoldenError(f"{folder} holds {held}; volden ingests a TIFF stack or a folder of 2D TIFF slices")
    with _open_tiff(files[0]) as tif:
        shape, dtype = tuple(tif.series[0].shape), np.dtype(tif.series[0].dtype)
        calibration = _calibration(tif, 1)
    if len(shape) != 2:
        raise VoldenError(f"{files[0]} holds shape {shape}, not a 2D slice; pass a stack file itself, not its folder")
    for file in files[1:]:
        with _open_tiff(file) as tif:
            other, other_dtype = tuple(tif.series[0].shape), np.dtype(tif.series[0].dtype)
        if other != shape:
            raise VoldenError(f"{file}: slice shape {other} differs from {shape} of {files[0].name}; "
                              "every slice must have the same shape")
        if other_dtype != dtype:
            raise VoldenError(f"{file}: slice dtype {other_dtype} differs from {dtype} of {files[0].name}; "
                              "every slice must have the same dtype")
    return TiffSource(folder, "slices", tuple(files), ome.SPATIAL_AXES, (len(files), *shape), dtype, calibration, "ZYX")


# --------------------------------------------------------------------------------------------
# Voxel size, unit and channel names from OME-XML, ImageJ metadata or the resolution tags.


def _calibration(tif: tifffile.TiffFile, channels: int) -> Calibration:
    if tif.is_ome and tif.ome_metadata:
        return _ome_calibration(tif.ome_metadata, channels)
    imagej = tif.imagej_metadata or {}
    labels = imagej.get("Labels")  # one per channel, or (ImageJ's own) one per plane
    names = tuple(map(str, labels)) if isinstance(labels, list) and len(labels) == channels > 1 else None
    if tif.is_imagej:
        unit, per_unit, spacing = length_unit(imagej.get("unit")), 1.0, imagej.get("spacing")
    else:
        unit, spacing = "micrometer", None
        per_unit = RESOLUTION_UNIT_UM.get(int(tif.pages.first.tags.valueof("ResolutionUnit", 1)))
    if unit is None or per_unit is None:  # ImageJ's 'pixel', or no physical resolution unit
        return Calibration(channel_names=names)
    y, x = _resolution(tif.pages.first)
    sizes = (_positive(spacing), None if y is None else y * per_unit, None if x is None else x * per_unit)
    return Calibration(sizes, unit if any(v is not None for v in sizes) else None, names)


def _resolution(page: tifffile.TiffPage) -> tuple[float | None, float | None]:
    """Pixel height and width in the resolution unit (the tags hold pixels per unit)."""
    sizes = []
    for tag in ("YResolution", "XResolution"):
        value = page.tags.valueof(tag)
        per_unit = value[0] / value[1] if isinstance(value, tuple) and value[1] else None
        sizes.append(_positive(1.0 / per_unit) if per_unit else None)
    return sizes[0], sizes[1]


def _ome_calibration(xml: str, channels: int) -> Calibration:
    """PhysicalSizeZ/Y/X (with their units, converted to that of x) and channel names of the first image."""
    try:
        pixels = ElementTree.fromstring(xml).find("{*}Image/{*}Pixels")
    except ElementTree.ParseError:
        pixels = None
    if pixels is None:
        return Calibration()
    sizes = [(_positive(pixels.get(f"PhysicalSize{axis}")), length_unit(pixels.get(f"PhysicalSize{axis}Unit", "µm")))
             for axis in "ZYX"]
    unit = next((u for size, u in reversed(sizes) if size is not None and u is not None), None)
    voxel_size = tuple(None if size is None else size * _factor(u, unit) for size, u in sizes)
    names = tuple(channel.get("Name", "") for channel in pixels.findall("{*}Channel"))
    named = len(names) == channels > 1 and all(names)
    return Calibration(voxel_size, unit, names if named else None)  # type: ignore[arg-type]


def _factor(unit: str | None, target: str | None) -> float:
    """What a length in ``unit`` is multiplied by to be in ``target`` (1 where either is unknown)."""
    return 10.0 ** (METRE_EXPONENTS[unit] - METRE_EXPONENTS[target]) if unit and target else 1.0


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def resolve_calibration(
    found: Calibration, voxel_size: Sequence[float] | None, unit: str | None
) -> tuple[tuple[float, float, float], str | None, str]:
    """The voxel size and unit to write, and where they came from (for the command's summary).

    ``voxel_size`` replaces the metadata's; ``unit`` is the unit written: the metadata's sizes are
    converted to it when the metadata names a unit of its own.
    """
    target = length_unit(unit) if unit else found.unit
    if unit and target is None:
        raise VoldenError(f"--unit {unit}: not a length unit volden knows ({', '.join(METRE_EXPONENTS)})")
    if voxel_size is not None:
        if len(voxel_size) != 3 or any(_positive(v) is None for v in voxel_size):
            given = ",".join(f"{v:g}" for v in voxel_size)
            raise VoldenError(f"--voxel-size {given}: a voxel size is three positive numbers Z,Y,X")
        z, y, x = (float(v) for v in voxel_size)
        return (z, y, x), target, "from --voxel-size"
    z, y, x = (1.0 if v is None else v * _factor(found.unit, target) for v in found.voxel_size)
    missing = [axis for axis, v in zip("zyx", found.voxel_size) if v is None]
    if not missing:
        return (z, y, x), target, "from the TIFF metadata"
    what = "not in the TIFF metadata"
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
    """Write 2D planes into ``target`` one z-slab (its chunk depth) at a time.

    Planes may come in any order: a slab is written once all its planes are in, then dropped, so
    memory holds only the slabs still filling. A slab goes out in rows of shards (or chunks),
    compressed on several threads (zstd releases the GIL).
    """
    depth, rows = target.chunks[-3], (target.shards or target.chunks)[-2]
    z_size, (height, width) = target.shape[-3], target.shape[-2:]
    total = math.prod(target.shape[:-2])
    filling: dict[tuple[int, ...], np.ndarray] = {}
    filled: dict[tuple[int, ...], int] = {}
    with ThreadPoolExecutor(min(os.cpu_count() or 1, WRITERS, -(-height // rows))) as pool:
        for done, (index, plane) in enumerate(planes, 1):
            *volume, z = index
            start = z - z % depth
            key = (*volume, start)
            if key not in filling:
                filling[key] = np.empty((min(depth, z_size - start), height, width), target.dtype)
                filled[key] = 0
            filling[key][z - start] = plane
            filled[key] += 1
            if filled[key] == len(filling[key]):
                del filled[key]
                _write_slab(pool, target, (*volume, slice(start, start + len(filling[key]))), filling.pop(key), rows)
            if progress is not None:
                progress(done, total)
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


def _omero_channels(names: Sequence[str], ranges: dict[int, tuple[float, float]]) -> tuple[dict[str, Any], ...]:
    """OME ``omero`` channel entries: label, a colour, and a display window over the values seen."""
    entries = []
    for channel, name in enumerate(names):
        low, high = ranges.get(channel, (0.0, 1.0))
        window = {"min": low, "max": high, "start": low, "end": high}
        entries.append({"label": name, "color": PALETTE[channel % len(PALETTE)], "window": window, "active": True})
    return tuple(entries)


@dataclass(frozen=True)
class Ingested:
    """What :func:`ingest_tiff` wrote, for the command's summary line."""

    source: TiffSource
    meta: ome.ImageMeta
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    voxel_note: str  # where the voxel size came from
    seconds: float


def ingest_tiff(
    input: str | Path,
    output: str | Path,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    ome_version: str = "0.5",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Ingested:
    """Convert a TIFF / OME-TIFF stack or a folder of 2D TIFF slices into the OME-Zarr ``output``.

    Axes, voxel size, unit and channel names come from the TIFF metadata unless ``voxel_size``
    (z, y, x) or ``unit`` say otherwise. ``progress(done, total)`` is called per plane.
    """
    start = time.perf_counter()
    if ome_version not in ome.OME_VERSIONS:
        raise VoldenError(f"--ome-version {ome_version}: volden writes OME-Zarr {' or '.join(ome.OME_VERSIONS)}")
    check_output_path(input, output, overwrite)
    source = inspect_tiff(input)
    voxel, written_unit, note = resolve_calibration(source.calibration, voxel_size, unit)
    chunks, shards = output_layout(source.shape, ome_version)
    provenance = {
        "input": str(source.path.resolve()), "kind": source.kind, "files": len(source.files),
        "tiff_axes": source.tiff_axes, "series": list(source.series),
        "voxel_size": list(voxel_size) if voxel_size else None, "unit": unit, "ome_version": ome_version,
    }
    names, ranges = source.calibration.channel_names, {}
    planes = source.read_planes()
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
            _omero_channels(names, ranges) if names else None, source.path.name,
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
