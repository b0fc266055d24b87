"""OME-Zarr (NGFF) image metadata: read the voxel size of an input, write an output image.

0.5 lives on zarr v3 under ``attrs["ome"]``; 0.4 on zarr v2 directly in the group attributes.
An output is created with ``status: running`` in its volden attributes and gets its
``multiscales`` only when finalised, so an unfinished store never looks like a complete image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr

SPATIAL_AXES = ("z", "y", "x")
OME_VERSIONS = ("0.4", "0.5")


def multiscales(group: zarr.Group) -> list[dict] | None:
    """The ``multiscales`` list of an OME-Zarr 0.4 or 0.5 group, or None for a plain group."""
    attrs = group.attrs.asdict()
    found = attrs.get("ome", {}).get("multiscales", attrs.get("multiscales"))
    return found if isinstance(found, list) and found else None


def level0_path(meta: list[dict]) -> str:
    """Path of the full-resolution array of the first multiscale image."""
    return str(meta[0]["datasets"][0]["path"])


def level0_scale(meta: list[dict]) -> tuple[float, ...] | None:
    """Voxel size of level 0 (every axis), or None when the metadata gives no scale."""
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


def image_attributes(
    dataset_path: str,
    voxel_size: tuple[float, float, float] | None,
    unit: str | None,
    name: str,
    version: str = "0.5",
) -> dict[str, Any]:
    """Group attributes declaring a single-level 3D (z, y, x) OME-Zarr image."""
    axis = {"type": "space"}
    if unit:
        axis["unit"] = unit
    scale = list(voxel_size) if voxel_size else [1.0, 1.0, 1.0]
    image = {
        "name": name,
        "axes": [{"name": a, **axis} for a in SPATIAL_AXES],
        "datasets": [
            {"path": dataset_path, "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        ],
    }
    if version == "0.5":
        return {"ome": {"version": "0.5", "multiscales": [image]}}
    return {"multiscales": [{"version": "0.4", **image}]}


def create_image(
    path: str | Path,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    volden_attrs: dict[str, Any],
    version: str = "0.5",
    dataset_path: str = "0",
) -> zarr.Array:
    """Create an empty image store (not yet declared as OME) and return its level-0 array."""
    zarr_format = 3 if version == "0.5" else 2
    group = zarr.open_group(str(path), mode="w-", zarr_format=zarr_format)
    group.attrs["volden"] = {**volden_attrs, "status": "running"}
    extra = {"dimension_names": list(SPATIAL_AXES)} if zarr_format == 3 else {}
    return group.create_array(
        dataset_path, shape=shape, chunks=chunks, dtype=dtype, fill_value=0, **extra
    )


def finalize_image(
    path: str | Path,
    voxel_size: tuple[float, float, float] | None,
    unit: str | None,
    name: str,
    version: str = "0.5",
    dataset_path: str = "0",
) -> None:
    """Declare the finished store an OME-Zarr image and mark the run complete."""
    group = zarr.open_group(str(path), mode="r+")
    volden = {**group.attrs["volden"], "status": "complete"}
    group.attrs.update({**image_attributes(dataset_path, voxel_size, unit, name, version), "volden": volden})
