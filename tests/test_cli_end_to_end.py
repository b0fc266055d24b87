"""The ``volden`` command end to end, in subprocesses: synth -> train -> apply on a small volume.

The run is made once per module (see ``run``), with ``--version`` and every ``--help`` going on
beside it (see ``info_runs``); the tests check what they left behind.
"""

from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr

import volden
from cli_helpers import tree_digest, volden_command

TIMEOUT_S = 300
SHAPE = (16, 64, 64)
VOXEL_SIZE = (1.0, 0.5, 0.5)
COMMANDS = ("synth", "ingest", "train", "apply", "info", "preview", "calibrate", "eval", "demo")


def volden_run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        volden_command(*args),
        cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL,
    )


def show(proc: subprocess.CompletedProcess) -> str:
    return f"{' '.join(proc.args[3:])}\nexit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def info_runs():
    """``--version`` and every ``--help``, started in the background: ``run`` asks for them first,
    so they go on while the pipeline does."""
    argvs = {"version": ("--version",), "help": ("--help",), **{c: (c, "--help") for c in COMMANDS}}
    with ThreadPoolExecutor(2) as pool:
        yield {key: pool.submit(volden_run, *argv) for key, argv in argvs.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory, info_runs) -> dict:
    """synth -> train -> apply (float32 output in blocks of 8,32,32, and the input's dtype in one
    block, side by side), each through the command line, in one folder."""
    work = tmp_path_factory.mktemp("cli")
    procs = {}
    procs["synth"] = volden_run("synth", "s.zarr", "--shape", "16,64,64", "--chunks", "8,32,32", cwd=work)
    assert procs["synth"].returncode == 0, show(procs["synth"])
    before = tree_digest(work / "s.zarr")
    procs["train"] = volden_run(
        "train", "s.zarr", "-o", "m", "--steps", "20", "--patch", "8,32,32", "--batch", "2", "--width", "4",
        "--no-flip-z", cwd=work
    )
    assert procs["train"].returncode == 0, show(procs["train"])
    with ThreadPoolExecutor(2) as pool:
        main = pool.submit(volden_run, "apply", "m", "s.zarr", "out.zarr", "--block", "8,32,32", cwd=work)
        as_input = pool.submit(volden_run, "apply", "m", "s.zarr", "out16.zarr", "--block", "16,64,64",
                               "--dtype", "input", cwd=work)
        procs["apply"], procs["apply_dtype_input"] = main.result(), as_input.result()
    assert procs["apply"].returncode == 0, show(procs["apply"])
    return {"work": work, "procs": procs, "input_before": before, "input_after": tree_digest(work / "s.zarr")}


def test_synth_writes_an_ome_zarr(run) -> None:
    volume = volden.open_volume(run["work"] / "s.zarr")
    assert volume.shape == SHAPE
    assert volume.voxel_size == VOXEL_SIZE
    assert volume.data.dtype == np.uint16
    assert "s.zarr" in run["procs"]["synth"].stdout


