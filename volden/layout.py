"""How volden lays out the arrays it writes: chunks that suit viewers, shards that suit writers.

A viewer (napari, neuroglancer, BigDataViewer) fetches whole chunks for each plane it shows,
so chunks of a few MB, thin in z, keep browsing fast. A writer wants large pieces: volden apply
writes whole blocks. Chunks that divide the block let every block write whole chunks, so no two
writers ever touch one chunk; on zarr v3 one shard per block keeps it at one file per block.
"""

from __future__ import annotations

import math

VIEWER_CHUNK = (32, 256, 256)  # z, y, x: 4 MB of uint16, 8 MB of float32


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _side(block: int, target: int) -> int:
    divisors = _divisors(block)
    within = [d for d in divisors if target / 2 <= d <= target]
    return max(within) if within else min(divisors, key=lambda d: abs(math.log(d / target)))


def chunks_within(block: tuple[int, ...], target: tuple[int, ...] = VIEWER_CHUNK) -> tuple[int, ...]:
    """Per axis, a divisor of the block side: the largest within the viewer's chunk side (down
    to half of it), else the one nearest to it in ratio."""
    return tuple(_side(b, t) for b, t in zip(block, target))


def viewer_chunks(shape: tuple[int, ...], target: tuple[int, ...] = VIEWER_CHUNK) -> tuple[int, ...]:
    """Chunks of at most the viewer's size, for arrays no block writes (pyramid levels)."""
    return tuple(max(1, min(s, t)) for s, t in zip(shape, target))
