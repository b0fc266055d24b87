"""Blocked inference is seamless: the chunked result equals one whole-volume pass, and block faces
show no more gradient than the inside of blocks. Also the in-memory prediction helpers."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from volden.errors import VoldenError
from volden.inference import default_block, denoise
from volden.model import save_model
from volden.predict import default_halo, predict_array
from volden.unet import UNetConfig, receptive_radius

from conftest import SEAM_BLOCK, make_model, tiny_config


def _face_gradient_ratios(out: np.ndarray, block: tuple[int, int, int]) -> list[float]:
    """Per lateral axis: mean |difference| across block faces / mean |difference| inside blocks."""
    ratios = []
    for axis in (1, 2):
        diff = np.abs(np.diff(out, axis=axis))
        position = np.arange(diff.shape[axis])
        face = (position % block[axis]) == block[axis] - 1  # between voxel b-1 and b of a block pair
        assert face.sum() >= 2
        ratios.append(float(diff.compress(face, axis=axis).mean() / diff.compress(~face, axis=axis).mean()))
    return ratios


@pytest.mark.parametrize("blend", ["gaussian", "linear", "crop"])
def test_blocked_equals_whole_volume_and_has_no_seams(blend, seam_model, seam_volume, seam_reference):
    x = seam_volume
    result = denoise(da.from_array(x, chunks=(32, 48, 48)), seam_model, block=SEAM_BLOCK, blend=blend, device="cpu")
    assert result.chunks == ((16, 16), (32, 32, 32), (32, 32, 32))
    out = result.compute()
    assert out.dtype == np.float32 and out.shape == x.shape
    reference = seam_reference
    span = float(reference.max() - reference.min())
    assert span > 0
    assert np.abs(out - reference).max() <= 1e-3 * span
    # Block faces show no more gradient than the inside of blocks (the literal criterion), and no
    # more than the whole-volume pass shows at the same places (the content's own share).
    for ratio, reference_ratio in zip(_face_gradient_ratios(out, SEAM_BLOCK), _face_gradient_ratios(reference, SEAM_BLOCK)):
        assert ratio <= 1.02
        assert ratio <= 1.02 * reference_ratio


def test_seam_check_detects_seams(seam_model, seam_volume, seam_reference):
    """The acceptance checks above can fail: tiles without a halo disagree at their faces."""
    out = denoise(
        da.from_array(seam_volume, chunks=SEAM_BLOCK), seam_model, block=SEAM_BLOCK, halo=(0, 0, 0), blend="crop", device="cpu"
    ).compute()
    span = float(seam_reference.max() - seam_reference.min())
    assert np.abs(out - seam_reference).max() > 1e-2 * span
    assert max(_face_gradient_ratios(out, SEAM_BLOCK)) > 1.1


def test_uneven_last_blocks(seam_model, seam_volume):
    """A volume that is not a multiple of the block (nor of the network's divisor) works."""
    x = np.ascontiguousarray(seam_volume[:21, :42, :45])
    reference = predict_array(seam_model, x, "cpu")
    result = denoise(da.from_array(x, chunks=(21, 42, 45)), seam_model, block=SEAM_BLOCK, blend="gaussian", device="cpu")
    assert result.chunks == ((16, 5), (32, 10), (32, 13))
    out = result.compute()
    assert out.shape == x.shape and np.all(np.isfinite(out))
    span = float(reference.max() - reference.min())
    assert np.abs(out - reference).max() <= 1e-3 * span


def test_block_not_a_multiple_of_the_divisor_is_refused_or_seamless(seam_model, seam_volume):
    """Tiles start at multiples of the block minus the halo; if those are not multiples of the
    network's pooling divisor (2, 4, 4), neighbouring tiles pool on different grids and disagree.
    denoise must either refuse such a block or still match the whole-volume pass."""
    x = np.ascontiguousarray(seam_volume[:16, :60, :60])
    block = (16, 30, 30)
    assert any(b % d for b, d in zip(block, seam_model.config.divisor))
    try:
        out = denoise(da.from_array(x), seam_model, block=block, device="cpu").compute()
    except (ValueError, VoldenError):
        return  # refusing the block is fine
    reference = predict_array(seam_model, x, "cpu")
    relative = float(np.abs(out - reference).max() / (reference.max() - reference.min()))
    assert relative <= 1e-3, f"blocked result differs by {relative:.2%} of the output range"


def test_denoise_is_in_input_units_and_loads_model_from_path(tmp_path, seam_model, seam_volume):
    """Output is in the input's units (near the raw level, not the normalised ~0) and a saved
    model folder can be given instead of a Model."""
    x = np.ascontiguousarray(seam_volume[:16, :32, :32])
    folder = save_model(seam_model, tmp_path / "model")
    from_path = denoise(da.from_array(x), folder, block=(16, 32, 32), device="cpu").compute()
    from_model = denoise(da.from_array(x), seam_model, block=(16, 32, 32), device="cpu").compute()
    np.testing.assert_allclose(from_path, from_model, rtol=1e-6)
    assert abs(float(from_model.mean()) - seam_model.normalisation.mean) < 5 * seam_model.normalisation.std


def test_denoise_rejects_non_3d():
    model = make_model()
    with pytest.raises(ValueError, match="3D"):
        denoise(da.zeros((2, 16, 32, 32), chunks=(1, 16, 32, 32)), model)


def test_default_halo_and_block():
    model = make_model(tiny_config())
    halo = default_halo(model)
    radius = receptive_radius(model.config)
    for h, r, d in zip(halo, radius, model.config.divisor):
        assert h % max(4, d) == 0
        assert h >= 3 * r // 4  # DEFAULT_REACH: three quarters of the reach (BENCHMARKS.md "Halo")
    divisor = model.config.divisor
    # A volume whose tile fits one pass is one block (rounded up to the divisor, at least twice the halo).
    expected = tuple(max(-(-s // d) * d, -(-2 * h // d) * d) for s, d, h in zip((30, 61, 64), divisor, halo))
    assert default_block((30, 61, 64), halo, divisor, 10**7) == expected
    # Otherwise: the largest block whose tile fits, sides in proportion to the halo.
    budget = 2**22
    for shape in [(10_000, 10_000, 10_000), (40, 5000, 5000)]:
        block = default_block(shape, halo, divisor, budget)
        tile = [b + 2 * h for b, h in zip(block, halo)]
        assert np.prod(tile) <= budget
        assert all(b % d == 0 and b >= 2 * h for b, d, h in zip(block, divisor, halo))
        for axis in range(3):
            grown = list(tile)
            grown[axis] += divisor[axis]
            assert np.prod(grown) > budget or block[axis] >= shape[axis], (shape, block, axis)
    block = default_block((10_000, 10_000, 10_000), (8, 16, 16), (2, 4, 4), budget)
    assert abs(block[1] / 16 - block[0] / 8) <= 1 and block[1] == block[2]


# A network with a small receptive field (5, 16, 16) so that sub-tiling needs few passes; divisor
# (1, 4, 4). The depth-1 network pools (2, 2, 2) once.
SUBTILE_CONFIGS = {
    "depth2-lateral": UNetConfig(depth=2, width=4, pools=((1, 2, 2), (1, 2, 2)), convs_per_level=1),
    "depth1-isotropic": tiny_config(depth=1),
}


@pytest.mark.parametrize("name", sorted(SUBTILE_CONFIGS))
def test_subtiling_matches_a_single_pass(name, seam_volume):
    """predict_array with a small max_voxels (sub-tiles with cropped margins) gives the same
    result as one pass over the whole array."""
    model = make_model(SUBTILE_CONFIGS[name], seed=2)
    x = np.ascontiguousarray(seam_volume[:8, :50, :50])
    single = predict_array(model, x, "cpu")
    padded = [n + 2 * e for n, e in zip(x.shape, default_halo(model))]
    max_voxels = 60000
    assert np.prod(padded) > max_voxels  # sub-tiling really happens
    tiled = predict_array(model, x, "cpu", max_voxels=max_voxels)
    relative = float(np.abs(tiled - single).max() / (single.max() - single.min()))
    assert relative <= 1e-4, f"sub-tiled result differs by {relative:.2%} of the output range"


def test_views_average_the_symmetric_predictions(seam_model, seam_volume, seam_reference):
    """Two views: the mean of the plain prediction and the x-mirrored one, mirrored back."""
    mirrored = predict_array(seam_model, np.ascontiguousarray(seam_volume[:, :, ::-1]), "cpu")[:, :, ::-1]
    expected = (seam_reference + mirrored) / 2
    span = float(seam_reference.max() - seam_reference.min())
    assert np.abs(mirrored - seam_reference).max() > 1e-2 * span  # the untrained network is not symmetric
    assert np.abs(predict_array(seam_model, seam_volume, "cpu", views=2) - expected).max() <= 1e-4 * span


def test_blocked_with_views_equals_the_whole_volume_with_views(seam_model, seam_volume):
    whole = predict_array(seam_model, seam_volume, "cpu", views=8)
    blocked = denoise(da.from_array(seam_volume, chunks=(32, 48, 48)), seam_model, block=SEAM_BLOCK, views=8,
                      device="cpu").compute()
    assert np.abs(blocked - whole).max() <= 1e-3 * float(whole.max() - whole.min())


def test_denoise_rejects_an_unknown_number_of_views(seam_model, seam_volume):
    with pytest.raises(ValueError, match="views must be one of"):
        denoise(da.from_array(seam_volume), seam_model, views=3)
