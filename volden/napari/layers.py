"""What the napari widget works on: an image layer's array, 3D or with leading time and channel
axes, denoised lazily one 3D volume at a time through :func:`volden.denoise`.

Nothing here needs Qt: the functions take a layer (or its array) and return dask arrays and the
keyword arguments of the new layer, so napari computes only the planes it shows.
"""

from __future__ import annotations

from typing import Any, Sequence

import dask.array as da
import numpy as np
from napari.layers import Image

from ..errors import VoldenError
from ..inference import denoise
from ..model import ModelSet
from ..volume import Volume


def full_resolution(layer: Any) -> Any:
    """The layer's array at full resolution (level 0 of a multiscale layer): volden never works
    on a downsampled level, whose noise is correlated."""
    return layer.data[0] if layer.multiscale else layer.data


def check_image_layer(layer: Any) -> None:
    """A VoldenError naming why ``layer`` cannot be denoised, or nothing."""
    if layer is None:
        raise VoldenError("no image layer: open a volume or pick one")
    if not isinstance(layer, Image):
        raise VoldenError(f"{layer.name!r} is a {type(layer).__name__.lower()} layer; pick an image layer")
    if layer.rgb:
        raise VoldenError(f"{layer.name!r} is an RGB image; volden denoises grey-value volumes")
    if layer.ndim < 3:
        raise VoldenError(f"{layer.name!r} is {layer.ndim}D; volden denoises 3D volumes (z, y, x), "
                          "with time and channel axes before them")


def as_dask(data: Any) -> da.Array:
    """``data`` as a dask array, chunked as stored (zarr) or one chunk per 3D volume (numpy)."""
    if isinstance(data, da.Array):
        return data
    chunks = getattr(data, "chunks", None)
    if not (isinstance(chunks, tuple) and len(chunks) == data.ndim):
        chunks = (1,) * (data.ndim - 3) + tuple(data.shape[-3:])
    return da.from_array(data, chunks=chunks)


def channel_axis(ndim: int, axis_labels: Sequence[str]) -> int | None:
    """The layer axis that holds channels: the one labelled 'c', else volden's convention
    (4D: c z y x, 5D: t c z y x); None for a 3D layer."""
    labels = [str(label).lower() for label in axis_labels]
    if "c" in labels[: ndim - 3]:
        return labels.index("c")
    return {4: 0, 5: 1}.get(ndim)


def denoise_volumes(data: da.Array, models: ModelSet, channels: int | None, index: tuple[int, ...] = ()) -> da.Array:
    """Each 3D volume of ``data`` (``..., z, y, x``) denoised lazily, stacked back in place;
    along the ``channels`` axis each channel gets its model from ``models``."""
    if data.ndim == 3:
        channel = index[channels] if channels is not None else None
        return denoise(data, models.for_channel(channel))
    return da.stack([denoise_volumes(data[i], models, channels, (*index, i)) for i in range(data.shape[0])])


def denoised_layer(layer: Any, models: ModelSet) -> tuple[da.Array, dict[str, Any]]:
    """The lazily denoised array of ``layer`` and the new layer's keyword arguments: the source's
    scale (voxel size), translation, units and axis labels carried over, its contrast limits
    reused (so adding the layer computes nothing)."""
    check_image_layer(layer)
    data = as_dask(full_resolution(layer))
    denoised = denoise_volumes(data, models, channel_axis(layer.ndim, layer.axis_labels))
    return denoised, {
        "name": f"{layer.name} denoised",
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "units": tuple(layer.units),
        "axis_labels": tuple(layer.axis_labels),
        "contrast_limits": tuple(layer.contrast_limits),
        "colormap": layer.colormap.name,
        "metadata": {"volden_model": models.path},
    }


def shown_index(layer: Any, world_point: Sequence[float]) -> tuple[int, ...]:
    """The layer's leading (time, channel) indices at the viewer's ``world_point``: the 3D volume
    on screen."""
    lead = layer.ndim - 3
    point = layer.world_to_data(world_point)
    shape = full_resolution(layer).shape
    return tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(point[:lead], shape[:lead]))


def layer_volume(layer: Any, index: tuple[int, ...]) -> Volume:
    """The 3D volume at ``index`` of ``layer``, lazily, with its voxel size, to train on.

    ``path`` names the file the layer was opened from, so training refuses to write into it, or
    else the layer (a name that is no folder)."""
    check_image_layer(layer)
    data = as_dask(full_resolution(layer))
    return Volume(
        data=data[index] if index else data,
        voxel_size=tuple(float(s) for s in layer.scale[-3:]),  # type: ignore[arg-type]
        unit=None,
        path=layer.source.path or f"napari layer {layer.name}",
        array_path="",
        index=index,
    )
