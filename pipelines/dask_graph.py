"""volden inside your own dask graph: background subtraction -> denoise -> max projection.

    python pipelines/dask_graph.py MODEL VOLUME OUTPUT.zarr [--block Z,Y,X] [--make-example]

Every step is a lazy dask array; only the 2D maximum-intensity projection (MIP) is computed,
block by block, and stored in OUTPUT.zarr. The script measures what dask held in memory while it
ran and compares it with the size of the denoised volume, which never exists as one array.

The network must be trained on what it is applied to, so MODEL is trained on the
background-subtracted volume (``--make-example`` does that, on a synthetic volume it writes to
VOLUME, when MODEL and VOLUME do not exist yet).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import dask.array as da
import numpy as np
from dask.callbacks import Callback
from scipy import ndimage

import volden
from volden.synth import write_synthetic

BACKGROUND_SIGMA = (2.0, 8.0, 8.0)  # voxels z, y, x: far wider than a nucleus, so only haze and offset go
EXAMPLE_SHAPE = (32, 192, 192)
EXAMPLE_BLOCK = (16, 64, 64)  # small blocks, so that the small example runs in many pieces
EXAMPLE_TRAINING = volden.TrainConfig(steps=30, patch=(16, 32, 32), batch=2, width=4)  # seconds on a CPU


def subtract_background(data: da.Array, sigma: tuple[float, float, float] = BACKGROUND_SIGMA) -> da.Array:
    """``data`` minus a wide Gaussian of itself (camera offset and scattered-light haze), lazily.

    Each chunk is filtered with a halo of 3 sigma, so the result does not depend on the chunking.
    The background at a voxel weighs its own noise by a tiny fraction, so Noise2Self still holds.
    """
    depth = tuple(int(np.ceil(3 * s)) for s in sigma)
    smooth = data.astype(np.float32).map_overlap(ndimage.gaussian_filter, depth=depth, boundary="reflect",
                                                 sigma=sigma, mode="reflect", truncate=3.0)
    return data.astype(np.float32) - smooth


def max_projection(volume: volden.Volume, model: volden.Model | str | Path,
                   block: tuple[int, int, int] | None = None) -> da.Array:
    """The lazy graph: background subtraction -> ``volden.denoise`` -> maximum along z."""
    return volden.denoise(subtract_background(volume.data), model, block=block).max(axis=0)


def _owner(array: np.ndarray) -> np.ndarray:
    """The array that owns the memory ``array`` looks into (a slice keeps all of it alive)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


class HeldBytes(Callback):
    """What dask's local scheduler held while it computed: the most bytes of arrays alive in its
    task results at once, and the largest array any task made."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = self.largest = 0

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if isinstance(result, np.ndarray):
            self.largest = max(self.largest, result.nbytes)
        arrays = (_owner(value) for value in state["cache"].values() if isinstance(value, np.ndarray))
        owners = {id(array): array.nbytes for array in arrays}
        self.peak = max(self.peak, sum(owners.values()))


def make_example(model: Path, volume: Path) -> None:
    """A synthetic volume, and a model trained for a few steps on its background-subtracted form."""
    if not volume.exists():
        print(f"writing a synthetic volume {EXAMPLE_SHAPE} to {volume}")
        write_synthetic(volume, shape=EXAMPLE_SHAPE, kind="nuclei", chunks=EXAMPLE_BLOCK)
    if not model.exists():
        print(f"training {model} for {EXAMPLE_TRAINING.steps} steps on the background-subtracted volume")
        source = volden.open_volume(volume)
        subtracted = replace(source, data=subtract_background(source.data), source=None)  # no longer the store's
        volden.train(subtracted, model, EXAMPLE_TRAINING)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("volume", type=Path)
    parser.add_argument("output", type=Path, help="a zarr array for the 2D projection (must not exist)")
    parser.add_argument("--block", type=lambda text: tuple(int(v) for v in text.split(",")), default=None,
                        help="denoising block Z,Y,X (default: volden's, sized to the device)")
    parser.add_argument("--make-example", action="store_true", help="write VOLUME and train MODEL first if missing")
    args = parser.parse_args(argv)
    if args.output.exists():
        parser.error(f"{args.output} exists")
    if args.make_example:
        make_example(args.model, args.volume)
    block = args.block or (EXAMPLE_BLOCK if args.make_example else None)

    volume = volden.open_volume(args.volume)
    mip = max_projection(volume, args.model, block)
    held = HeldBytes()
    with held:
        mip.to_zarr(str(args.output))
    whole = int(np.prod(volume.shape)) * np.dtype(np.float32).itemsize
    print(f"wrote {args.output}: the {mip.shape[0]}x{mip.shape[1]} maximum projection of {volume.path}, "
          "background-subtracted and denoised")
    print(f"the denoised volume ({'x'.join(map(str, volume.shape))} float32, {whole / 1e6:.1f} MB) never existed "
          f"as one array: the largest array a task made was {held.largest / 1e6:.1f} MB")
    print(f"dask held at most {held.peak / 1e6:.1f} MB of arrays at once ({held.peak / whole:.2f} x the volume)")
    if held.peak >= whole:
        print("dask kept the overlaps (the background filter's halos, the denoising tiles) of a slab of block "
              "columns alive at once, here all of them; the slab's share falls as the volume grows in y and x. "
              "For volumes beyond memory, run `volden apply`, which keeps the overlaps on disk, and build the "
              "rest of the graph on its output")


if __name__ == "__main__":
    main()
