"""Open images lazily from zarr v2/v3 arrays, named arrays in groups and OME-Zarr images, and from
BigDataViewer datasets and N5 (:func:`volden.formats.open_stored`).

An :class:`Image` has axes ``(t, c,) z, y, x``; volden denoises it one 3D :class:`Volume` (one
time point of one channel) at a time. Axes come from the OME metadata, from a zarr v3 array's
dimension names, or else from the number of dimensions (3: z y x, 4: c z y x, 5: t c z y x).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import dask.array as da
import numpy as np
import zarr
import zarr.errors

from dask.base import tokenize

from . import ome
from .errors import VoldenError
from .formats import open_stored
from .formats.source import StoredSource, dask_chunks


class VolumeView:
    """One 3D volume of a stored nD array, read and written by 3D boxes (picklable)."""

    def __init__(self, array: Any, index: tuple[int, ...]) -> None:
        self.array, self.index = array, tuple(index)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[len(self.index):])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def __getitem__(self, box: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self.array[self.index + tuple(box)])

    def __setitem__(self, box: tuple[slice, ...], values: np.ndarray) -> None:
        self.array[self.index + tuple(box)] = values


@dataclass(frozen=True)
class Volume:
    """A lazy 3D (z, y, x) array and what is known about its geometry.

    ``index`` is its (time point, channel) within its image, as far as the image has those axes.
    """

    data: da.Array
    voxel_size: tuple[float, float, float] | None
    unit: str | None
    path: str
    array_path: str
    source: Any = None  # the stored array behind ``data`` (or a VolumeView of it), for region reads
    index: tuple[int, ...] = ()
    channel: int | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def chunks(self) -> tuple[int, int, int]:
        return tuple(c[0] for c in self.data.chunks)  # type: ignore[return-value]


@dataclass(frozen=True)
class Image:
    """A lazy ``(t, c,) z, y, x`` array with its OME axes, scale, units and channels."""

    data: da.Array
    meta: ome.ImageMeta
    path: str
    array_path: str
    source: Any  # the stored array behind ``data``: a zarr array or a formats.StoredArray
    has_scale: bool = True
    levels: int = 1  # of its multiscale pyramid

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def timepoints(self) -> int:
        return self.meta.size_of("t", self.shape)

    @property
    def channels(self) -> int:
        return self.meta.size_of("c", self.shape)

    @property
    def where(self) -> str:
        return f"{self.path}/{self.array_path}" if self.array_path else self.path

    def select(
        self, channels: Sequence[int] | None = None, timepoints: Sequence[int] | None = None
    ) -> tuple[list[int], list[int]]:
        """The channels and time points to work on (all by default), checked against the image."""
        return (
            _checked(channels, self.channels, "channel", self.where),
            _checked(timepoints, self.timepoints, "timepoint", self.where),
        )

    def volume_index(self, timepoint: int, channel: int) -> tuple[int, ...]:
        """Where the 3D volume of (``timepoint``, ``channel``) sits along the leading axes."""
        return tuple(v for axis, v in (("t", timepoint), ("c", channel)) if axis in self.meta.axes)

    def pick(self, channel: int | None = None, timepoint: int | None = None) -> Volume:
        """The one volume meant: ``channel`` and ``timepoint`` are needed where there are several."""
        for axis, picked, size in (("channel", channel, self.channels), ("timepoint", timepoint, self.timepoints)):
            if picked is None and size > 1:
                raise VoldenError(f"{self.where} has {size} {axis}s: pick one with --{axis}")
        return self.volume(timepoint or 0, channel or 0)

    def volume(self, timepoint: int = 0, channel: int = 0) -> Volume:
        """One 3D volume of the image, lazily."""
        _checked([channel], self.channels, "channel", self.where)
        _checked([timepoint], self.timepoints, "timepoint", self.where)
        index = self.volume_index(timepoint, channel)
        return Volume(
            data=self.data[index] if index else self.data,
            voxel_size=self.meta.voxel_size if self.has_scale else None,
            unit=self.meta.unit if self.has_scale else None,
            path=self.path,
            array_path=self.array_path,
            source=VolumeView(self.source, index) if index else self.source,
            index=index,
            channel=channel if "c" in self.meta.axes else None,
        )


def _checked(picked: Sequence[int] | None, size: int, axis: str, where: str) -> list[int]:
    if picked is None:
        return list(range(size))
    for value in picked:
        if not 0 <= value < size:
            what = f"{size} {axis}s (0-{size - 1})" if size > 1 else f"one {axis} (0)"
            raise VoldenError(f"{where} has {what}: --{axis} {value} is out of range")
    return list(picked)


def _open_node(path: str) -> zarr.Array | zarr.Group:
    if not Path(path).exists():
        raise VoldenError(f"{path}: no such file or directory")
    try:
        return zarr.open(path, mode="r")
    except (zarr.errors.NodeTypeValidationError, FileNotFoundError, ValueError, KeyError) as err:
        raise VoldenError(f"{path}: not a zarr array or group ({type(err).__name__})") from None


def _plain_axes(array: zarr.Array, where: str) -> tuple[str, ...]:
    """Axes of an array without OME metadata: its dimension names, or by its number of dimensions."""
    names = getattr(array.metadata, "dimension_names", None)
    if names and all(names):
        ome.check_axes(tuple(names), where)
        return tuple(names)
    if not 3 <= array.ndim <= 5:
        raise VoldenError(
            f"{where} has shape {tuple(array.shape)} ({array.ndim}D); volden denoises 3D (z, y, x) "
            "volumes, with time and channel axes before them: pick one with --array"
        )
    return ome.AXIS_ORDER[-array.ndim:]


def open_image(path: str | Path, array: str | None = None) -> Image:
    """Open an image lazily as a dask array with its axes, voxel size and channels.

    ``array`` names an array (or an OME-Zarr image group) inside a group. Nothing is read but
    metadata.
    """
    stored = open_stored(path, array)
    if stored is not None:
        return _stored_image(stored, str(path), array)
    path = str(path)
    node, where = _open_node(path), path
    if array:
        if not isinstance(node, zarr.Group):
            raise VoldenError(f"{where} is an array, not a group: drop --array {array}")
        if array not in node:
            raise VoldenError(f"{where} has no array {array!r}; it holds: {', '.join(sorted(node.keys()))}")
        node = node[array]
        where = f"{where}/{array}"
    if isinstance(node, zarr.Group):
        found = ome.multiscales(node)
        if found is None:
            names = sorted(k for k, _ in node.arrays())
            groups = sorted(k for k, _ in node.groups())
            choices = ", ".join(names + [g + "/" for g in groups]) or "nothing"
            raise VoldenError(f"{where} is a group, not an image; pick a volume with --array (it holds: {choices})")
        level0 = ome.level0_path(found)
        if level0 not in node:
            raise VoldenError(f"{where}: its OME metadata names an array {level0!r} that it does not hold")
        level = node[level0]
        meta = ome.read_meta(node, where, level.ndim)
        has_scale, levels = ome.level0_scale(found) is not None, len(found[0]["datasets"])
        node, where = level, f"{where}/{level0}"
    else:
        axes = _plain_axes(node, where)
        meta, has_scale, levels = ome.ImageMeta(axes, (1.0,) * len(axes), (None,) * len(axes)), False, 1
    return Image(
        data=da.from_zarr(node), meta=meta, path=path, array_path=where[len(path):].lstrip("/"),
        source=node, has_scale=has_scale, levels=levels,
    )


def _stored_image(stored: StoredSource, path: str, array: str | None) -> Image:
    """An Image over a BDV or N5 store, its chunks whole stored chunks near the viewer's size."""
    found = stored.array
    lead = len(stored.axes) - 3
    voxel_size, unit = stored.calibration.voxel_size, stored.calibration.unit
    has_scale = all(v is not None for v in voxel_size)
    names = stored.calibration.channel_names
    meta = ome.ImageMeta(
        stored.axes, (1.0,) * lead + (tuple(voxel_size) if has_scale else (1.0,) * 3),  # type: ignore[arg-type]
        (None,) * lead + (unit if has_scale else None,) * 3,
        ome.channel_entries(names) if names else None, Path(path).name,
    )
    name = f"{stored.format.lower().replace(' ', '-')}-{tokenize(str(Path(path).resolve()), array, found.name, stored.shape)}"
    data = da.from_array(found, chunks=dask_chunks(stored.shape, found.chunks), name=name,
                         meta=np.empty((0,) * len(stored.shape), stored.dtype))
    return Image(data=data, meta=meta, path=path, array_path=array or "", source=found, has_scale=has_scale)


def open_volume(
    path: str | Path, array: str | None = None, channel: int | None = None, timepoint: int | None = None
) -> Volume:
    """Open one 3D volume lazily as a dask array with its voxel size (from OME-Zarr, if any).

    An image with several channels or time points needs ``channel`` / ``timepoint``; nothing
    is read but metadata.
    """
    return open_image(path, array).pick(channel, timepoint)
