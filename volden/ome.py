"""OME-Zarr (NGFF) image metadata: read an input's axes, voxel size and units; write an output.

0.5 lives on zarr v3 under ``attrs["ome"]``; 0.4 on zarr v2 directly in the group attributes.
volden handles images whose axes are, in NGFF's order, an optional time axis ``t``, an optional
channel axis ``c`` and the spatial axes ``z, y, x``. An output is created with ``status:
running`` in its volden attributes and gets its ``multiscales`` only when finalised, so an
unfinished store never looks like a complete image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numcodecs
import zarr
from zarr.codecs import BloscCodec

from .errors import VoldenError

SPATIAL_AXES = ("z", "y", "x")
AXIS_ORDER = ("t", "c", "z", "y", "x")
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
OME_VERSIONS = ("0.4", "0.5")
# Blosc's zstd at level 1 over byte-shuffled values: on a denoised float32 volume it writes in
# 0.63x the time of zarr's default (zstd level 0, no shuffle) and stores 0.80x the bytes
# (BENCHMARKS.md, "Device speed"); every OME-Zarr reader decodes Blosc.
COMPRESSOR = {"cname": "zstd", "clevel": 1, "shuffle": "shuffle"}
# Channel colours, green and magenta first: the pair most eyes tell apart.
PALETTE = ("00FF00", "FF00FF", "00FFFF", "FF0000", "0000FF", "FFFF00", "FFFFFF")


@dataclass(frozen=True)
class Level:
    """One array of a multiscale image: its path and where its voxels sit in physical space."""

    path: str
    scale: tuple[float, ...]
    translation: tuple[float, ...] | None = None

    def transformations(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = [{"type": "scale", "scale": list(self.scale)}]
        if self.translation is not None and any(self.translation):
            found.append({"type": "translation", "translation": list(self.translation)})
        return found


@dataclass(frozen=True)
class ImageMeta:
    """Axes, level-0 scale and units of an image, and its channels' display settings."""

    axes: tuple[str, ...] = SPATIAL_AXES
    scale: tuple[float, ...] = (1.0, 1.0, 1.0)
    units: tuple[str | None, ...] = (None, None, None)
    channels: tuple[dict[str, Any], ...] | None = None
    name: str = "image"

    def __post_init__(self) -> None:
        check_axes(self.axes, "image")
        if not len(self.scale) == len(self.units) == len(self.axes):
            raise ValueError(f"scale {self.scale} and units {self.units} must match the axes {self.axes}")

    @classmethod
    def spatial(
        cls, voxel_size: Sequence[float] | None, unit: str | None, name: str = "image"
    ) -> "ImageMeta":
        """A 3D (z, y, x) image with one spatial unit."""
        scale = tuple(float(v) for v in voxel_size) if voxel_size else (1.0, 1.0, 1.0)
        return cls(SPATIAL_AXES, scale, (unit,) * 3, None, name)

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        z, y, x = self.scale[-3:]
        return (z, y, x)

    @property
    def unit(self) -> str | None:
        """The unit of the spatial axes (that of x)."""
        return self.units[-1]

    def size_of(self, axis: str, shape: Sequence[int]) -> int:
        """How many time points or channels ``shape`` holds (1 without that axis)."""
        return int(shape[self.axes.index(axis)]) if axis in self.axes else 1

    def select_channels(self, channels: Sequence[int]) -> "ImageMeta":
        """The same image with only ``channels`` (their display settings follow them)."""
        if self.channels is None or len(self.channels) <= max(channels, default=-1):
            return self
        return replace(self, channels=tuple(self.channels[c] for c in channels))

    def axes_attributes(self) -> list[dict[str, Any]]:
        found = []
        for axis, unit in zip(self.axes, self.units):
            entry: dict[str, Any] = {"name": axis, "type": AXIS_TYPES[axis]}
            if unit and axis != "c":
                entry["unit"] = unit
            found.append(entry)
        return found


def check_axes(axes: Sequence[str], where: str) -> None:
    """Refuse axes volden cannot denoise: it needs z, y, x last, at most t and c before them."""
    names = tuple(axes)
    known = [a for a in AXIS_ORDER if a in names]
    if len(set(names)) != len(names) or any(a not in AXIS_ORDER for a in names) or tuple(known) != names or names[-3:] != SPATIAL_AXES:
        raise VoldenError(
            f"{where} has axes ({', '.join(names)}); volden reads images with axes t, c, z, y, x "
            "(t and c optional, in that order)"
        )


def multiscales(group: zarr.Group) -> list[dict] | None:
    """The ``multiscales`` list of an OME-Zarr 0.4 or 0.5 group, or None for a plain group."""
    attrs = group.attrs.asdict()
    found = attrs.get("ome", {}).get("multiscales", attrs.get("multiscales"))
    return found if isinstance(found, list) and found else None


def omero(group: zarr.Group) -> dict | None:
    attrs = group.attrs.asdict()
    found = attrs.get("ome", {}).get("omero", attrs.get("omero"))
    return found if isinstance(found, dict) else None


def level0_path(meta: list[dict]) -> str:
    """Path of the full-resolution array of the first multiscale image."""
    return str(meta[0]["datasets"][0]["path"])


