"""Calibrate classic denoisers without clean data: rank their parameters by the J-invariant loss.

Every candidate of :func:`volden.classic.candidates` is measured by
:func:`volden.jinvariant.masked_losses` on the same random blocks and phases of the volume, read
lazily, and ranked. The best one's parameters are those of the best J-invariant filter; they are
applied with the plain filter (one pass, no masking), as the classic baseline to beat.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import dask.array as da
import numpy as np

from . import ome
from ._version import __version__
from .classic import Classic, candidates
from .errors import VoldenError
from .jinvariant import BLOCK, BLOCKS, GRID, PHASES, Box, Identity, masked_losses, sample_blocks
from .paths import check_output_path
from .volume import Volume

REPORT_JSON = "calibration.json"
REPORT_PNG = "calibration.png"


@dataclass(frozen=True)
class Calibration:
    """Classic denoisers ranked by self-supervised loss, lowest (best) first, in squared input
    units; ``input_loss`` is the raw input's (the donut fill's), for scale."""

    ranked: list[tuple[Classic, float]]
    input_loss: float
    voxels: int
    blocks: list[Box]

    @property
    def best(self) -> Classic:
        return self.ranked[0][0]

    def to_dict(self) -> dict:
        return {
            "ranked": [{"denoiser": str(c), "method": c.method, "size": list(c.size), "loss": loss} for c, loss in self.ranked],
            "input_loss": self.input_loss,
            "masked_voxels": self.voxels,
            "blocks": [list(map(list, box)) for box in self.blocks],
        }


def calibrate(
    data: da.Array,
    methods: Sequence[str] = ("gaussian",),
    voxel_size: Sequence[float] | None = None,
    blocks: int = BLOCKS,
    block: Sequence[int] = BLOCK,
    phases: int | None = PHASES,
    grid: tuple[int, int, int] = GRID,
    seed: int = 0,
) -> Calibration:
    """Rank the parameter grids of ``methods`` by their J-invariant loss on ``blocks`` random
    blocks of ``data`` (z, y, x), ``phases`` masking phases each (None: all)."""
    tried = [c for method in methods for c in candidates(method, voxel_size)]
    boxes = sample_blocks(tuple((0, n) for n in data.shape), block, blocks, seed)
    losses = masked_losses(data, boxes, [Identity(), *tried], grid, phases, seed)
    order = np.argsort(losses.values[1:], kind="stable")
    return Calibration(
        ranked=[(tried[i], float(losses.values[1 + i])) for i in order],
        input_loss=float(losses.values[0]),
        voxels=losses.voxels,
        blocks=boxes,
    )


def plot_calibration(calibration: Calibration, path: str | Path) -> None:
    """Loss against lateral size, one panel per method (one line per z/lateral ratio), the
    input's loss dashed and the best marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({c.method for c, _ in calibration.ranked})
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        lines: dict[float, list[tuple[float, float]]] = {}
        for c, loss in calibration.ranked:
            if c.method == method:
                lines.setdefault(round(c.size[0] / c.size[1], 3), []).append((c.size[1], loss))
        for ratio, points in sorted(lines.items()):
            points.sort()
            ax.plot(*zip(*points), marker="o", label=f"z / lateral = {ratio:g}")
        ax.axhline(calibration.input_loss, color="grey", linestyle="--", label="input (no denoising)")
        best = min((item for item in calibration.ranked if item[0].method == method), key=lambda item: item[1])
        ax.plot(best[0].size[1], best[1], marker="*", markersize=16, color="black", linestyle="none",
                label=f"best {best[0]}")
        ax.set_xlabel("lateral sigma (voxels)" if method == "gaussian" else "lateral radius (voxels)")
        ax.set_ylabel("self-supervised loss (masked MSE)")
        ax.set_title(f"{method} (J-invariant)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def check_outputs(
    input_path: str | Path, report: str | Path | None, denoised: str | Path | None, overwrite: bool
) -> None:
    """Refuse, before any work, outputs that would write into the input or replace files
    without ``overwrite``."""
    if report is not None:
        check_output_path(input_path, report, overwrite=True)
        taken = [str(Path(report) / name) for name in (REPORT_JSON, REPORT_PNG) if (Path(report) / name).exists()]
        if taken and not overwrite:
            raise VoldenError(f"{', '.join(taken)} exist; pass --overwrite to replace them")
    if denoised is not None:
        check_output_path(input_path, denoised, overwrite)


def write_report(calibration: Calibration, folder: str | Path, about: dict) -> list[Path]:
    """The ranked losses as JSON (with ``about``: what was calibrated) and their plot."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REPORT_JSON).write_text(json.dumps({**about, **calibration.to_dict()}, indent=1))
    plot_calibration(calibration, folder / REPORT_PNG)
    return [folder / REPORT_JSON, folder / REPORT_PNG]


def write_denoised(
    volume: Volume, denoiser: Classic, output: str | Path, overwrite: bool = False, ome_version: str = "0.5"
) -> Path:
    """``denoiser`` over the whole volume, block by block (the input's chunks, with overlaps),
    into a float32 OME-Zarr image at ``output`` with the input's voxel size."""
    check_output_path(volume.path, output, overwrite)
    output = Path(output)
    if output.exists():
        shutil.rmtree(output)
    provenance = {"input": volume.path, "array": volume.array_path, "denoiser": str(denoiser), "version": __version__}
    target = ome.create_image(output, volume.shape, volume.chunks, np.float32, provenance, ome_version)
    da.store(denoiser.lazy(volume.data).rechunk(volume.chunks), target, lock=False)
    ome.finalize_image(output, ome.ImageMeta.spatial(volume.voxel_size, volume.unit, f"{denoiser} of {volume.path}"),
                       ome_version)
    return output
