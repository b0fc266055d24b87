"""The workflows in pipelines/, run as a user runs them, on small data, and the files they make.

* ``pipelines/lightsheet/run.py`` with a copy of ``lightsheet.toml`` made tiny: TIFF slices ->
  ingest -> train -> apply with a pyramid -> preview; run again, it keeps what is complete.
* the same with ``--slurm --dry-run``: the sbatch and ``--cluster slurm`` commands it would run.
* ``pipelines/dask_graph.py --make-example``: its projection equals ``volden.denoise`` of the
  same lazy graph.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import tifffile
import zarr

import volden
from cli_helpers import tree_digest
from volden import ome

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
CONFIG = PIPELINES / "lightsheet" / "lightsheet.toml"
TIMEOUT_S = 300
SHAPE = (32, 96, 96)
PYRAMID = 2
TINY = {  # line of lightsheet.toml -> its tiny stand-in
    'shape = "64,256,256"': 'shape = "32,96,96"',
    "minutes = 10 ": 'steps = 30\npatch = "16,32,32"\nbatch = 2\nwidth = 4\nminutes = 5 ',
    "pyramid = 4 ": f"pyramid = {PYRAMID} ",
}


def run_script(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A pipeline script with this interpreter, and its venv's ``volden`` first on the PATH."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


def commands(stdout: str) -> list[str]:
    return [line[2:] for line in stdout.splitlines() if line.startswith("$ ")]


@pytest.fixture(scope="module")
def lightsheet(tmp_path_factory) -> dict:
    """The workflow run twice in one folder (the second run should find everything done)."""
    work = tmp_path_factory.mktemp("lightsheet")
    text = CONFIG.read_text()
    for line, tiny in TINY.items():
        assert text.count(line) == 1, line
        text = text.replace(line, tiny)
    (work / "tiny.toml").write_text(text)
    first = run_script(PIPELINES / "lightsheet" / "run.py", "tiny.toml", "--make-example", cwd=work)
    outputs = {name: tree_digest(work / "lightsheet-work" / name) for name in ("image.ome.zarr", "model", "denoised.ome.zarr")}
    again = run_script(PIPELINES / "lightsheet" / "run.py", "tiny.toml", "--make-example", cwd=work)
    return {"root": work, "work": work / "lightsheet-work", "first": first, "again": again, "outputs": outputs}


def test_each_step_is_a_printed_volden_command(lightsheet) -> None:
    steps = [command.split()[:2] for command in commands(lightsheet["first"].stdout)]
    assert steps == [["volden", step] for step in ("synth", "ingest", "train", "apply", "preview")]


def test_example_is_a_folder_of_2d_tiff_slices(lightsheet) -> None:
    slices = sorted((lightsheet["root"] / "lightsheet-example" / "tiffs").glob("*.tif"))
    assert len(slices) == SHAPE[0]
    assert tifffile.imread(slices[0]).shape == SHAPE[1:]


def test_ingest_writes_the_configured_voxel_size(lightsheet) -> None:
    image = volden.open_volume(lightsheet["work"] / "image.ome.zarr")
    assert image.shape == SHAPE
    assert image.voxel_size == (1.0, 0.5, 0.5) and image.unit == "micrometer"
    (found,) = ome.multiscales(zarr.open_group(str(lightsheet["work"] / "image.ome.zarr"), mode="r"))
    assert [axis["name"] for axis in found["axes"]] == ["z", "y", "x"]


def test_train_writes_a_model_of_the_configured_steps(lightsheet) -> None:
    model = volden.load_model(lightsheet["work"] / "model")
    assert model.training["steps_done"] == 30
    assert (lightsheet["work"] / "model" / "loss.png").is_file()


def test_apply_writes_a_complete_pyramid(lightsheet) -> None:
    path = lightsheet["work"] / "denoised.ome.zarr"
    group = zarr.open_group(str(path), mode="r")
    assert group.attrs["volden"]["status"] == "complete"
    assert group.attrs["volden"]["model_sha256"] == volden.load_model(lightsheet["work"] / "model").digest
    (found,) = ome.multiscales(group)
    levels = [group[dataset["path"]] for dataset in found["datasets"]]
    assert len(levels) == 1 + PYRAMID
    assert levels[0].shape == SHAPE and levels[0].dtype == np.float32
    for finer, coarser in zip(levels, levels[1:]):
        assert coarser.shape[1:] == tuple(-(-n // 2) for n in finer.shape[1:])
    denoised = levels[0][:]
    noisy = volden.open_volume(lightsheet["work"] / "image.ome.zarr").data.compute()
    assert np.all(np.isfinite(denoised)) and denoised.std() < noisy.std()


def test_preview_shows_input_and_denoised(lightsheet) -> None:
    picture = matplotlib.image.imread(lightsheet["work"] / "preview.png")
    assert picture.shape[1] > picture.shape[0] > 0.5 * picture.shape[1]  # two rows of three panels
    assert "denoised.ome.zarr" in lightsheet["first"].stdout.split("display range")[1]


def test_a_second_run_keeps_what_is_complete(lightsheet) -> None:
    again = lightsheet["again"].stdout
    for step in ("example", "ingest", "train", "apply"):
        assert f"# {step}: " in again and "skipped" in again
    assert [command.split()[1] for command in commands(again)] == ["preview"]
    for name, digest in lightsheet["outputs"].items():
        assert tree_digest(lightsheet["work"] / name) == digest, name


def test_slurm_runs_training_as_a_batch_job_and_apply_on_worker_jobs(tmp_path) -> None:
    proc = run_script(PIPELINES / "lightsheet" / "run.py", str(CONFIG), "--slurm", "--dry-run", cwd=tmp_path)
    found = {command.split()[0] if command.startswith("sbatch") else command.split()[1]: command
             for command in commands(proc.stdout)}
    assert set(found) == {"ingest", "sbatch", "apply", "preview"}
    sbatch = found["sbatch"].split()
    assert sbatch[:2] == ["sbatch", "--wait"]
    for option in ("--partition=gpu", "--time=04:00:00", "--gres=gpu:1", "--cpus-per-task=8", "--mem=32G"):
        assert option in sbatch
    assert sbatch[-3:] == ["lightsheet-work/image.ome.zarr", "lightsheet-work/model", "10"]
    assert sbatch[-4].endswith("cluster/train.sbatch") and Path(sbatch[-4]).is_file()
    apply = found["apply"]
    for option in ("--cluster slurm", "--partition gpu", "--walltime 04:00:00", "--jobs 4", "--gpus-per-job 1",
                   "--cores 8", "--memory 32GB", "--resume", "--pyramid 4"):
        assert option in apply
    assert not (tmp_path / "lightsheet-work").exists()


def _load_dask_graph():
    spec = importlib.util.spec_from_file_location("dask_graph", PIPELINES / "dask_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dask_graph_projection_equals_denoise_of_the_same_graph(tmp_path) -> None:
    proc = run_script(PIPELINES / "dask_graph.py", "model", "vol.zarr", "mip.zarr", "--make-example", cwd=tmp_path)
    assert "never existed as one array" in proc.stdout
    example = _load_dask_graph()
    volume = volden.open_volume(tmp_path / "vol.zarr")
    assert volume.shape == example.EXAMPLE_SHAPE
    mip = zarr.open_array(str(tmp_path / "mip.zarr"), mode="r")[:]
    assert mip.shape == volume.shape[1:]
    # one column of blocks of the reference (its tiles only), so the check costs a fraction of the run
    window = tuple(slice(0, n) for n in example.EXAMPLE_BLOCK[1:])
    denoised = volden.denoise(example.subtract_background(volume.data), tmp_path / "model", block=example.EXAMPLE_BLOCK)
    expected = denoised[(slice(None), *window)].max(axis=0).compute()
    np.testing.assert_allclose(mip[window], expected, rtol=1e-5, atol=1e-4)
