"""Test-time augmentation: the symmetries of the yx plane a prediction may be averaged over.

Training augments patches with all eight (flips and quarter turns in yx, each also flipped in
z unless ``flip_z`` is off), so the network denoises every view equally well; their errors
differ, so their mean is closer to the signal.
Kept free of torch so the CLI can offer the choices without importing it; ``predict`` turns
tensors on the device.
"""

from __future__ import annotations


Symmetry = tuple[int, bool]  # (quarter turns in yx, mirrored in x)

VIEWS = (1, 2, 4, 8)
DEFAULT_VIEWS = 1
# identity, mirror, half turn and its mirror (these keep a rectangle's shape), then quarter turns
_ORDER: tuple[Symmetry, ...] = (
    (0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True),
)


def symmetries(views: int) -> tuple[Symmetry, ...]:
    """The first ``views`` symmetries."""
    if views not in VIEWS:
        raise ValueError(f"views must be one of {VIEWS}, got {views}")
    return _ORDER[:views]
