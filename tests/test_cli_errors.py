"""Bad input through the real ``volden`` command: one line, non-zero exit, nothing written.

Every case runs ``volden`` in a fresh subprocess, in a folder of its own holding its own copies
of the inputs, so a case that wrote into its input cannot hide behind another. The subprocesses
start together (a few at a time) because importing torch dominates their cost; each test then
checks one finished case:

* the exit status is not 0 and stderr holds no traceback;
* stderr is exactly one line, ``volden: error: ...``, naming the problem (click usage errors,
  such as a malformed ``--shape``, keep click's own message);
* the output (store or model folder) does not exist afterwards, or, when it existed before, is
  byte-identical; every input (volume stores, model folders) is byte-identical.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import volden
from cli_helpers import tree_digest, volden_command
from volden.synth import write_synthetic
from volden.model import save_channel_index
from volden.runlock import LOCK_FILE, _process_start
from volden.training import train

PARALLEL = 3
TIMEOUT_S = 240


# --------------------------------------------------------------------------------------------
# Inputs. Each maker writes one input into a case's folder under the given name.


def make_volume(folder: Path, name: str, sources: dict[str, Path]) -> None:
    shutil.copytree(sources["volume"], folder / name)


def make_small(folder: Path, name: str, sources: dict[str, Path]) -> None:
    shutil.copytree(sources["small"], folder / name)


def make_model(folder: Path, name: str, sources: dict[str, Path]) -> None:
    shutil.copytree(sources["model"], folder / name)


def make_not_zarr(folder: Path, name: str, sources: dict[str, Path]) -> None:
    (folder / name).mkdir()
    (folder / name / "notes.txt").write_text("just a folder\n")


def make_4d(folder: Path, name: str, sources: dict[str, Path]) -> None:
    array = zarr.create_array(str(folder / name), shape=(2, 8, 32, 32), chunks=(1, 8, 32, 32), dtype="uint16")
    array[:] = np.arange(2 * 8 * 32 * 32, dtype=np.uint16).reshape(2, 8, 32, 32)


def make_6d(folder: Path, name: str, sources: dict[str, Path]) -> None:
    zarr.create_array(str(folder / name), shape=(2, 2, 2, 8, 32, 32), chunks=(1, 1, 1, 8, 32, 32), dtype="uint16")


def make_unknown_axes(folder: Path, name: str, sources: dict[str, Path]) -> None:
    shutil.copytree(sources["volume"], folder / name)
    group = zarr.open_group(str(folder / name), mode="r+")
    attrs = group.attrs.asdict()
    attrs["ome"]["multiscales"][0]["axes"][0] = {"name": "angle", "type": "space"}
    group.attrs.update(attrs)


def make_channel_models(folder: Path, name: str, sources: dict[str, Path]) -> None:
    (folder / name).mkdir()
    shutil.copytree(sources["model"], folder / name / "channel-0")
    save_channel_index(folder / name, {0: "channel-0"})


def make_multi(folder: Path, name: str, sources: dict[str, Path]) -> None:
    group = zarr.open_group(str(folder / name), mode="w")
    for array_name in ("raw", "labels"):
        array = group.create_array(array_name, shape=(16, 64, 64), chunks=(8, 32, 32), dtype="uint16")
        array[:] = 100


def make_nan(folder: Path, name: str, sources: dict[str, Path]) -> None:
    rng = np.random.default_rng(0)
    data = (100 + 10 * rng.standard_normal((16, 64, 64))).astype(np.float32)
    data[3, 10:20, 10:20] = np.nan
    data[12, 40, 50] = np.nan
    array = zarr.create_array(str(folder / name), shape=data.shape, chunks=(8, 32, 32), dtype="float32")
    array[:] = data


def make_empty_dir(folder: Path, name: str, sources: dict[str, Path]) -> None:
    (folder / name).mkdir(parents=True)


def make_garbage_model(folder: Path, name: str, sources: dict[str, Path]) -> None:
    (folder / name).mkdir()
    (folder / name / "model.json").write_text("{this is not json")


def make_truncated_weights(folder: Path, name: str, sources: dict[str, Path]) -> None:
    shutil.copytree(sources["model"], folder / name)
    weights = folder / name / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:5])


def make_corrupt_chunk(folder: Path, name: str, sources: dict[str, Path]) -> None:
    shutil.copytree(sources["volume"], folder / name)
    (folder / name / "noisy" / "c" / "1" / "0" / "1").write_bytes(np.random.default_rng(0).bytes(20))


def make_mismatched_model(folder: Path, name: str, sources: dict[str, Path]) -> None:
    shutil.copytree(sources["model"], folder / name)
    meta = json.loads((folder / name / "model.json").read_text())
    meta["architecture"]["width"] *= 2
    (folder / name / "model.json").write_text(json.dumps(meta))


def _live_lock(folder: Path, command: str) -> None:
    """A lock held by a live process (this test's), as a run still going would leave it."""
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    (folder / LOCK_FILE).write_text(json.dumps({
        "command": command, "host": socket.gethostname(), "pid": pid, "process_start": _process_start(pid),
        "token": "held-by-the-test", "started": "2026-12-06T10:00:00+00:00"}))


def _copy_killed_run(folder: Path, name: str, sources: dict[str, Path]) -> Path:
    """The killed run as if it had been started on this case's own copy of the volume."""
    shutil.copytree(sources["partial"], folder / name)
    plan_file = folder / name / "volden-run" / "plan.json"
    plan_file.write_text(json.dumps({**json.loads(plan_file.read_text()), "input": str((folder / "vol.zarr").resolve())}))
    return folder / name


def make_locked_run(folder: Path, name: str, sources: dict[str, Path]) -> None:
    _live_lock(_copy_killed_run(folder, name, sources), "apply")


def make_locked_model(folder: Path, name: str, sources: dict[str, Path]) -> None:
    shutil.copytree(sources["model"], folder / name)
    _live_lock(folder / name, "train")


def make_damaged_plan(folder: Path, name: str, sources: dict[str, Path]) -> None:
    (_copy_killed_run(folder, name, sources) / "volden-run" / "plan.json").write_text('{"block": [8, 3')


def make_damaged_piece(folder: Path, name: str, sources: dict[str, Path]) -> None:
    piece = sorted((_copy_killed_run(folder, name, sources) / "volden-run" / "tiles").glob("*/*.npy"))[0]
    piece.write_bytes(piece.read_bytes()[:100])


def make_existing_store(folder: Path, name: str, sources: dict[str, Path]) -> None:
    (folder / name).mkdir()
    (folder / name / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (folder / name / "precious.txt").write_text("results of last week\n")


def make_complete_output(folder: Path, name: str, sources: dict[str, Path]) -> None:
    group = zarr.open_group(str(folder / name), mode="w")
    group.attrs["volden"] = {"status": "complete"}


def _write_slices(folder: Path, planes: list[np.ndarray]) -> None:
    folder.mkdir()
    for z, plane in enumerate(planes, 1):
        tifffile.imwrite(folder / f"slice_{z}.tif", plane)


def make_slices(folder: Path, name: str, sources: dict[str, Path]) -> None:
    _write_slices(folder / name, [np.full((32, 32), z, np.uint16) for z in range(3)])


def make_mismatched_slices(folder: Path, name: str, sources: dict[str, Path]) -> None:
    _write_slices(folder / name, [np.zeros((32, 32), np.uint16)] * 2 + [np.zeros((32, 30), np.uint16)])


def make_mixed_dtype_slices(folder: Path, name: str, sources: dict[str, Path]) -> None:
    _write_slices(folder / name, [np.zeros((32, 32), np.uint16), np.zeros((32, 32), np.uint8)])


def make_2d_tiff(folder: Path, name: str, sources: dict[str, Path]) -> None:
    tifffile.imwrite(folder / name, np.zeros((32, 32), np.uint16))


def make_text_file(folder: Path, name: str, sources: dict[str, Path]) -> None:
    (folder / name).write_text("not an image\n")


# --------------------------------------------------------------------------------------------
# Cases.


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    phrases: tuple[str, ...]  # each must appear in the message (case-insensitive)
    inputs: dict[str, object] = field(default_factory=dict)  # name in the case folder -> maker
    absent: tuple[str, ...] = ()  # paths that must not exist afterwards
    forbidden: tuple[str, ...] = ()  # must not appear in the message (advice that cannot work)
    usage_error: bool = False  # a click usage error: click's own (multi-line) message


def train_case(id, input_name, maker, phrases, extra=()) -> Case:
    inputs = {input_name: maker} if maker else {}
    return Case(id, ("train", input_name, "-o", "model_out", "--steps", "2", *extra), phrases, inputs, ("model_out",))


def apply_case(id, input_name, maker, phrases, extra=()) -> Case:
    inputs = {"model": make_model, **({input_name: maker} if maker else {})}
    return Case(id, ("apply", "model", input_name, "out.zarr", *extra), phrases, inputs, ("out.zarr",))


def ingest_case(id, input_name, maker, phrases, extra=()) -> Case:
    inputs = {input_name: maker} if maker else {}
    return Case(id, ("ingest", input_name, "out.zarr", *extra), phrases, inputs, ("out.zarr",))


CASES = [
    # the input volume
    train_case("train-missing-input", "nowhere.zarr", None, ("no such file",)),
    apply_case("apply-missing-input", "nowhere.zarr", None, ("no such file",)),
    train_case("train-not-zarr", "folder", make_not_zarr, ("not a zarr",)),
    apply_case("apply-not-zarr", "folder", make_not_zarr, ("not a zarr",)),
    train_case("train-6d", "six.zarr", make_6d, ("6D", "--array")),
    apply_case("apply-6d", "six.zarr", make_6d, ("6D", "--array")),
    train_case("train-unknown-axes", "odd.zarr", make_unknown_axes, ("axes (angle, y, x)", "t, c, z, y, x")),
    apply_case("apply-unknown-axes", "odd.zarr", make_unknown_axes, ("axes (angle, y, x)", "t, c, z, y, x")),
    train_case("train-channel-out-of-range", "four.zarr", make_4d, ("2 channels (0-1)", "--channel 2 is out of range"),
               ("--channel", "2")),
    apply_case("apply-channel-out-of-range", "four.zarr", make_4d, ("2 channels (0-1)", "--channel 5 is out of range"),
               ("--channel", "0", "--channel", "5")),
    apply_case("apply-timepoint-out-of-range", "four.zarr", make_4d, ("one timepoint (0)", "--timepoint 1"),
               ("--timepoint", "1")),
    Case("apply-channel-models-on-3d", ("apply", "models", "vol.zarr", "out.zarr"),
         ("holds models for channels 0", "without channels"), {"models": make_channel_models, "vol.zarr": make_volume},
         ("out.zarr",)),
    train_case("train-group-without-array", "multi.zarr", make_multi, ("--array", "raw", "labels")),
    apply_case("apply-group-without-array", "multi.zarr", make_multi, ("--array", "raw", "labels")),
    # training on data it cannot use
    train_case("train-smaller-than-patch", "small.zarr", make_small, ("smaller than the training patch",),
               ("--patch", "16,64,64")),
    train_case("train-nan", "nan.zarr", make_nan, ("NaN or Inf", "z 0-8, y 0-32, x 0-32", "--nonfinite fill"),
               ("--patch", "8,32,32", "--batch", "2", "--width", "4")),
    Case("train-locked-model", ("train", "vol.zarr", "-o", "model_out", "--steps", "2", "--overwrite"),
         ("model_out is in use by volden train on host", f"pid {os.getpid()}", "started 2026-12-06T10:00:00"),
         {"vol.zarr": make_volume, "model_out": make_locked_model}),
    apply_case("apply-nan", "nan.zarr", make_nan, ("NaN or Inf", "z 0-8, y 0-32, x 0-32", "nothing was written",
                                                  "--nonfinite fill")),
    Case("apply-corrupt-chunk", ("apply", "model", "vol.zarr", "out.zarr"),
         ("vol.zarr/noisy is damaged", "chunk (1, 0, 1) (z 8-16, y 0-32, x 32-64)", "nothing was written"),
         {"model": make_model, "vol.zarr": make_corrupt_chunk}, ("out.zarr",), forbidden=("--resume",)),
    train_case("train-cache-not-positive", "vol.zarr", make_volume, ("--cache-mb", "positive"), ("--cache-mb", "0")),
    train_case("train-masking-every-phase", "vol.zarr", make_volume, ("--masked-phases must be from 1 to 7", "8 phases"),
               ("--masked-phases", "8")),
    Case("train-existing-model-folder", ("train", "vol.zarr", "-o", "model_out", "--steps", "2"),
         ("exists", "--overwrite"), {"vol.zarr": make_volume, "model_out": make_model}),
    Case("train-model-inside-input", ("train", "vol.zarr", "-o", "vol.zarr/model", "--steps", "2", "--patch",
                                      "8,32,32", "--batch", "2", "--width", "4"),
         ("inside the input",), {"vol.zarr": make_volume}, ("vol.zarr/model",)),
    # the output of apply
    Case("apply-existing-output", ("apply", "model", "vol.zarr", "out.zarr"), ("exists", "--overwrite"),
         {"model": make_model, "vol.zarr": make_volume, "out.zarr": make_existing_store}),
    Case("apply-output-inside-input", ("apply", "model", "vol.zarr", "vol.zarr/denoised.zarr"),
         ("inside the input",), {"model": make_model, "vol.zarr": make_volume}, ("vol.zarr/denoised.zarr",)),
    Case("apply-output-is-input", ("apply", "model", "vol.zarr", "vol.zarr", "--overwrite"),
         ("inside the input",), {"model": make_model, "vol.zarr": make_volume}),
    Case("apply-output-contains-input", ("apply", "model", "data/vol.zarr", "data", "--overwrite"),
         ("contains the input",), {"model": make_model, "data/vol.zarr": make_volume}),
    Case("apply-halo-exceeds-block", ("apply", "model", "vol.zarr", "out.zarr", "--block", "8,32,32",
                                      "--halo", "16,16,16"),
         ("halo", "block"), {"model": make_model, "vol.zarr": make_volume}, ("out.zarr",)),
    Case("apply-resume-not-a-run", ("apply", "model", "vol.zarr", "out.zarr", "--resume"),
         ("not an unfinished volden run", "--overwrite"),
         {"model": make_model, "vol.zarr": make_volume, "out.zarr": make_existing_store}),
    Case("apply-resume-complete", ("apply", "model", "vol.zarr", "out.zarr", "--resume"), ("already complete",),
         {"model": make_model, "vol.zarr": make_volume, "out.zarr": make_complete_output}),
    Case("apply-resume-and-overwrite", ("apply", "model", "vol.zarr", "out.zarr", "--resume", "--overwrite"),
         ("exclude each other",), {"model": make_model, "vol.zarr": make_volume}, ("out.zarr",)),
    Case("apply-locked-output", ("apply", "model", "vol.zarr", "out.zarr", "--resume"),
         ("out.zarr is in use by volden apply on host", f"pid {os.getpid()}", "started 2026-12-06T10:00:00"),
         {"model": make_model, "vol.zarr": make_volume, "out.zarr": make_locked_run}),
    Case("apply-resume-damaged-plan", ("apply", "model", "vol.zarr", "out.zarr", "--resume"),
         ("out.zarr/volden-run/plan.json is damaged", "--overwrite"),
         {"model": make_model, "vol.zarr": make_volume, "out.zarr": make_damaged_plan}),
    Case("apply-resume-damaged-piece", ("apply", "model", "vol.zarr", "out.zarr", "--resume"),
         ("out.zarr/volden-run/tiles/", ".npy is damaged", "resume again to recompute it"),
         {"model": make_model, "vol.zarr": make_volume, "out.zarr": make_damaged_piece}),
    apply_case("apply-unknown-cluster", "vol.zarr", make_volume, ("--cluster", "tcp://HOST:PORT"),
               ("--cluster", "kubernetes")),
    apply_case("apply-slurm-option-without-slurm", "vol.zarr", make_volume, ("--partition", "needs --cluster slurm"),
               ("--partition", "gpu")),
    apply_case("apply-jobs-and-adapt", "vol.zarr", make_volume, ("--jobs", "--adapt", "exclude"),
               ("--cluster", "slurm", "--jobs", "2", "--adapt", "0:4")),
    apply_case("apply-bad-walltime", "vol.zarr", make_volume, ("--walltime", "HH:MM:SS"),
               ("--cluster", "slurm", "--walltime", "two hours")),
    # the model of apply
    Case("apply-model-missing", ("apply", "no-model", "vol.zarr", "out.zarr"), ("no such model",),
         {"vol.zarr": make_volume}, ("out.zarr",)),
    Case("apply-model-empty-dir", ("apply", "empty", "vol.zarr", "out.zarr"), ("not a volden model",),
         {"empty": make_empty_dir, "vol.zarr": make_volume}, ("out.zarr",)),
    Case("apply-model-garbage-json", ("apply", "garbage", "vol.zarr", "out.zarr"), ("not a volden model",),
         {"garbage": make_garbage_model, "vol.zarr": make_volume}, ("out.zarr",)),
    Case("apply-model-json-mismatch", ("apply", "odd", "vol.zarr", "out.zarr"),
         ("odd/model.json does not match odd/weights.safetensors", "size mismatch"),
         {"odd": make_mismatched_model, "vol.zarr": make_volume}, ("out.zarr",)),
    Case("apply-model-truncated-weights", ("apply", "cut", "vol.zarr", "out.zarr"),
         ("cut/weights.safetensors is damaged",), {"cut": make_truncated_weights, "vol.zarr": make_volume}, ("out.zarr",)),
    Case("info-missing", ("info", "nowhere.zarr"), ("no such file",)),
    # ingest
    ingest_case("ingest-missing-input", "nowhere.tif", None, ("no such file",)),
    ingest_case("ingest-mismatched-slices", "slices", make_mismatched_slices, ("slice_3.tif", "(32, 30)", "(32, 32)")),
    ingest_case("ingest-mixed-dtypes", "slices", make_mixed_dtype_slices, ("slice_2.tif", "uint8", "uint16")),
    ingest_case("ingest-empty-folder", "empty", make_empty_dir, ("no TIFF files",)),
    ingest_case("ingest-zarr-input", "vol.zarr", make_volume, ("no TIFF files",)),
    ingest_case("ingest-2d-tiff", "plane.tif", make_2d_tiff, ("2D image", "3D stack")),
    ingest_case("ingest-not-tiff", "notes.tif", make_text_file, ("as a TIFF file",)),
    ingest_case("ingest-bad-voxel-size", "slices", make_slices, ("--voxel-size", "positive"), ("--voxel-size", "1,0,1")),
    ingest_case("ingest-unknown-unit", "slices", make_slices, ("--unit furlong", "micrometer"), ("--unit", "furlong")),
    Case("ingest-existing-output", ("ingest", "slices", "out.zarr"), ("exists", "--overwrite"),
         {"slices": make_slices, "out.zarr": make_existing_store}),
    Case("ingest-output-inside-input", ("ingest", "slices", "slices/out.zarr"), ("inside the input",),
         {"slices": make_slices}, ("slices/out.zarr",)),
    Case("ingest-malformed-voxel-size", ("ingest", "slices", "out.zarr", "--voxel-size", "1,2"), ("three numbers",),
         {"slices": make_slices}, ("out.zarr",), usage_error=True),
    # synth
    Case("synth-existing-output", ("synth", "taken", "--shape", "8,32,32", "--chunks", "8,32,32"),
         ("exists", "--overwrite"), {"taken": make_existing_store}),
    Case("synth-malformed-shape", ("synth", "new.zarr", "--shape", "8,32"), ("three integers",), {},
         ("new.zarr",), usage_error=True),
]


@dataclass
class Outcome:
    case: Case
    folder: Path
    returncode: int
    stdout: str
    stderr: str
    before: dict[str, dict[str, str]]
    after: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic volume, a smaller one, and a model trained (a few steps) on the first."""
    base = tmp_path_factory.mktemp("sources")
    write_synthetic(base / "vol.zarr", shape=(16, 64, 64), chunks=(8, 32, 32))
    write_synthetic(base / "small.zarr", shape=(8, 32, 32), chunks=(8, 32, 32))
    config = volden.TrainConfig(steps=3, width=4, patch=(8, 32, 32), batch=2, validate_every=2)
    train(volden.open_volume(base / "vol.zarr"), base / "model", config)
    assert (base / "model" / "model.json").exists()
    sources = {"volume": base / "vol.zarr", "small": base / "small.zarr", "model": base / "model"}
    return {**sources, "partial": _killed_run(base, sources)}


def _killed_run(base: Path, sources: dict[str, Path]) -> Path:
    """An apply run SIGKILLed after its first finished blocks: a ledger with done markers and tile pieces."""
    output = base / "partial.zarr"
    proc = subprocess.Popen(volden_command("apply", str(sources["model"]), str(sources["volume"]), str(output),
                                           "--block", "8,16,16", "--halo", "4,8,8"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and len(list((output / "volden-run" / "done").glob("*"))) < 3:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert list((output / "volden-run" / "tiles").glob("*/*.npy")), "the killed run left no tile pieces"
    (output / LOCK_FILE).unlink()
    return output


def _run(case: Case, folder: Path) -> Outcome:
    watched = list(case.inputs)
    before = {name: tree_digest(folder / name) for name in watched}
    proc = subprocess.run(
        volden_command(*case.args), cwd=folder, capture_output=True, text=True, timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    after = {name: tree_digest(folder / name) for name in watched}
    return Outcome(case, folder, proc.returncode, proc.stdout, proc.stderr, before, after)


@pytest.fixture(scope="module")
def outcomes(sources, tmp_path_factory) -> dict[str, Outcome]:
    """Every case, run in its own folder, a few subprocesses at a time."""
    base = tmp_path_factory.mktemp("cases")
    folders = {}
    for case in CASES:
        folder = base / case.id
        folder.mkdir()
        for name, maker in case.inputs.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            maker(folder, name, sources)
        folders[case.id] = folder
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {case.id: pool.submit(_run, case, folders[case.id]) for case in CASES}
        return {key: future.result() for key, future in futures.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.id]
    report = f"volden {' '.join(case.args)}\nexit {outcome.returncode}\nstderr:\n{outcome.stderr!r}"
    for name in case.inputs:
        assert outcome.after[name] == outcome.before[name], f"{name} was changed\n{report}"
    for path in case.absent:
        assert not (outcome.folder / path).exists(), f"{path} was written\n{report}"
    assert outcome.returncode != 0, report
    assert "Traceback" not in outcome.stderr, report
    message = outcome.stderr.strip()
    assert message, report
    if case.usage_error:
        assert "Usage:" in message and "Error:" in message, report
    else:
        # One line: a progress bar drawn before the error (its '\r' reads as a line end) is a second.
        assert len(message.splitlines()) == 1, report
        assert message.startswith("volden: error: "), report
    for phrase in case.phrases:
        assert phrase.lower() in message.lower(), f"{phrase!r} not in the message\n{report}"
    for phrase in case.forbidden:
        assert phrase.lower() not in message.lower(), f"{phrase!r} in the message\n{report}"
