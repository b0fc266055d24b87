"""Scoring denoisers: PSNR and SSIM block by block, and, without a reference, the J-invariant
loss that ranks a trained model above the raw input and a badly chosen filter on real data."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from skimage.metrics import structural_similarity

import volden
from cli_helpers import volden_command
from conftest import REAL_DATA, make_model
from volden.classic import parse_classic
from volden.evaluate import held_out_region
from volden.metrics import psnr, psnr_ssim, ssim
from volden.model import save_model
from volden.sampler import split_volume
from volden.synth import VOXEL_SIZE, synthetic_volume, write_synthetic
from volden.training import TrainConfig

REAL_VOLUME = "cellseg3d_mesospim_test_very_small.tif"  # real lightsheet sCMOS noise, 64^3


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    noisy, clean = synthetic_volume((20, 40, 44), "nuclei", seed=1, chunks=(20, 40, 44))
    return noisy.compute().astype(np.float64), clean.compute().astype(np.float64)


def test_ssim_equals_scikit_image_with_a_gaussian_window(pair):
    noisy, clean = pair
    expected = structural_similarity(noisy, clean, data_range=np.ptp(clean), gaussian_weights=True,
                                     use_sample_covariance=False)
    assert ssim(noisy, clean) == pytest.approx(expected, rel=1e-12)


def test_psnr_and_ssim_block_by_block_equal_the_whole_array_values(pair):
    noisy, clean = pair
    blocked = psnr_ssim(da.from_array(noisy, chunks=(6, 13, 17)), da.from_array(clean, chunks=(9, 20, 11)))
    assert blocked == pytest.approx((psnr(noisy, clean), ssim(noisy, clean)), rel=1e-12)


def test_a_volume_thinner_than_the_ssim_window_gets_psnr_only(pair):
    noisy, clean = pair
    value, index = psnr_ssim(noisy[:8], clean[:8])
    assert value == pytest.approx(psnr(noisy[:8], clean[:8])) and index is None


def test_the_held_out_region_is_what_no_model_trained_on():
    shape = (40, 152, 126)
    one, other = make_model(), make_model()
    one.training, other.training = {"patch": [16, 32, 32]}, {"patch": [16, 64, 64]}
    assert held_out_region(shape, [one]) == split_volume(shape, (16, 32, 32)).validation == ((0, 40), (120, 152), (0, 126))
    assert held_out_region(shape, [one, other]) == ((24, 40), (120, 152), (0, 126))
    assert held_out_region(shape, []) == ((0, 40), (137, 152), (0, 126))  # the last tenth of the longest axis


def ranking(stdout: str, values: int) -> dict[str, tuple[int, float]]:
    """Rank and first value of each row of a printed ranking with ``values`` numeric columns."""
    rows = {}
    for words in map(str.split, stdout.splitlines()):
        if words and words[0].isdigit():
            rows[" ".join(words[1:-values])] = (int(words[0]), float(words[-values]))
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``volden eval`` against a reference and its error cases, side by side in real processes,
    while (in this process) a model trains on the real volume; then eval ranks that model."""
    base = tmp_path_factory.mktemp("eval")
    write_synthetic(base / "s.zarr", shape=(16, 64, 64), chunks=(8, 32, 32))
    write_synthetic(base / "other.zarr", shape=(16, 32, 32), chunks=(8, 32, 32))
    save_model(make_model(), base / "model")
    parse_classic("gaussian:1").lazy(volden.open_volume(base / "s.zarr").data).to_zarr(str(base / "g.zarr"))
    cases = {
        "reference": ("eval", "g.zarr", "model", "--reference", "s.zarr/clean", "--input", "s.zarr",
                      "--classic", "median:1"),
        "volume-without-reference": ("eval", "g.zarr", "--input", "s.zarr"),
        "model-without-input": ("eval", "model", "--reference", "s.zarr/clean"),
        "nothing-to-score-against": ("eval", "g.zarr"),
        "other-shape": ("eval", "other.zarr", "--reference", "s.zarr/clean"),
        "bad-classic": ("eval", "--input", "s.zarr", "--classic", "gauss:1"),
    }

    def run(args):
        return subprocess.run(volden_command(*args), cwd=base, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)

    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(run, args) for name, args in cases.items()}
        real = None
        if REAL_DATA.is_dir():
            image = tifffile.imread(REAL_DATA / REAL_VOLUME)
            zarr.create_array(str(base / "real.zarr"), data=image, chunks=(32, 32, 32))
            volden.train(volden.open_volume(base / "real.zarr"), base / "real-model",
                         TrainConfig(steps=120, patch=(16, 32, 32), batch=4, validate_every=40, device="cpu"))
            real = run(("eval", "real-model", "--input", "real.zarr", "--classic", "gaussian:4", "--phases", "8",
                        "--device", "cpu"))
        done = {name: future.result() for name, future in futures.items()}
    return base, done, real


def test_eval_ranks_a_trained_model_above_the_raw_input_and_a_bad_gaussian_on_real_data(runs):
    if not REAL_DATA.is_dir():
        pytest.skip(f"no real volumes at {REAL_DATA}")
    _, _, proc = runs
    assert proc.returncode == 0, proc.stderr
    rows = ranking(proc.stdout, 1)
    assert set(rows) == {"real-model", "input (no denoising)", "gaussian:4"}
    assert rows["real-model"][0] == 1
    assert rows["real-model"][1] < 0.8 * min(rows["input (no denoising)"][1], rows["gaussian:4"][1])
    assert "held-out region z 48:64, y 0:64, x 0:64" in proc.stdout


def test_eval_against_a_reference_scores_volumes_models_filters_and_the_input(runs):
    base, done, _ = runs
    proc = done["reference"]
    assert proc.returncode == 0, proc.stderr
    rows = ranking(proc.stdout, 2)
    assert set(rows) == {"g.zarr", "model", "median:1", "s.zarr (input, no denoising)"}
    assert [rank for rank, _ in sorted(rows.values(), key=lambda r: -r[1])] == [1, 2, 3, 4]
    noisy = volden.open_volume(base / "s.zarr").data
    clean = volden.open_volume(base / "s.zarr/clean").data
    assert rows["median:1"][1] == pytest.approx(psnr(parse_classic("median:1", VOXEL_SIZE)(noisy.compute()), clean), abs=1e-3)
    assert rows["s.zarr (input, no denoising)"][1] == pytest.approx(psnr(noisy, clean), abs=1e-3)


@pytest.mark.parametrize("name, phrase", [
    ("volume-without-reference", "no self-supervised loss"),
    ("model-without-input", "--input"),
    ("nothing-to-score-against", "--reference"),
    ("other-shape", "shape"),
    ("bad-classic", "METHOD:SIZE"),
])
def test_eval_explains_what_it_cannot_score_in_one_line(runs, name, phrase):
    _, done, _ = runs
    proc = done[name]
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("volden: error:") and len(proc.stderr.strip().splitlines()) == 1
    assert phrase in proc.stderr
