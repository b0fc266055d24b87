"""The benchmark's volumes: noisy and clean pairs, written once as OME-Zarr images for volden.

Every volume is recorded by the camera of ``volden synth`` (Poisson shot noise, gain 2, offset
100, read noise 1.5 e-, background 2 photons + 5 % of the peak): the synthetic kinds by
``volden.synth`` itself, the real high-SNR volumes by scaling them so their 0.1-99.9 percentile
range spans ``photons`` photons and recording that. The real file is the 'clean' reference (its
own mild noise included: SNR about 69 for deconwolf and 35 for pollen, see SOURCES.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import zarr

from volden import ome
# synth's own camera model (private helpers), so real and synthetic volumes get the same noise
from volden.synth import KINDS, VOXEL_SIZE, Camera, _expected_adu, noise_stream, record, synthetic_volume
from volden.volume import Volume, open_volume

REAL_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
# file name and voxel size (z, y, x micrometres; pollen's is not stated), from SOURCES.md
REAL = {
    "deconwolf": ("deconwolf_widefield_dapi_001.tif", (0.3, 0.13, 0.13)),
    "pollen": ("sdeconv_pollen.tif", (1.0, 1.0, 1.0)),
}
REAL_PHOTONS = 20.0


@dataclass(frozen=True)
class Case:
    """One benchmark volume: its name, how it was made, and where its image is."""

    name: str
    about: str
    path: Path

    @property
    def noisy(self) -> Volume:
        return open_volume(str(self.path), "noisy")

    @property
    def clean(self) -> np.ndarray:
        return open_volume(str(self.path), "clean").data.compute()


def synth_names(photons: tuple[float, ...]) -> list[str]:
    """``KIND-PHOTONS`` for the synthetic kinds the issue names (nuclei, neurites)."""
    return [f"{kind}-{p:g}" for kind in KINDS if kind != "mixed" for p in photons]


def _write(path: Path, noisy: np.ndarray, clean: np.ndarray, voxel_size: tuple[float, ...], about: str) -> None:
    """An OME-Zarr image of ``noisy`` (uint16) with ``clean`` (float32) beside it, as ``volden synth``
    writes them, so volden reads the voxel size the pooling plan needs."""
    chunks = tuple(min(c, s) for c, s in zip((32, 128, 128), noisy.shape))
    target = ome.create_image(path, noisy.shape, chunks, np.uint16, {"benchmark": about}, dataset_path="noisy")
    target[...] = noisy
    group = zarr.open_group(str(path), mode="r+")
    group.create_array("clean", shape=clean.shape, chunks=chunks, dtype=np.float32,
                       dimension_names=list(ome.SPATIAL_AXES))[...] = clean
    meta = ome.ImageMeta.spatial(voxel_size, "micrometer", about)
    ome.finalize_image(path, meta, levels=[ome.Level("noisy", meta.scale)])


def _real_pair(file: Path, photons: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy uint16, clean float32) in ADU from a real high-SNR volume taken as the signal."""
    raw = tifffile.imread(file).astype(np.float32)
    low, high = np.percentile(raw, (0.1, 99.9))
    clean = _expected_adu(np.clip((raw - low) / (high - low), 0, None), photons, Camera())
    return record(clean, Camera(), noise_stream(seed, (0, 0, 0))), clean


def make_case(name: str, folder: Path, shape: tuple[int, int, int], real_dir: Path = REAL_DIR) -> Case | None:
    """The volume ``name`` (``KIND-PHOTONS`` or a key of ``REAL``) in ``folder``, made unless
    already there; None, with a message, when its real file is absent."""
    path = folder / f"{name}.zarr"
    if name in REAL:
        file, voxel_size = REAL[name]
        about = f"{file} at {REAL_PHOTONS:g} photons (Poisson-Gaussian, volden synth's camera)"
        if not (real_dir / file).exists():
            print(f"skipping {name}: {real_dir / file} is absent")
            return None
        if not path.exists():
            _write(path, *_real_pair(real_dir / file, REAL_PHOTONS, seed=0), voxel_size, about)
        return Case(name, about, path)
    kind, _, photons = name.partition("-")
    if kind not in KINDS or not photons:
        raise SystemExit(f"unknown volume {name!r}: KIND-PHOTONS (KIND one of {', '.join(KINDS)}) or one of {', '.join(REAL)}")
    about = f"volden synth {kind}, {photons} photons"
    if not path.exists():
        noisy, clean = synthetic_volume(shape, kind, float(photons), seed=0)  # type: ignore[arg-type]
        _write(path, noisy.compute(), clean.compute(), VOXEL_SIZE, about)
    return Case(name, about, path)
