"""`volden export`: a bioimage.io model package that bioimageio.spec validates, that
bioimageio.core's model test passes, and whose prediction through bioimageio.core, whole or in
core's own tiles, equals volden's own on a volume the package has never seen; bad input
refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import bioimageio.core as bioimageio_core  # the bioimageio extra: missing, these tests fail, not skip
from bioimageio.spec import load_description
import dask.array as da
import numpy as np
import pytest
import torch
import yaml

from volden.export import NOISE2SELF_DOI, export_bioimageio
from volden.model import load_model, save_channel_index, save_model
from volden.noise_curve import NoiseCurve
from volden.normalisation import estimate_normalisation
from volden.posterior import PRIOR_OUTPUTS
from volden.predict import default_halo, predict_array
from volden.synth import synthetic_volume

from cli_helpers import tree_digest, volden_command
from conftest import make_model, tiny_config

VOXEL_SIZE = (2.0, 0.5, 0.5)  # anisotropic: z is not pooled
FRESH_SHAPE = (24, 64, 96)  # not the test tensor's shape
TOLERANCE = 1e-4  # of the output's range
HEAD_GAIN = 100.0


def _noisy(shape, seed) -> np.ndarray:
    noisy, _ = synthetic_volume(shape=shape, kind="nuclei", photons=20.0, seed=seed, chunks=shape)
    return noisy.compute().astype(np.float32)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A tiny random model with the statistics of a synthetic volume and a voxel size. Its
    output layer is scaled up so that the output spans a few normalised units, as a trained
    denoiser's does (a fresh network's spans 0.01, and a tolerance relative to that range
    would measure bioimageio.core's std + 1e-6 in its normalisation, not the package)."""
    normalisation = estimate_normalisation(da.from_array(_noisy((16, 48, 48), seed=7)))
    model = make_model(tiny_config(voxel_size=VOXEL_SIZE), seed=3, normalisation=normalisation)
    with torch.no_grad():
        model.network.head.weight *= HEAD_GAIN
    model.training = {"voxel_size": list(VOXEL_SIZE), "steps_done": 0}
    return save_model(model, tmp_path_factory.mktemp("export") / "model")


@pytest.fixture(scope="module")
def package(model_folder) -> Path:
    return export_bioimageio(model_folder, model_folder.parent / "model.zip").path


def _rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as archive:
        return yaml.safe_load(archive.read("rdf.yaml"))


def test_package_validates_and_describes_the_model(package, model_folder):
    description = load_description(package, format_version="discover", perform_io_checks=True)
    assert description.validation_summary.status == "valid-format", description.validation_summary.format()
    model, rdf = load_model(model_folder), _rdf(package)
    assert rdf["format_version"].startswith("0.5")
    [inputs], [outputs] = rdf["inputs"], rdf["outputs"]
    assert [a.get("id", a["type"]) for a in inputs["axes"]] == ["batch", "channel", "z", "y", "x"]
    spatial = inputs["axes"][2:]
    halo, divisor = default_halo(model), model.config.divisor
    assert [a["size"]["step"] for a in spatial] == list(divisor) == [1, 4, 4]
    assert [a["size"]["min"] for a in spatial] == [2 * h + d for h, d in zip(halo, divisor)]
    assert [a["scale"] for a in spatial] == [a["scale"] for a in outputs["axes"][2:]] == list(VOXEL_SIZE)
    assert [a["halo"] for a in outputs["axes"][2:]] == list(halo)
    assert inputs["pad"] == {"mode": "reflect"}  # as volden pads at a volume's faces
    normalise = [p for p in inputs["preprocessing"] if p["id"] == "fixed_zero_mean_unit_variance"]
    assert normalise[0]["kwargs"] == {"mean": model.normalisation.mean, "std": model.normalisation.std}
    invert = [p for p in outputs["postprocessing"] if p["id"] == "scale_linear"]
    assert invert[0]["kwargs"] == {"gain": model.normalisation.std, "offset": model.normalisation.mean}
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"] == model.config.to_dict()
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    assert [c["doi"] for c in rdf["cite"]] == [NOISE2SELF_DOI]
    assert rdf["config"]["volden"]["weights_sha256"] == model.digest
    with zipfile.ZipFile(package) as archive:
        assert f"declare a halo of {','.join(map(str, halo))} voxels (z, y, x)" in archive.read("README.md").decode()
        with archive.open("test_input.npy") as f:
            test_input = np.load(f)
        with archive.open("test_output.npy") as f:
            test_output = np.load(f)
    assert test_input.shape[:2] == (1, 1) and test_output.shape == test_input.shape
    np.testing.assert_array_equal(test_output[0, 0], predict_array(model, test_input[0, 0], "cpu", edge=(0, 0, 0)))


def test_bioimageio_core_model_test_passes(package):
    summary = bioimageio_core.test_model(package)
    assert summary.status == "passed", summary.format()
    reproduced = [d.name for d in summary.details if d.name.startswith("Reproduce test outputs")]
    assert len(reproduced) == 2  # both weight formats


@pytest.mark.parametrize("weight_format, tiled", [("pytorch_state_dict", False), ("torchscript", False),
                                                  ("pytorch_state_dict", True)])