def level0_scale(meta: list[dict]) -> tuple[float, ...] | None:
    """Scale of level 0 (every axis), or None when the metadata gives no scale."""
    scale = None
    for transform in meta[0].get("coordinateTransformations", []) + meta[0]["datasets"][0].get(
        "coordinateTransformations", []
    ):
        if transform.get("type") == "scale":
            values = tuple(float(v) for v in transform["scale"])
            scale = values if scale is None else tuple(a * b for a, b in zip(scale, values))
    return scale


def axis_names(meta: list[dict]) -> tuple[str, ...] | None:
    axes = meta[0].get("axes")
    if not axes:
        return None
    return tuple(a["name"] if isinstance(a, dict) else str(a) for a in axes)


def read_meta(group: zarr.Group, where: str, ndim: int) -> ImageMeta:
    """The axes, scale, units and channels of the OME-Zarr image ``group`` (level ``ndim``-D)."""
    meta = multiscales(group)
    if meta is None:
        raise VoldenError(f"{where} is not an OME-Zarr image")
    names = axis_names(meta) or AXIS_ORDER[-ndim:]
    if len(names) != ndim:
        raise VoldenError(f"{where}: its OME axes ({', '.join(names)}) do not match its {ndim}D array")
    check_axes(names, where)
    scale = level0_scale(meta) or (1.0,) * ndim
    if len(scale) != ndim:
        raise VoldenError(f"{where}: its OME scale {scale} does not match its {ndim}D array")
    axes = meta[0].get("axes", [])
    units = tuple((a.get("unit") if isinstance(a, dict) else None) for a in axes) or (None,) * ndim
    channels = (omero(group) or {}).get("channels")
    return ImageMeta(
        names, scale, units, tuple(channels) if isinstance(channels, list) and channels else None,
        str(meta[0].get("name", "image")),
    )


def image_attributes(meta: ImageMeta, levels: Sequence[Level], version: str = "0.5") -> dict[str, Any]:
    """Group attributes declaring a multiscale OME-Zarr image (with ``omero`` channels, if any)."""
    image = {
        "name": meta.name,
        "axes": meta.axes_attributes(),
        "datasets": [{"path": level.path, "coordinateTransformations": level.transformations()} for level in levels],
    }
    declared: dict[str, Any] = {"multiscales": [image]}
    if meta.channels:
        declared["omero"] = {"channels": list(meta.channels)}
    if version == "0.5":
        return {"ome": {"version": "0.5", **declared}}
    image["version"] = "0.4"
    return declared


def create_image(
    path: str | Path,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    volden_attrs: dict[str, Any],
    version: str = "0.5",
    dataset_path: str = "0",
    axes: Sequence[str] = SPATIAL_AXES,
    shards: tuple[int, ...] | None = None,
) -> zarr.Array:
    """Create an empty image store (not yet declared as OME) and return its level-0 array.

    ``shards`` (zarr v3 only) groups chunks into one file each; a writer that writes whole
    shards never touches a file another writer writes.
    """
    zarr_format = 3 if version == "0.5" else 2
    group = zarr.create_group(str(path), zarr_format=zarr_format)  # refuses an existing group; a run's lock may be there
    group.attrs["volden"] = {**volden_attrs, "status": "running"}
    return create_level(group, dataset_path, shape, chunks, dtype, axes, shards)


def create_level(
    group: zarr.Group,
    dataset_path: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    axes: Sequence[str],
    shards: tuple[int, ...] | None = None,
) -> zarr.Array:
    """One array of an image, named by its axes on zarr v3, compressed by :data:`COMPRESSOR`."""
    v3 = group.metadata.zarr_format == 3
    extra: dict[str, Any] = {"dimension_names": list(axes)} if v3 else {}
    extra["compressors"] = BloscCodec(**COMPRESSOR) if v3 else numcodecs.Blosc(
        COMPRESSOR["cname"], COMPRESSOR["clevel"], numcodecs.Blosc.SHUFFLE)
    if v3 and shards is not None and tuple(shards) != tuple(chunks):
        extra["shards"] = shards
    return group.create_array(dataset_path, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, overwrite=True, **extra)


def finalize_image(
    path: str | Path,
    meta: ImageMeta,
    version: str = "0.5",
    levels: Sequence[Level] | None = None,
) -> None:
    """Declare the finished store an OME-Zarr image and mark the run complete.

    ``levels`` defaults to one level, array ``0``, at the image's own scale.
    """
    group = zarr.open_group(str(path), mode="r+")
    levels = levels or [Level("0", meta.scale)]
    volden = {**group.attrs.get("volden", {}), "status": "complete"}
    group.attrs.update({**image_attributes(meta, levels, version), "volden": volden})


def channel_entries(
    names: Sequence[str], ranges: dict[int, tuple[float, float]] | None = None
) -> tuple[dict[str, Any], ...]:
    """OME ``omero`` channel entries: label, a colour, and (given ``ranges``, the values seen per
    channel) a display window."""
    entries = []
    for channel, name in enumerate(names):
        entry: dict[str, Any] = {"label": name, "color": PALETTE[channel % len(PALETTE)], "active": True}
        if ranges is not None:
            low, high = ranges.get(channel, (0.0, 1.0))
            entry["window"] = {"min": low, "max": high, "start": low, "end": high}
        entries.append(entry)
    return tuple(entries)
