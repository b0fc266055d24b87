"""Synthetic volumes: deterministic, chunk-independent, camera statistics as documented."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from volden.synth import Camera, render_signal, synthetic_volume

SHAPE = (32, 64, 64)


@pytest.fixture(scope="module")
def volume():
    noisy, clean = synthetic_volume(shape=SHAPE, kind="mixed", photons=20.0, seed=3, chunks=(16, 32, 32))
    return noisy, clean, noisy.compute(), clean.compute()


def test_lazy_dtypes_and_shapes(volume):
    noisy, clean, noisy_np, clean_np = volume
    assert isinstance(noisy, da.Array) and isinstance(clean, da.Array)
    assert noisy.dtype == np.uint16 and clean.dtype == np.float32
    assert noisy_np.dtype == np.uint16 and clean_np.dtype == np.float32
    assert noisy.shape == clean.shape == noisy_np.shape == SHAPE
    assert noisy.chunks == ((16, 16), (32, 32), (32, 32))


def test_volume_has_structure(volume):
    _, _, _, clean = volume
    camera = Camera()
    floor = camera.offset + camera.gain * (camera.background + 0.05 * 20.0)
    assert clean.min() >= floor - 1e-3
    assert clean.max() > floor + camera.gain * 5  # some objects reach several photons above the floor


def test_same_seed_same_volume_different_seed_different(volume):
    noisy, clean, noisy_np, clean_np = volume
    again_noisy, again_clean = synthetic_volume(shape=SHAPE, kind="mixed", photons=20.0, seed=3, chunks=(16, 32, 32))
    np.testing.assert_array_equal(again_clean.compute(), clean_np)
    np.testing.assert_array_equal(again_noisy.compute(), noisy_np)
    other_noisy, other_clean = synthetic_volume(shape=SHAPE, kind="mixed", photons=20.0, seed=4, chunks=(16, 32, 32))
    assert not np.allclose(other_clean.compute(), clean_np)
    assert not np.array_equal(other_noisy.compute(), noisy_np)


def test_noise_is_unbiased_and_has_camera_variance(volume):
    _, _, noisy, clean = volume
    camera = Camera()
    noisy = noisy.astype(np.float64)
    assert abs(noisy.mean() - clean.mean()) <= 0.01 * clean.mean()
    # per-voxel variance in ADU^2: gain^2 * (photons + read_noise^2) + rounding (1/12)
    photons = (clean.astype(np.float64) - camera.offset) / camera.gain
    expected = (camera.gain**2 * (photons + camera.read_noise**2) + 1 / 12).mean()
    assert ((noisy - clean) ** 2).mean() == pytest.approx(expected, rel=0.05)
    # brighter voxels are noisier (shot noise), not a constant Gaussian
    bright = clean > np.percentile(clean, 95)
    dim = clean < np.percentile(clean, 50)
    assert ((noisy - clean)[bright] ** 2).mean() > 1.5 * ((noisy - clean)[dim] ** 2).mean()


@pytest.mark.parametrize("kind", ["nuclei", "neurites", "mixed"])
def test_clean_volume_does_not_depend_on_chunking(kind):
    shape = (32, 64, 96)
    _, small = synthetic_volume(shape=shape, kind=kind, seed=5, chunks=(16, 32, 32))
    _, large = synthetic_volume(shape=shape, kind=kind, seed=5, chunks=(32, 64, 64))
    small, large = small.compute(), large.compute()
    assert small.std() > 0
    np.testing.assert_allclose(small, large, rtol=1e-6, atol=1e-5)


def test_render_of_a_region_is_a_crop_of_a_bigger_render():
    shape = (40, 80, 80)
    big = render_signal((slice(0, 40), slice(0, 80), slice(0, 80)), shape, "mixed", 11)
    region = (slice(13, 29), slice(21, 50), slice(40, 77))
    part = render_signal(region, shape, "mixed", 11)
    assert big[region].max() > 0.05
    np.testing.assert_allclose(part, big[region], rtol=1e-6, atol=1e-6)


def test_photons_scale_the_signal():
    _, dim = synthetic_volume(shape=(16, 32, 32), photons=10.0, seed=2, chunks=(16, 32, 32))
    _, bright = synthetic_volume(shape=(16, 32, 32), photons=40.0, seed=2, chunks=(16, 32, 32))
    camera = Camera()
    dim_signal = dim.compute() - camera.offset - camera.gain * camera.background
    bright_signal = bright.compute() - camera.offset - camera.gain * camera.background
    np.testing.assert_allclose(bright_signal, 4 * dim_signal, rtol=1e-4, atol=1e-3)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="kind"):
        synthetic_volume(shape=(8, 8, 8), kind="cells")  # type: ignore[arg-type]
