"""napari's File > Open Sample > volden: a small noisy synthetic volume to try the widget on."""

from __future__ import annotations

from typing import Any

from ..synth import synthetic_volume

SAMPLE_SHAPE = (32, 128, 128)
SAMPLE_VOXEL_SIZE = (1.0, 0.5, 0.5)  # micrometres (z, y, x): coarser in z, as in lightsheet stacks


def noisy_nuclei() -> list[tuple[Any, dict[str, Any], str]]:
    """Shot- and read-noisy nuclei (uint16 camera units), 32 x 128 x 128 voxels."""
    noisy, _ = synthetic_volume(shape=SAMPLE_SHAPE, kind="nuclei", photons=10.0, seed=0, chunks=SAMPLE_SHAPE)
    return [(noisy.compute(), {"name": "noisy nuclei", "scale": SAMPLE_VOXEL_SIZE, "units": "um"}, "image")]
