"""TIFF / OME-TIFF stacks and folders of 2D TIFF slices, read one 2D plane at a time.

What can be wrong with the input (not a TIFF, 2D only, slices of different shapes or dtypes) is
found from the TIFF headers alone; voxel size, unit and channel names come from OME-XML, ImageJ
metadata or the resolution tags.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import tifffile

from .. import ome
from ..errors import VoldenError
from .source import Calibration, Plane, Source
from .units import factor, length_unit, positive

TIFF_SUFFIXES = (".tif", ".tiff")
# tifffile's axis codes -> OME axes. A plain multi-page TIFF counts its pages along Q or I; the
# samples of an RGB TIFF (S) are its channels.
OME_AXES = {"T": "t", "C": "c", "S": "c", "Z": "z", "Q": "z", "I": "z", "Y": "y", "X": "x"}
# Micrometres per TIFF ResolutionUnit (centimetre, millimetre, micrometre); inches are a printer's.
RESOLUTION_UNIT_UM = {3: 1e4, 4: 1e3, 5: 1.0}


@dataclass(frozen=True)
class TiffSource(Source):
    """A TIFF stack or a folder of 2D TIFF slices, as its headers describe it."""

    kind: str = "stack"  # or "slices"
    files: tuple[Path, ...] = ()  # the stack, or the slices in z order
    tiff_axes: str = "ZYX"  # tifffile's axes of the stack (its storage order)
    series: tuple[int, int] = (0, 1)  # which series of the file, of how many

    format: ClassVar[str] = "TIFF"
    metadata: ClassVar[str] = "the TIFF metadata"

    def origin(self) -> str:
        return f"{len(self.files)} file{'s' if len(self.files) > 1 else ''}"

    def provenance(self) -> dict[str, Any]:
        return {"format": self.format, "kind": self.kind, "files": len(self.files), "tiff_axes": self.tiff_axes,
                "series": list(self.series)}

    def read_planes(self, depth: int = 1) -> Iterator[Plane]:
        """Every 2D plane with its output index, in the order the input stores them (one at a
        time, whatever ``depth``)."""
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
        return TiffSource(path, axes, shape, np.dtype(series.dtype), _calibration(tif, channels), kind="stack",
                          files=(path,), tiff_axes=series.axes, series=(0, len(tif.series)))


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
    return TiffSource(folder, ome.SPATIAL_AXES, (len(files), *shape), dtype, calibration, kind="slices",
                      files=tuple(files))




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
    sizes = (positive(spacing), None if y is None else y * per_unit, None if x is None else x * per_unit)
    return Calibration(sizes, unit if any(v is not None for v in sizes) else None, names)


def _resolution(page: tifffile.TiffPage) -> tuple[float | None, float | None]:
    """Pixel height and width in the resolution unit (the tags hold pixels per unit)."""
    sizes = []
    for tag in ("YResolution", "XResolution"):
        value = page.tags.valueof(tag)
        per_unit = value[0] / value[1] if isinstance(value, tuple) and value[1] else None
        sizes.append(positive(1.0 / per_unit) if per_unit else None)
    return sizes[0], sizes[1]


def _ome_calibration(xml: str, channels: int) -> Calibration:
    """PhysicalSizeZ/Y/X (with their units, converted to that of x) and channel names of the first image."""
    try:
        pixels = ElementTree.fromstring(xml).find("{*}Image/{*}Pixels")
    except ElementTree.ParseError:
        pixels = None
    if pixels is None:
        return Calibration()
    sizes = [(positive(pixels.get(f"PhysicalSize{axis}")), length_unit(pixels.get(f"PhysicalSize{axis}Unit", "µm")))
             for axis in "ZYX"]
    unit = next((u for size, u in reversed(sizes) if size is not None and u is not None), None)
    voxel_size = tuple(None if size is None else size * factor(u, unit) for size, u in sizes)
    names = tuple(channel.get("Name", "") for channel in pixels.findall("{*}Channel"))
    named = len(names) == channels > 1 and all(names)
    return Calibration(voxel_size, unit, names if named else None)  # type: ignore[arg-type]

