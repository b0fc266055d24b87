"""``volden preview``: orthogonal slices (xy, xz, yz) before and after denoising, in one contrast.

Only the three planes through one point are read (lazily, with dask), so a preview of a TB
volume costs the chunks those planes cross. The xz and yz panels are drawn at the physical
aspect ratio of the voxels, and every panel shares one display range, taken from the denoised
slices when there are any (the input's noise would stretch the range).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import dask
import numpy as np
import zarr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .errors import VoldenError
from .paths import check_output_path
from .volume import Volume, open_image, open_volume

PERCENTILES = (0.5, 99.8)
AXES = ("z", "y", "x")
PLANES = {"xy": (0, 1, 2), "xz": (1, 0, 2), "yz": (2, 0, 1)}  # plane -> axes (it cuts, down it, across it)
FIGURE_WIDTH_IN = 12.0
ROW_HEIGHT_IN = (1.5, 8.0)  # a row's image height is kept within these bounds
TITLE_HEIGHT_IN = 0.6

Planes = dict[str, np.ndarray]


@dataclass(frozen=True)
class Preview:
    """What a preview showed: the point its planes go through and the one display range."""

    at: tuple[int, int, int]
    display_range: tuple[float, float]
    range_from: str


def slice_point(shape: Sequence[int], at: Sequence[int] | None = None) -> tuple[int, int, int]:
    """The point the planes go through: ``at`` (checked against ``shape``), else the centre."""
    if at is None:
        return (shape[0] // 2, shape[1] // 2, shape[2] // 2)
    if len(at) != 3 or not all(0 <= a < n for a, n in zip(at, shape)):
        raise VoldenError(f"--at {','.join(map(str, at))} lies outside the volume (shape {tuple(shape)})")
    return (int(at[0]), int(at[1]), int(at[2]))


def read_slices(volume: Volume, at: tuple[int, int, int]) -> Planes:
    """The xy, xz and yz planes through ``at``, read together (chunks they share are read once)."""
    lazy = [volume.data[tuple(at[a] if a == cut else slice(None) for a in range(3))] for cut, _, _ in PLANES.values()]
    return dict(zip(PLANES, dask.compute(*lazy)))


def display_range(planes: Planes, percentiles: tuple[float, float] = PERCENTILES) -> tuple[float, float]:
    """Low and high percentiles of all the voxels of ``planes``."""
    values = np.concatenate([p.ravel() for p in planes.values()]).astype(np.float64)
    low, high = np.percentile(values, percentiles)
    return float(low), float(high)


def preview_figure(
    rows: Sequence[tuple[str, Planes]],
    at: tuple[int, int, int],
    voxel_size: Sequence[float] | None,
    vrange: tuple[float, float],
) -> Figure:
    """One row per (label, planes), columns xy, xz, yz at the voxels' physical aspect ratio."""
    size = tuple(voxel_size) if voxel_size else (1.0, 1.0, 1.0)
    planes = rows[0][1]
    widths = [planes[p].shape[1] * size[across] for p, (_, _, across) in PLANES.items()]
    heights = [planes[p].shape[0] * size[down] for p, (_, down, _) in PLANES.items()]
    row_height = float(np.clip(FIGURE_WIDTH_IN * max(heights) / sum(widths), *ROW_HEIGHT_IN))
    fig = Figure(figsize=(FIGURE_WIDTH_IN, len(rows) * (row_height + TITLE_HEIGHT_IN)), layout="constrained")
    axes = fig.subplots(len(rows), len(PLANES), squeeze=False, gridspec_kw={"width_ratios": widths})
    for ax_row, (label, planes) in zip(axes, rows):
        for ax, (plane, (cut, down, across)) in zip(ax_row, PLANES.items()):
            ax.imshow(planes[plane], cmap="gray", vmin=vrange[0], vmax=vrange[1],
                      aspect=size[down] / size[across], interpolation="nearest")
            ax.set_title(f"{label}\n{plane} at {AXES[cut]} = {at[cut]}", fontsize=9)
            ax.axis("off")
    return fig


def _label(path: str, array: str | None, channel: int | None, timepoint: int | None) -> str:
    parts = [f"{path}/{array}" if array else path]
    parts += [f"{name} {value}" for name, value in (("channel", channel), ("timepoint", timepoint)) if value is not None]
    return ", ".join(parts)


def _denoised_volume(path: str, channel: int | None, timepoint: int | None) -> Volume:
    """The denoised counterpart of the input's ``channel`` and ``timepoint``.

    A ``volden apply`` output records which of its input's channels and time points it holds;
    any other image is taken to hold the same ones, or only the one picked when it has one.
    """
    image = open_image(path)
    node = zarr.open(path, mode="r")
    made_from = node.attrs.get("volden", {}) if isinstance(node, zarr.Group) else {}

    def position(picked: int | None, axis: str, size: int) -> int | None:
        held = made_from.get(f"{axis}s")
        if picked is None or held is None:
            return picked if size > 1 else None
        if picked not in held:
            raise VoldenError(f"{path} was made from {axis}s {held} of its input, not {axis} {picked}")
        return held.index(picked)

    return image.pick(position(channel, "channel", image.channels), position(timepoint, "timepoint", image.timepoints))


def save_preview(
    input: str | Path,
    output: str | Path,
    denoised: str | Path | None = None,
    array: str | None = None,
    channel: int | None = None,
    timepoint: int | None = None,
    at: Sequence[int] | None = None,
    overwrite: bool = False,
    percentiles: tuple[float, float] = PERCENTILES,
) -> Preview:
    """Write the orthogonal slices of ``input`` (and below them, of ``denoised``) to ``output``.

    Everything is checked before a voxel is read; ``output`` is the only file written.
    """
    input, output = str(input), Path(output)
    for source in (input, denoised):
        if source is not None:
            check_output_path(source, output, overwrite)
    fmt = output.suffix.lstrip(".").lower()
    if fmt not in FigureCanvasAgg.get_supported_filetypes():
        raise VoldenError(f"{output}: cannot write a {output.suffix or 'suffix-less'} image; use e.g. .png")
    if not output.parent.is_dir():
        raise VoldenError(f"{output}: folder {output.parent} does not exist")
    before = open_volume(input, array, channel, timepoint)
    volumes = [(_label(input, array, channel, timepoint), before)]
    if denoised is not None:
        after = _denoised_volume(str(denoised), channel, timepoint)
        if after.shape != before.shape:
            raise VoldenError(
                f"{denoised} has shape {after.shape} and {input} {before.shape}: "
                "a preview compares volumes of the same shape"
            )
        volumes.append((_label(str(denoised), None, channel, timepoint), after))
    point = slice_point(before.shape, at)
    rows = [(label, read_slices(volume, point)) for label, volume in volumes]
    range_from, reference = rows[-1]
    vrange = display_range(reference, percentiles)
    fig = preview_figure(rows, point, before.voxel_size, vrange)
    fig.savefig(output, dpi=100, format=fmt)
    return Preview(point, vrange, range_from)
