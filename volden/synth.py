"""Camera-like synthetic lightsheet volumes with their clean expectation, for demos and tests.

Objects (nuclei, neurites) are generated per cell of a coarse grid from a seed derived from the
cell's index, so any region can be rendered on its own: the volume is a lazy dask array, made
chunk by chunk, seamless across chunks and as large as wanted. The signal is blurred by an
anisotropic Gaussian PSF, turned into photons, and recorded by an sCMOS-like camera (Poisson
shot noise, gain, offset, Gaussian read noise, uint16).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import dask.array as da
import numpy as np
import zarr
from scipy import ndimage

from . import ome
from .errors import VoldenError

Kind = Literal["nuclei", "neurites", "mixed"]
KINDS: tuple[str, ...] = ("nuclei", "neurites", "mixed")
VOXEL_SIZE = (1.0, 0.5, 0.5)  # micrometres, z y x
PSF_SIGMA = (1.5, 1.0, 1.0)  # voxels, z y x
CELL = (16, 32, 32)
NUCLEUS_RADIUS = (3.0, 6.0)  # in z voxels; y and x twice that
NEURITE_LENGTH = 60.0


@dataclass(frozen=True)
class Camera:
    """sCMOS-like recording: ADU = offset + gain * (photo-electrons + read noise)."""

    offset: float = 100.0
    gain: float = 2.0
    read_noise: float = 1.5
    background: float = 2.0  # photons per voxel, on top of 5% of the peak photons

    def noise_curve(self) -> tuple[float, float]:
        """a and b of its ADU variance, a * expected ADU + b: gain^2 (photons + read noise^2),
        plus the rounding to integers (1/12)."""
        return self.gain, self.gain**2 * self.read_noise**2 - self.gain * self.offset + 1 / 12


def _cell_rng(seed: int, kind: str, cell: tuple[int, int, int]) -> np.random.Generator:
    return np.random.default_rng([seed, KINDS.index(kind), *cell])


def _cells_around(lo: np.ndarray, hi: np.ndarray, margin: float):
    first = np.floor((lo - margin) / CELL).astype(int)
    last = np.floor((hi + margin) / CELL).astype(int)
    for cz in range(max(first[0], 0), last[0] + 1):
        for cy in range(max(first[1], 0), last[1] + 1):
            for cx in range(max(first[2], 0), last[2] + 1):
                yield (cz, cy, cx)


def _box_slices(centre: np.ndarray, radius: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    start = np.maximum(np.floor(centre - radius).astype(int), lo)
    stop = np.minimum(np.ceil(centre + radius).astype(int) + 1, hi)
    if np.any(stop <= start):
        return None
    return start, stop


def _render_nuclei(out: np.ndarray, lo: np.ndarray, hi: np.ndarray, seed: int, shape) -> None:
    margin = 2 * NUCLEUS_RADIUS[1] + 2
    for cell in _cells_around(lo, hi, margin):
        rng = _cell_rng(seed, "nuclei", cell)
        for _ in range(rng.poisson(2.5)):
            centre = (np.array(cell) + rng.random(3)) * CELL
            rz = rng.uniform(*NUCLEUS_RADIUS)
            radius = np.array([rz, 2 * rz * rng.uniform(0.8, 1.2), 2 * rz * rng.uniform(0.8, 1.2)])
            brightness = rng.uniform(0.3, 1.0)
            waves = rng.normal(size=(3, 3)) * 0.6
            phases = rng.uniform(0, 2 * np.pi, 3)
            box = _box_slices(centre, radius + 1, lo, hi)
            if box is None or np.any(centre >= shape):
                continue
            start, stop = box
            grids = np.meshgrid(*[np.arange(a, b) + 0.5 for a, b in zip(start, stop)], indexing="ij")
            r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radius))
            texture = 1 + 0.12 * sum(
                np.cos(sum(w * g for w, g in zip(waves[i], grids)) + phases[i]) for i in range(3)
            )
            body = np.clip((1 - r2) * 4, 0, 1) * brightness * texture
            view = out[tuple(slice(a - l, b - l) for a, b, l in zip(start, stop, lo))]
            np.maximum(view, body, out=view)


def _render_neurites(out: np.ndarray, lo: np.ndarray, hi: np.ndarray, seed: int, shape) -> None:
    step = 0.5
    for cell in _cells_around(lo, hi, NEURITE_LENGTH + 2):
        rng = _cell_rng(seed, "neurites", cell)
        for _ in range(rng.poisson(1.5)):
            point = (np.array(cell) + rng.random(3)) * CELL
            direction = rng.normal(size=3) * np.array([0.3, 1, 1])
            direction /= np.linalg.norm(direction)
            brightness = rng.uniform(0.3, 1.0)
            steps = int(rng.uniform(0.3, 1.0) * NEURITE_LENGTH / step)
            wander = np.cumsum(rng.normal(size=(steps, 3)) * np.array([0.02, 0.08, 0.08]), axis=0)
            directions = direction + wander
            directions /= np.linalg.norm(directions, axis=1, keepdims=True)
            points = point + step * np.cumsum(directions, axis=0)
            idx = np.floor(np.array(points)).astype(int)
            inside = np.all((idx >= lo) & (idx < hi) & (idx < shape), axis=1)
            local = idx[inside] - lo
            np.add.at(out, tuple(local.T), brightness * step * 5.0)


def render_signal(
    region: tuple[slice, slice, slice], shape: tuple[int, int, int], kind: Kind, seed: int
) -> np.ndarray:
    """The clean signal (0..~1, blurred by the PSF) of one region of the volume."""
    pad = np.ceil(4 * np.array(PSF_SIGMA)).astype(int)
    lo = np.array([s.start for s in region]) - pad
    hi = np.array([s.stop for s in region]) + pad
    out = np.zeros(hi - lo, dtype=np.float32)
    if kind in ("nuclei", "mixed"):
        _render_nuclei(out, lo, hi, seed, np.array(shape))
    if kind in ("neurites", "mixed"):
        _render_neurites(out, lo, hi, seed, np.array(shape))
    blurred = ndimage.gaussian_filter(out, PSF_SIGMA, mode="constant")
    return blurred[tuple(slice(p, p + s.stop - s.start) for p, s in zip(pad, region))]


def _expected_adu(signal: np.ndarray, photons: float, camera: Camera) -> np.ndarray:
    expected_photons = camera.background + 0.05 * photons + photons * signal
    return (camera.offset + camera.gain * expected_photons).astype(np.float32)


def record(clean: np.ndarray, camera: Camera, rng: np.random.Generator) -> np.ndarray:
    """One noisy recording (uint16 ADU) of the expectation ``clean`` (ADU) by ``camera``."""
    expected_photons = (clean - camera.offset) / camera.gain
    electrons = rng.poisson(expected_photons) + rng.normal(0, camera.read_noise, clean.shape)
    adu = np.rint(camera.offset + camera.gain * electrons)
    return np.clip(adu, 0, np.iinfo(np.uint16).max).astype(np.uint16)


def noise_stream(seed: int, block_id: tuple[int, ...]) -> np.random.Generator:
    """The generator of block ``block_id``'s noise: any block can be recorded on its own."""
    return np.random.default_rng([seed, 7919, *block_id])