def test_bioimageio_core_prediction_of_a_fresh_volume_equals_volden(package, model_folder, weight_format, tiled):
    """Whole, and in bioimageio.core's own tiles (overlapping by the declared halo), as a tiling
    tool runs the package on a volume too large for one pass."""
    raw = _noisy(FRESH_SHAPE, seed=11)
    expected = predict_array(load_model(model_folder), raw, "cpu")
    description = load_description(package)
    pipeline = bioimageio_core.create_prediction_pipeline(description, weight_format=weight_format)
    blocks = _largest_tiles(description) if tiled else None
    got = bioimageio_core.predict(model=pipeline, inputs={"raw": raw[None, None]}, blocksize_parameter=blocks)
    got = got.members["denoised"].data.values
    assert got.shape == (1, 1, *FRESH_SHAPE)
    difference = float(np.abs(got[0, 0] - expected).max() / np.ptp(expected))
    print(f"{weight_format} {'tiled' if tiled else 'whole'}: max |bioimageio.core - predict_array| = "
          f"{difference:.2e} of the range")
    assert difference < TOLERANCE


def _largest_tiles(description) -> dict:
    """bioimageio.core's block size parameter n per axis for the largest tiles it takes: a
    tile (min + n * step voxels, the halo on each side included) no larger than the volume,
    which then still needs two or more per axis, as its halo is cropped."""
    axes = [a for a in description.inputs[0].axes if a.type == "space"]
    halos = [a.halo for a in description.outputs[0].axes if a.type == "space"]
    parameters = [(size - a.size.min) // a.size.step for a, size in zip(axes, FRESH_SHAPE)]
    kept = [a.size.min + n * a.size.step - 2 * h for a, n, h in zip(axes, parameters, halos)]
    assert all(0 < k < size for k, size in zip(kept, FRESH_SHAPE))  # tiles, not one pass
    return {("raw", a.id): n for a, n in zip(axes, parameters)}


def test_architecture_file_loads_without_volden(package, tmp_path):
    """What bioimageio.core does with the shipped source, in a process where volden cannot be imported."""
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path)
    kwargs = _rdf(package)["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]
    script = (
        "import sys, importlib.util, json, numpy, torch\n"
        "sys.modules['volden'] = None\n"
        "spec = importlib.util.spec_from_file_location('shipped_unet', 'unet.py')\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['shipped_unet'] = module\n"
        "spec.loader.exec_module(module)\n"
        f"network = module.unet_from_kwargs(**json.loads({json.dumps(json.dumps(kwargs))})).eval()\n"
        "network.load_state_dict(torch.load('weights.pt', weights_only=True))\n"
        "x = torch.from_numpy(numpy.load('test_input.npy'))\n"
        "print(json.dumps(list(network((x - x.mean()) / x.std()).shape)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == list(np.load(tmp_path / "test_input.npy").shape)


CASES = {  # arguments to `volden export` and the message a refusal must carry
    "one channel": (["set", "one.zip", "--channel", "1"], None),
    "not a model": (["notmodel", "out.zip"], "notmodel is not a volden model"),
    "per-channel set": (["set", "out.zip"], "set holds one model per channel (0, 1); export one with --channel C"),
    "output exists": (["model", "taken.zip"], "taken.zip exists; pass --overwrite to replace it"),
    "output inside the model": (["model", "model/out.zip"], "model/out.zip lies inside the input model"),
    "no output folder": (["model", "nowhere/out.zip"], "nowhere: no such folder for out.zip"),
    "posterior prior": (["prior", "out.zip"], "prior is a prior for the posterior step"),
}
REFUSALS = [case for case, (_, message) in CASES.items() if message]
PARALLEL = 3


def _inputs(folder: Path) -> None:
    """A model, a prior for the posterior step, a model per channel (as ``volden train`` writes
    them for two channels), a folder that is not a model and an earlier export."""
    save_model(make_model(), folder / "model")
    prior = make_model(replace(tiny_config(), outputs=PRIOR_OUTPUTS))
    prior.noise_curve = NoiseCurve(a=2.0, b=-190.0, low=100.0, high=150.0)
    save_model(prior, folder / "prior")
    for channel in (0, 1):
        save_model(make_model(seed=channel), folder / "set" / f"channel-{channel}")
    save_channel_index(folder / "set", {0: "channel-0", 1: "channel-1"})
    (folder / "notmodel").mkdir()
    (folder / "notmodel" / "model.json").write_text('{"format": "something else"}')
    (folder / "taken.zip").write_bytes(b"an earlier export")


@pytest.fixture(scope="module")
def command_runs(tmp_path_factory) -> dict[str, tuple[Path, dict, subprocess.CompletedProcess]]:
    """Every case through the real command in a folder of its own, a few at once (importing
    torch dominates their cost): the folder, its digest before, and the finished process."""
    root = tmp_path_factory.mktemp("commands")
    folders = {case: root / str(number) for number, case in enumerate(CASES)}
    for folder in folders.values():
        _inputs(folder)
    before = {case: tree_digest(folder) for case, folder in folders.items()}

    def run(case: str) -> subprocess.CompletedProcess:
        return subprocess.run(volden_command("export", *CASES[case][0]), cwd=folders[case], capture_output=True,
                              text=True, timeout=300)

    with ThreadPoolExecutor(PARALLEL) as pool:
        done = dict(zip(CASES, pool.map(run, CASES)))
    return {case: (folders[case], before[case], done[case]) for case in CASES}


def test_export_of_one_channel(command_runs):
    folder, _, done = command_runs["one channel"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote one.zip: bioimage.io model")
    digests = [load_model(folder / "set" / f"channel-{c}").digest for c in (0, 1)]
    assert _rdf(folder / "one.zip")["config"]["volden"]["weights_sha256"] == digests[1] != digests[0]


@pytest.mark.parametrize("case", REFUSALS)
def test_refusal_is_one_line_and_writes_nothing(command_runs, case):
    folder, before, done = command_runs[case]
    assert done.returncode == 1
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith("volden: error: ")
    assert CASES[case][1] in done.stderr
    assert tree_digest(folder) == before