def test_train_writes_a_model_folder(run) -> None:
    model = run["work"] / "m"
    for name in ("model.json", "weights.safetensors", "loss.png"):
        assert (model / name).is_file(), name
    meta = json.loads((model / "model.json").read_text())
    assert meta["format"] == "volden-model"
    assert meta["volden_version"] == volden.__version__
    assert meta["training"]["steps_done"] == 20
    assert meta["training"]["flip_z"] is False  # --no-flip-z
    assert meta["history"] and meta["history"][-1]["step"] == 20
    assert (model / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "saved m" in run["procs"]["train"].stdout
    volden.load_model(model)


def _check_output(path: Path, dtype) -> np.ndarray:
    """Checks what every output holds and returns its voxels."""
    volume = volden.open_volume(path)
    assert volume.shape == SHAPE
    assert volume.voxel_size == VOXEL_SIZE
    assert volume.unit == "micrometer"
    assert volume.data.dtype == dtype
    data = volume.data.compute()
    assert np.all(np.isfinite(data))
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3
    attrs = group.attrs.asdict()
    assert attrs["volden"]["status"] == "complete"
    assert attrs["volden"]["model_sha256"] == volden.load_model(path.parent / "m").digest
    assert attrs["ome"]["version"] == "0.5"
    (image,) = attrs["ome"]["multiscales"]
    assert [a["name"] for a in image["axes"]] == ["z", "y", "x"]
    (dataset,) = image["datasets"]
    assert dataset["path"] == "0"
    assert dataset["coordinateTransformations"] == [{"type": "scale", "scale": list(VOXEL_SIZE)}]
    return data


def test_apply_writes_a_complete_ome_zarr(run) -> None:
    assert _check_output(run["work"] / "out.zarr", np.float32).std() > 0
    attrs = zarr.open_group(str(run["work"] / "out.zarr"), mode="r").attrs["volden"]
    assert attrs["block"] == [8, 32, 32]
    assert "wrote out.zarr" in run["procs"]["apply"].stdout


def test_input_is_untouched(run) -> None:
    assert run["input_after"] == run["input_before"]


def test_existing_output_needs_overwrite(run) -> None:
    work = run["work"]
    before = tree_digest(work / "out.zarr")
    refused = volden_run("apply", "m", "s.zarr", "out.zarr", "--block", "16,64,64", cwd=work)
    assert refused.returncode != 0, show(refused)
    message = refused.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith("volden: error: "), show(refused)
    assert "exists" in message and "--overwrite" in message, show(refused)
    assert tree_digest(work / "out.zarr") == before

    replaced = volden_run("apply", "m", "s.zarr", "out.zarr", "--block", "16,64,64", "--overwrite", cwd=work)
    assert replaced.returncode == 0, show(replaced)
    _check_output(work / "out.zarr", np.float32)
    assert zarr.open_group(str(work / "out.zarr"), mode="r").attrs["volden"]["block"] == [16, 64, 64]
    assert tree_digest(work / "s.zarr") == run["input_before"]


def test_dtype_input_gives_the_input_dtype(run) -> None:
    proc = run["procs"]["apply_dtype_input"]
    assert proc.returncode == 0, show(proc)
    as_input = _check_output(run["work"] / "out16.zarr", np.uint16)
    as_float = volden.open_volume(run["work"] / "out.zarr").data.compute()
    # the float output rounded, where its other block size cannot tip a voxel across a half
    settled = np.abs(as_float - np.floor(as_float) - 0.5) > 0.01
    assert np.array_equal(as_input[settled], np.clip(np.rint(as_float), 0, 65535)[settled])


def test_version(info_runs) -> None:
    proc = info_runs["version"].result()
    assert proc.returncode == 0, show(proc)
    assert proc.stdout.strip() == f"volden, version {volden.__version__}", show(proc)


HELP_MENTIONS = {
    "help": ("Usage:", *COMMANDS),
    "synth": ("synth [OPTIONS] OUTPUT", "--shape", "--overwrite"),
    "ingest": ("ingest [OPTIONS] INPUT OUTPUT", "--voxel-size", "--ome-version", "--overwrite"),
    "train": ("train [OPTIONS] INPUT", "--output", "--steps", "--patch", "--channel", "--timepoint", "--overwrite"),
    "apply": ("apply [OPTIONS] MODEL INPUT OUTPUT", "--block", "--dtype", "--channel", "--timepoint", "--pyramid",
              "--resume", "--overwrite"),
    "info": ("info [OPTIONS] PATH", "--array"),
    "preview": ("preview [OPTIONS] INPUT [DENOISED]", "--output", "--channel"),
    "calibrate": ("calibrate [OPTIONS] INPUT", "--method", "--apply"),
    "eval": ("eval [OPTIONS] [DENOISED]...", "--reference", "--input", "--classic"),
    "demo": ("demo [OPTIONS] [FOLDER]", "--minutes"),
}


@pytest.mark.parametrize("command", ("help", *COMMANDS))
def test_help(info_runs, command: str) -> None:
    proc = info_runs[command].result()
    assert proc.returncode == 0, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    for text in HELP_MENTIONS[command]:
        assert text in proc.stdout, f"{text!r} not in the help\n{show(proc)}"


def test_info_describes_input_output_and_model(run) -> None:
    work = run["work"]
    with ThreadPoolExecutor(3) as pool:
        volume, output, model = pool.map(lambda path: volden_run("info", path, cwd=work), ("s.zarr", "out.zarr", "m"))
    for proc in (volume, output, model):
        assert proc.returncode == 0, show(proc)
    assert "16 x 64 x 64 (z, y, x), uint16" in volume.stdout and "1 x 0.5 x 0.5 micrometer" in volume.stdout
    assert "volden run" not in volume.stdout
    assert re.search(r"volden run  complete \((\d+)/\1 blocks\)", output.stdout), output.stdout
    assert "float32" in output.stdout and "s.zarr" in output.stdout
    assert "20 steps" in model.stdout and volden.load_model(work / "m").digest[:12] in model.stdout
