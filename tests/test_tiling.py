"""Geometry of blocked inference: blocks, tiles, windows and their summed weights."""

from __future__ import annotations

import numpy as np
import pytest

from volden.tiling import BLENDS, Tiling, intersect, tile_window, weight_sum, window_1d

# uneven last block on every axis (z: 8+8+4, y: 16+16+2, x: 16+16+16+6)
UNEVEN = Tiling(shape=(20, 34, 54), block=(8, 16, 16), halo=(4, 8, 8))


def _accumulated_weights(tiling: Tiling, blend: str) -> np.ndarray:
    """Brute force: paint every tile's window into the (halo-padded) volume and sum."""
    halo = tiling.halo
    total = np.zeros([s + 2 * h for s, h in zip(tiling.shape, halo)], dtype=np.float64)
    for index in tiling.blocks():
        block_shape = tuple(b - a for a, b in tiling.block_range(index))
        window = tile_window(block_shape, halo, blend)  # type: ignore[arg-type]
        where = tuple(slice(a + h, b + h) for (a, b), h in zip(tiling.tile_range(index), halo))
        total[where] += window
    return total[tuple(slice(h, h + s) for h, s in zip(halo, tiling.shape))]


def _assemble(tiling: Tiling, blend: str) -> np.ndarray:
    return np.block(
        [
            [[weight_sum(tiling, (i, j, k), blend) for k in range(tiling.grid[2])] for j in range(tiling.grid[1])]
            for i in range(tiling.grid[0])
        ]
    )


def test_grid_chunks_and_ranges():
    assert UNEVEN.grid == (3, 3, 4)
    assert UNEVEN.chunks == ((8, 8, 4), (16, 16, 2), (16, 16, 16, 6))
    assert UNEVEN.block_range((2, 2, 3)) == [(16, 20), (32, 34), (48, 54)]
    assert UNEVEN.tile_range((0, 1, 3)) == [(-4, 12), (8, 40), (40, 62)]
    assert len(list(UNEVEN.blocks())) == 3 * 3 * 4
    assert sorted(UNEVEN.neighbours((0, 0, 0))) == sorted(
        (a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)
    )
    assert len(list(UNEVEN.neighbours((1, 1, 1)))) == 27


@pytest.mark.parametrize(
    "block, halo",
    [((8, 16, 16), (4, 17, 8)), ((8, 16, 16), (9, 8, 8)), ((0, 16, 16), (0, 0, 0)), ((8, 8, 8), (-1, 0, 0))],
)
def test_bad_halo_or_block_raises(block, halo):
    with pytest.raises(ValueError):
        Tiling(shape=(32, 32, 32), block=block, halo=halo)


def test_halo_equal_to_block_is_allowed():
    Tiling(shape=(32, 32, 32), block=(8, 8, 8), halo=(8, 8, 8))


def test_intersect():
    a = [(0, 10), (5, 15), (-3, 3)]
    b = [(4, 20), (0, 8), (0, 1)]
    in_a, in_b = intersect(a, b)
    assert in_a == (slice(4, 10), slice(0, 3), slice(3, 4))
    assert in_b == (slice(0, 6), slice(5, 8), slice(0, 1))
    assert intersect([(0, 4)] * 3, [(4, 8)] * 3) is None


@pytest.mark.parametrize("blend", BLENDS)
def test_window_shape_symmetry_and_outer_margin(blend):
    w = window_1d(16, 8, blend)
    assert w.shape == (32,) and w.dtype == np.float32
    np.testing.assert_array_equal(w, w[::-1])
    assert np.all(w >= 0) and np.all(w <= 1)
    assert np.all(w[:4] == 0) and np.all(w[-4:] == 0)  # outer half of the halo gets no weight
    assert np.all(w[8:24] > 0)  # the block itself always does
    assert w[16] == w.max()  # largest in the middle


def test_unknown_blend_raises():
    with pytest.raises(ValueError, match="blend"):
        window_1d(16, 8, "cosine")  # type: ignore[arg-type]


def test_crop_window_keeps_the_block_only():
    w = window_1d(16, 8, "crop")
    np.testing.assert_array_equal(w, np.r_[np.zeros(8), np.ones(16), np.zeros(8)])


def test_tile_window_is_separable_product():
    w = tile_window((8, 16, 6), (4, 8, 3), "gaussian")
    assert w.shape == (16, 32, 12)
    expected = np.einsum("i,j,k->ijk", window_1d(8, 4, "gaussian"), window_1d(16, 8, "gaussian"), window_1d(6, 3, "gaussian"))
    np.testing.assert_allclose(w, expected, rtol=1e-6)


@pytest.mark.parametrize("blend", ["linear", "crop"])
def test_linear_and_crop_windows_sum_to_one(blend):
    """Neighbouring windows are complementary: their sum is one everywhere inside the volume that
    two tiles overlap (for crop: everywhere), also next to a shorter last block."""
    tiling = Tiling(shape=(40, 44, 60), block=(16, 16, 16), halo=(4, 8, 6))  # last blocks 8, 12, 12
    sums = _assemble(tiling, blend)
    assert sums.shape == tiling.shape
    inner = tuple(slice(h, s - h) if blend == "linear" else slice(None) for h, s in zip(tiling.halo, tiling.shape))
    np.testing.assert_allclose(sums[inner], 1.0, atol=1e-6)


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize(
    "tiling",
    [
        UNEVEN,
        Tiling(shape=(40, 44, 60), block=(16, 16, 16), halo=(4, 8, 6)),
        Tiling(shape=(17, 33, 9), block=(8, 8, 8), halo=(8, 3, 0)),
    ],
)
def test_weight_sum_matches_the_tiles_that_cover_a_block(tiling, blend):
    """weight_sum, which inference divides by, equals the sum of the windows actually applied to
    the tiles (uneven last blocks included), and is positive everywhere inside the volume."""
    expected = _accumulated_weights(tiling, blend)
    sums = _assemble(tiling, blend)
    np.testing.assert_allclose(sums, expected, rtol=1e-5, atol=1e-7)
    assert sums.min() > 0
