"""The posterior step: the noise curve fitted from the volume, the prior's loss, its blindness,
the posterior mean's closed form, and a prior model through blocked inference and the command."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess

import dask.array as da
import numpy as np
import pytest
import torch

from volden.errors import VoldenError
from volden.inference import denoise
from volden.model import Model, load_model
from volden.noise_curve import FLOOR, NoiseCurve, fit_array, fit_noise_curve
from volden.normalisation import Normalisation
from volden.posterior import blind_prior, posterior_mean, posterior_prediction, prior_nll
from volden.predict import _network_pass, default_halo, normalised_on, predict_array, reflect_pad
from volden.synth import Camera, synthetic_volume, write_synthetic
from volden.training import TrainConfig
from volden.unet import UNet3D

from cli_helpers import volden_command
from conftest import tiny_config

CAMERAS = [Camera(), Camera(offset=300.0, gain=4.0, read_noise=3.0)]


@pytest.mark.parametrize("camera", CAMERAS, ids=["gain2-offset100-read1.5", "gain4-offset300-read3"])
def test_noise_curve_fit_is_within_ten_percent_of_the_camera(camera):
    noisy, _ = synthetic_volume((64, 128, 128), "nuclei", 20.0, seed=1, camera=camera)
    curve = fit_noise_curve(noisy)
    a, b = camera.noise_curve()
    assert abs(curve.a - a) <= 0.1 * abs(a)
    assert abs(curve.b - b) <= 0.1 * abs(b)
    curve.check()


def prior_model(normalisation: Normalisation, curve: NoiseCurve, seed: int = 2) -> Model:
    """A random prior network of depth 1 (a small halo keeps the eight passes quick)."""
    torch.manual_seed(seed)
    network = UNet3D(dataclasses.replace(tiny_config(depth=1), outputs=2)).eval()
    return Model(network, normalisation, {"grid": [2, 2, 2], "fill": "donut", "phases": 2}, noise_curve=curve)


@pytest.fixture(scope="module")
def model(seam_model) -> Model:
    return prior_model(seam_model.normalisation, NoiseCurve(2.0, -190.0, 100.0, 160.0))


def volume_prior(model: Model, raw: np.ndarray) -> np.ndarray:
    """The blind prior over the volume, reflect-padded at its edge as ``predict_array`` does."""
    edge = default_halo(model)
    network = model.network_on(torch.device("cpu"))
    with torch.inference_mode():
        x = reflect_pad(normalised_on(model.normalisation, raw, torch.device("cpu")), [(e, e) for e in edge])
        prior = blind_prior(lambda a: _network_pass(network, a, 2**24), x, (2, 2, 2))
    return prior[(slice(None), *(slice(e, e + n) for e, n in zip(edge, raw.shape)))].numpy()


@pytest.fixture(scope="module")
def small_volume(seam_volume) -> np.ndarray:
    return np.ascontiguousarray(seam_volume[:16, :48, :48])


@pytest.fixture(scope="module")
def small_prior(model, small_volume) -> np.ndarray:
    return volume_prior(model, small_volume)


@pytest.mark.parametrize("voxel", [(7, 20, 21), (0, 0, 0), (15, 47, 0), (0, 23, 47)])
def test_the_prior_at_a_voxel_ignores_that_voxel(model, small_volume, small_prior, voxel):
    changed = small_volume.copy()
    changed[voxel] += 500.0
    before, after = small_prior, volume_prior(model, changed)
    np.testing.assert_allclose(after[(slice(None), *voxel)], before[(slice(None), *voxel)], rtol=0, atol=1e-5)
    neighbours = tuple(slice(max(v - 2, 0), v + 3) for v in voxel)
    assert np.abs(after[(slice(None), *neighbours)] - before[(slice(None), *neighbours)]).max() > 1e-3  # the test can fail


def test_the_posterior_weighs_the_voxel_by_its_prior_variance(model, small_volume, small_prior):
    voxel = (7, 20, 21)
    changed = small_volume.copy()
    changed[voxel] += 500.0
    out_before, out_after = (predict_array(model, v, "cpu") for v in (small_volume, changed))
    mean, variance = small_prior[0][voxel], math.exp(small_prior[1][voxel])
    norm = model.normalisation
    noise = model.noise_curve.variance(mean * norm.std + norm.mean) / norm.std**2
    assert out_after[voxel] - out_before[voxel] == pytest.approx(500.0 * variance / (variance + noise), rel=1e-3)


def test_posterior_mean_closed_form_by_hand():
    normalisation = Normalisation(mean=100.0, std=10.0, low=100.0, high=150.0)
    model = prior_model(normalisation, NoiseCurve(2.0, -100.0, 100.0, 150.0))
    # a prior of mean 0.5 (105 in input units) and variance 0.9 everywhere; the noise there is
    # 2 * 105 - 100 = 110 in input units, 1.1 normalised: the posterior is (0.9 y + 1.1 * 0.5) / 2
    constant = lambda a: torch.stack([torch.full_like(a, 0.5), torch.full_like(a, math.log(0.9))])  # noqa: E731
    y = torch.tensor([[[-1.0, 0.0], [2.0, 0.5]]])
    out = posterior_prediction(model, y, constant)
    np.testing.assert_allclose(out.numpy(), ((0.9 * y + 1.1 * 0.5) / 2.0).numpy(), rtol=1e-6)
    assert posterior_mean(torch.tensor(3.0), torch.tensor(1.0), torch.tensor(1.0), torch.tensor(3.0)).item() == 1.5


def test_noise_variance_is_converted_to_normalised_units_and_floored():
    normalisation = Normalisation(mean=100.0, std=10.0, low=100.0, high=150.0)
    curve = NoiseCurve(2.0, -190.0, 100.0, 150.0)
    values = curve.normalised_variance(torch.tensor([1.0, -1.0, -5.0]), normalisation)
    np.testing.assert_allclose(values.numpy(), [(2 * 110 - 190) / 100, (2 * 90 - 190) / 100 * 0 + FLOOR, FLOOR], rtol=1e-6)


def test_prior_nll_by_hand():
    out = torch.tensor([1.0, math.log(0.5), 7.0, 0.0]).view(2, 2, 1, 1, 1)  # two samples: (mean, log var)
    target = torch.tensor([2.0, 3.0]).view(2, 1, 1, 1, 1)
    mask = torch.tensor([True, False]).view(2, 1, 1, 1, 1)
    loss = prior_nll(out, target, mask, lambda mean: torch.full_like(mean, 1.5))
    assert loss.item() == pytest.approx(0.5 * (math.log(2.0) + 1.0 / 2.0))  # only the masked sample counts


def test_the_curve_check_refuses_what_is_not_a_camera():
    with pytest.raises(VoldenError, match="falls as the signal rises"):
        NoiseCurve(-0.5, 300.0, 100.0, 200.0).check()
    with pytest.raises(VoldenError, match="negative at mean 98"):
        NoiseCurve(3.437, -344.2, 98.0, 240.0).check()
    NoiseCurve(3.437, -344.2, 104.0, 240.0).check()  # positive over the range it was fitted on
    rng = np.random.default_rng(0)
    mean = np.linspace(100, 180, 32)[:, None, None] * np.ones((32, 64, 64))
    falling = mean + rng.normal(size=mean.shape) * np.sqrt(400 - 2 * mean)
    assert fit_array(falling).a < 0


def test_a_prior_model_blocked_equals_one_whole_pass(model, small_volume):
    reference = predict_array(model, small_volume, "cpu")
    out = denoise(da.from_array(small_volume, chunks=(16, 24, 24)), model, block=(8, 16, 16), device="cpu").compute()
    span = float(reference.max() - reference.min())
    assert np.abs(out - reference).max() <= 1e-3 * span
    denoiser = UNet3D(tiny_config(depth=1)).eval()
    plain = predict_array(dataclasses.replace(model, network=denoiser, noise_curve=None), small_volume, "cpu")
    assert np.abs(plain - reference).max() > 1e-2 * span  # a prior does not predict like a denoiser


def test_posterior_needs_the_donut_and_a_grid_of_twos():
    with pytest.raises(VoldenError, match="--posterior takes --fill donut"):
        TrainConfig(posterior=True, fill="neighbour")
    with pytest.raises(VoldenError, match="--grid entries of 1 or 2"):
        TrainConfig(posterior=True, grid=(3, 3, 3))


def test_model_json_without_outputs_loads_as_a_denoiser(tmp_path, seam_model):
    from volden.model import save_model

    save_model(seam_model, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["architecture"].pop("outputs") == 1
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    loaded = load_model(tmp_path / "m")
    assert loaded.config.outputs == 1 and not loaded.is_prior and loaded.noise_curve is None


def run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(volden_command(*args), cwd=cwd, capture_output=True, text=True, timeout=600)


def test_train_posterior_apply_and_info_through_the_command(tmp_path):
    write_synthetic(tmp_path / "vol.zarr", shape=(16, 64, 64), chunks=(16, 64, 64))
    done = run("train", "vol.zarr", "-o", "model", "--posterior", "--steps", "3", "--patch", "8,32,32", "--batch", "2",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    model = load_model(tmp_path / "model")
    assert model.is_prior and model.training["posterior"]
    a, b = Camera().noise_curve()
    assert abs(model.noise_curve.a - a) <= 0.25 * a and abs(model.noise_curve.b - b) <= 0.25 * abs(b)
    info = run("info", "model", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert f"noise curve a = {model.noise_curve.a:.4g}, b = {model.noise_curve.b:.4g}" in info.stdout
    applied = run("apply", "model", "vol.zarr", "out.zarr", "--workers", "1", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    import zarr

    noisy = zarr.open_group(str(tmp_path / "vol.zarr"), mode="r")["noisy"][...]
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"][...]
    reference = predict_array(model, noisy.astype(np.float32), "cpu")
    assert np.abs(out - reference).max() <= 1e-3 * float(reference.max() - reference.min())


def test_train_posterior_refuses_a_curve_that_is_not_a_camera(tmp_path):
    import zarr

    rng = np.random.default_rng(0)
    z = np.linspace(100, 180, 32)[:, None, None] * np.ones((32, 64, 64))
    falling = np.rint(z + rng.normal(size=z.shape) * np.sqrt(400 - 2 * z)).astype(np.uint16)
    zarr.create_array(str(tmp_path / "falling.zarr"), data=falling, chunks=(16, 32, 32))
    done = run("train", "falling.zarr", "-o", "model", "--posterior", "--steps", "2", "--patch", "8,32,32", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("volden: error: the noise curve fitted from the volume") and "falls" in done.stderr
    assert not (tmp_path / "model" / "model.json").exists()
