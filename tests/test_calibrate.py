"""Classic denoisers, the J-invariant loss and calibration: ranking by the noisy data alone agrees
with ranking by the clean volume, and `volden calibrate` writes only where it may."""

from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import numpy as np
import pytest
import torch

import volden
from cli_helpers import tree_digest, volden_command
from volden.calibrate import calibrate
from volden.classic import Classic, candidates, median, parse_classic
from volden.errors import VoldenError
from volden.jinvariant import Identity, masked_losses, sample_blocks
from volden.masking import apply_mask, phase_mask
from volden.metrics import psnr
from volden.synth import VOXEL_SIZE, synthetic_volume, write_synthetic

SHAPE = (32, 96, 96)


def synthetic(kind: str) -> tuple[np.ndarray, np.ndarray]:
    noisy, clean = synthetic_volume(SHAPE, kind, seed=3, chunks=(16, 48, 48))
    return noisy.compute().astype(np.float32), clean.compute()


@pytest.mark.parametrize("kind", ["nuclei", "neurites"])
def test_calibrated_gaussian_is_within_0_3_db_of_the_best_chosen_with_the_clean_volume(kind):
    noisy, clean = synthetic(kind)
    found = calibrate(da.from_array(noisy, chunks=(16, 48, 48)), ("gaussian",), VOXEL_SIZE)
    scores = {c: psnr(c(noisy), clean) for c in candidates("gaussian", VOXEL_SIZE)}
    assert scores[found.best] >= max(scores.values()) - 0.3
    assert [loss for _, loss in found.ranked] == sorted(loss for _, loss in found.ranked)


def test_donut_median_minima_agree_and_the_classic_self_supervised_loss_falls_to_the_identity():
    """The paper's experiment: J-invariance is what makes the noisy data a loss."""
    noisy, clean = synthetic("nuclei")
    inside = (slice(5, -5),) * 3

    def losses(radius: float, donut: bool) -> tuple[float, float]:
        out = median(noisy, radius, VOXEL_SIZE, donut)[inside]
        return float(np.mean((out - noisy[inside]) ** 2)), float(np.mean((out - clean[inside]) ** 2))

    radii = [1.0, 2.0, 3.0, 4.0]
    donut = np.array([losses(r, True) for r in radii])
    assert np.argmin(donut[:, 0]) == np.argmin(donut[:, 1])
    classic = np.array([losses(r, False) for r in [0.0, *radii]])
    assert classic[0, 0] == 0 and np.all(np.diff(classic[:, 0]) > 0)
    assert np.argmin(classic[:, 1]) > 0


def test_donut_median_never_reads_the_centre_voxel():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (9, 9, 9)).astype(np.float32)
    bright = image.copy()
    bright[4, 4, 4] += 1000
    assert median(bright, 2, donut=True)[4, 4, 4] == median(image, 2, donut=True)[4, 4, 4]
    assert median(bright, 2)[4, 4, 4] != median(image, 2)[4, 4, 4]


@pytest.mark.parametrize("spec", ["gaussian:0.75,1.5,1.5", "median:1,2,2", "gaussian:0,2,2"])
def test_classic_filters_block_by_block_equal_one_whole_array_pass(spec):
    image = np.random.default_rng(1).normal(100, 10, (20, 40, 36)).astype(np.float32)
    denoiser = parse_classic(spec)
    lazy = denoiser.lazy(da.from_array(image, chunks=(7, 13, 17)))
    np.testing.assert_array_equal(lazy.compute(), denoiser(image))


def test_classic_specs_read_lateral_sizes_and_scale_z_by_the_voxel_size():
    assert parse_classic("gaussian:1.5", VOXEL_SIZE) == Classic("gaussian", (0.75, 1.5, 1.5))
    assert parse_classic("median:2", None) == Classic("median", (2.0, 2.0, 2.0))
    assert parse_classic(str(Classic("gaussian", (0.625, 1.25, 1.25)))) == Classic("gaussian", (0.625, 1.25, 1.25))
    for bad in ("gaussian", "gaussian:", "box:2", "median:1,2", "gaussian:-1", "median:two"):
        with pytest.raises(VoldenError, match="METHOD:SIZE"):
            parse_classic(bad)


def test_sampled_blocks_lie_in_the_region_apart_and_cover_it_when_asked_for_all():
    region = ((3, 40), (0, 100), (10, 75))
    some = sample_blocks(region, (16, 32, 32), 5, seed=2)
    assert len(some) == 5 and len(set(some)) == 5
    covered = np.zeros((40, 100, 75), dtype=int)
    for box in sample_blocks(region, (16, 32, 32), 1000):
        assert all(lo < hi and hi - lo <= b for (lo, hi), b in zip(box, (16, 32, 32)))
        covered[tuple(slice(lo, hi) for lo, hi in box)] += 1
    assert covered[3:, :, 10:].min() == 1 and covered.sum() == 37 * 100 * 65