def synthetic_volume(
    shape: tuple[int, int, int] = (64, 256, 256),
    kind: Kind = "nuclei",
    photons: float = 20.0,
    seed: int = 0,
    chunks: tuple[int, int, int] = (32, 128, 128),
    camera: Camera = Camera(),
) -> tuple[da.Array, da.Array]:
    """Lazy (noisy uint16, clean float32) volumes in camera units (ADU).

    ``photons`` is the expected photon count at the brightest structures; the clean volume is
    the noise-free expectation of the noisy one.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")

    def clean_block(block_info=None):
        region = tuple(slice(a, b) for a, b in block_info[None]["array-location"])
        return _expected_adu(render_signal(region, shape, kind, seed), photons, camera)

    clean = da.map_blocks(clean_block, chunks=da.core.normalize_chunks(chunks, shape), dtype=np.float32)
    noisy = da.map_blocks(
        lambda block, block_id=None: record(block, camera, noise_stream(seed, block_id)),
        clean,
        dtype=np.uint16,
    )
    return noisy, clean


def write_synthetic(
    output: str | Path,
    shape: tuple[int, int, int] = (64, 256, 256),
    kind: Kind = "nuclei",
    photons: float = 20.0,
    seed: int = 0,
    chunks: tuple[int, int, int] = (32, 128, 128),
    overwrite: bool = False,
) -> Path:
    """Write an OME-Zarr 0.5 image of the noisy volume (array ``noisy``) with the clean
    expectation beside it (array ``clean``), chunk by chunk."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise VoldenError(f"{output} exists; pass --overwrite to replace it")
    if min(shape) < 1 or min(chunks) < 1:
        raise VoldenError(f"--shape {shape} and --chunks {chunks} must be positive")
    noisy, clean = synthetic_volume(shape, kind, photons, seed, chunks)
    if output.exists():
        shutil.rmtree(output)
    params = {"kind": kind, "photons": photons, "seed": seed, "camera": asdict(Camera()), "psf_sigma": PSF_SIGMA}
    target = ome.create_image(output, shape, chunks, np.uint16, {"synthetic": params}, dataset_path="noisy")
    group = zarr.open_group(str(output), mode="r+")
    clean_target = group.create_array("clean", shape=shape, chunks=chunks, dtype=np.float32, dimension_names=list(ome.SPATIAL_AXES))
    da.store([noisy, clean], [target, clean_target], lock=False)
    meta = ome.ImageMeta.spatial(VOXEL_SIZE, "micrometer", f"synthetic {kind}")
    ome.finalize_image(output, meta, levels=[ome.Level("noisy", meta.scale)])
    return output
