"""Open a 3D volume from zarr v2/v3, a named array in a group, or an OME-Zarr image, lazily."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import zarr
import zarr.errors

from . import ome
from .errors import VoldenError


@dataclass(frozen=True)
class Volume:
    """A lazy 3D (z, y, x) array and what is known about its geometry."""

    data: da.Array
    voxel_size: tuple[float, float, float] | None
    unit: str | None
    path: str
    array_path: str
    source: zarr.Array | None = None  # the stored array behind ``data``, for direct region reads

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def chunks(self) -> tuple[int, int, int]:
        return tuple(c[0] for c in self.data.chunks)  # type: ignore[return-value]


def _open_node(path: str) -> zarr.Array | zarr.Group:
    if not Path(path).exists():
        raise VoldenError(f"{path}: no such file or directory")
    try:
        return zarr.open(path, mode="r")
    except (zarr.errors.NodeTypeValidationError, FileNotFoundError, ValueError, KeyError) as err:
        raise VoldenError(f"{path}: not a zarr array or group ({type(err).__name__})") from None


def _resolve(
    node: zarr.Array | zarr.Group, where: str, array: str | None
) -> tuple[zarr.Array, str, list[dict] | None]:
    """Follow --array and OME multiscales down to one array; return it with its OME metadata."""
    meta = None
    if array:
        if not isinstance(node, zarr.Group):
            raise VoldenError(f"{where} is an array, not a group: drop --array {array}")
        if array not in node:
            raise VoldenError(f"{where} has no array {array!r}; it holds: {', '.join(sorted(node.keys()))}")
        node = node[array]
        where = f"{where}/{array}"
    if isinstance(node, zarr.Group):
        meta = ome.multiscales(node)
        if meta is None:
            names = sorted(k for k, _ in node.arrays())
            groups = sorted(k for k, _ in node.groups())
            choices = ", ".join(names + [g + "/" for g in groups]) or "nothing"
            raise VoldenError(f"{where} is a group, not an image; pick a volume with --array (it holds: {choices})")
        level0 = ome.level0_path(meta)
        node = node[level0]
        where = f"{where}/{level0}"
    return node, where, meta


def open_volume(path: str | Path, array: str | None = None) -> Volume:
    """Open a 3D volume lazily as a dask array with its voxel size (from OME-Zarr, if any).

    ``array`` names an array (or an OME-Zarr image group) inside a group. Nothing is read but
    metadata.
    """
    path = str(path)
    node, where, meta = _resolve(_open_node(path), path, array)
    voxel_size = unit = None
    if meta is not None:
        names = ome.axis_names(meta)
        scale = ome.level0_scale(meta)
        if scale and names and len(scale) == len(names):
            spatial = [scale[names.index(a)] for a in ome.SPATIAL_AXES if a in names]
            if len(spatial) == 3:
                voxel_size = (spatial[0], spatial[1], spatial[2])
        axes = meta[0].get("axes", [])
        unit = next((a.get("unit") for a in axes if isinstance(a, dict) and a.get("unit")), None)
    if node.ndim != 3:
        raise VoldenError(
            f"{where} has shape {tuple(node.shape)} ({node.ndim}D); volden denoises 3D (z, y, x) "
            "volumes: pick one with --array"
        )
    data = da.from_zarr(node)
    return Volume(
        data=data, voxel_size=voxel_size, unit=unit, path=path, array_path=where[len(path) :].lstrip("/"), source=node
    )