class Mirror:
    """Copies, onto the first voxels of the block, those just beyond its low z face: where the
    block meets the volume's edge these are reflections of the block's own voxels."""

    reach = (4, 0, 0)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = image.copy()
        out[5:8] = image[3:0:-1]
        return out


def test_reflection_at_the_volume_edge_never_brings_back_a_masked_voxel():
    """Masked voxels are filled before the block is extended by reflection; reflecting first
    would hand the mirror denoiser each masked voxel's own value (a loss of 0 there)."""
    data = da.from_array(np.random.default_rng(3).normal(100, 10, (12, 12, 12)).astype(np.float32))
    losses = masked_losses(data, [((0, 12), (0, 12), (0, 12))], [Mirror(), Identity()], phases=None)
    assert losses.values[0] == pytest.approx(losses.values[1], rel=1e-12)
    assert losses.voxels == 12**3


def test_a_block_with_its_margin_scores_as_the_whole_volume_does_there():
    """The margin gives filters the context they have in the whole volume."""
    image = np.random.default_rng(4).normal(100, 10, (24, 40, 40)).astype(np.float32)
    gaussian = Classic("gaussian", (0.5, 1.0, 1.0))
    box = ((6, 18), (10, 30), (12, 27))
    core = tuple(slice(lo, hi) for lo, hi in box)
    errors = []
    for phase in np.ndindex(3, 3, 3):
        mask = phase_mask(image.shape, (3, 3, 3), phase)
        filled = apply_mask(torch.from_numpy(image)[None, None], mask[None, None])[0, 0].numpy()
        masked = mask.numpy()[core]
        errors.append((gaussian(filled)[core][masked] - image[core][masked]) ** 2)
    whole = np.concatenate(errors).mean()
    losses = masked_losses(da.from_array(image, chunks=(8, 20, 20)), [box], [gaussian], phases=None)
    assert losses.values[0] == pytest.approx(whole, rel=1e-3)


# --------------------------------------------------------------------------------------------
# The command.


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One successful calibration (with a report and --apply) and the error cases, run side by
    side as real ``volden`` processes; each case gets its own copy of the input."""
    base = tmp_path_factory.mktemp("calibrate")
    write_synthetic(base / "source.zarr", shape=(16, 64, 64), chunks=(8, 32, 32))
    cases = {
        "ok": ("calibrate", "vol.zarr", "--method", "all", "-o", "report", "--apply", "out.zarr", "--blocks", "3",
               "--phases", "2"),
        "inside": ("calibrate", "vol.zarr", "--apply", "vol.zarr/out.zarr"),
        "existing": ("calibrate", "vol.zarr", "--apply", "taken.zarr"),
        "report-exists": ("calibrate", "vol.zarr", "-o", "report", "--apply", "out.zarr"),
        "method": ("calibrate", "vol.zarr", "--method", "bilateral"),
    }
    folders = {}
    for name in cases:
        folders[name] = base / name
        folders[name].mkdir()
        shutil.copytree(base / "source.zarr", folders[name] / "vol.zarr")
    (folders["existing"] / "taken.zarr").mkdir()
    (folders["existing"] / "taken.zarr" / "keep.txt").write_text("keep")
    (folders["report-exists"] / "report").mkdir()
    (folders["report-exists"] / "report" / "calibration.json").write_text("{}")
    before = {name: tree_digest(folder) for name, folder in folders.items()}

    def run(name):
        return subprocess.run(volden_command(*cases[name]), cwd=folders[name], capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)

    with ThreadPoolExecutor(3) as pool:
        done = dict(zip(cases, pool.map(run, cases)))
    return {name: (done[name], folders[name], before[name]) for name in cases}


def test_calibrate_prints_the_ranking_and_writes_its_report_and_the_best_filter(runs):
    proc, folder, _ = runs["ok"]
    assert proc.returncode == 0, proc.stderr
    report = json.loads((folder / "report" / "calibration.json").read_text())
    best = report["ranked"][0]["denoiser"]
    assert f"best: {best};" in proc.stdout and "input (no denoising)" in proc.stdout
    assert {r["method"] for r in report["ranked"]} == {"gaussian", "median"}
    assert (folder / "report" / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    out = volden.open_volume(folder / "out.zarr")
    noisy = volden.open_volume(folder / "vol.zarr")
    assert out.voxel_size == noisy.voxel_size and out.data.dtype == np.float32
    np.testing.assert_array_equal(out.data.compute(), parse_classic(best)(noisy.data.compute()))


@pytest.mark.parametrize("name, phrase", [
    ("inside", "inside the input"), ("existing", "--overwrite"), ("report-exists", "--overwrite"),
])
def test_calibrate_refuses_outputs_it_may_not_write_and_writes_nothing(runs, name, phrase):
    proc, folder, before = runs[name]
    assert proc.returncode == 1 and proc.stderr.startswith("volden: error:") and phrase in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    assert tree_digest(folder) == before


def test_calibrate_rejects_an_unknown_method(runs):
    proc, folder, before = runs["method"]
    assert proc.returncode == 2 and "bilateral" in proc.stderr
    assert tree_digest(folder) == before
