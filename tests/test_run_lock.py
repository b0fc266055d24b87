"""One writer per output: two runs on one output through the real command, ten times in a row;
the lock's takeover of a holder that is gone (a killed process here, a silent heartbeat on
another host) and its refusal of one that still runs; NaN input filled on request."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from volden.errors import VoldenError
from volden.model import save_model
from volden.normalisation import estimate_normalisation
from volden.runlock import LOCK_FILE, RunLock, _process_start
from volden.synth import synthetic_volume

from cli_helpers import tree_digest, volden_command
from conftest import make_model

ROUNDS = 10
SETTINGS = ("--block", "8,32,32", "--halo", "4,8,8", "--device", "cpu")


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """A volume, a model and the digest of one undisturbed run's output."""
    work = tmp_path_factory.mktemp("lock")
    noisy, _ = synthetic_volume(shape=(16, 96, 96), kind="nuclei", photons=20.0, seed=4, chunks=(8, 48, 48))
    x = noisy.compute()
    zarr.create_array(str(work / "in.zarr"), shape=x.shape, chunks=(8, 48, 48), dtype=x.dtype)[:] = x
    save_model(make_model(normalisation=estimate_normalisation(da.from_array(x))), work / "model")
    single = subprocess.run(volden_command("apply", str(work / "model"), str(work / "in.zarr"), str(work / "single.zarr"),
                                           *SETTINGS), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    return work / "in.zarr", work / "model", _image_digest(work / "single.zarr")


def _image_digest(output: Path) -> dict[str, str]:
    """Every file of the output but its provenance (which names the output's own path)."""
    return {k: v for k, v in tree_digest(output).items() if k != "./zarr.json"}


def test_two_runs_on_one_output_one_is_refused_ten_times_in_a_row(stored, tmp_path):
    source, model, single = stored
    for round_ in range(ROUNDS):
        output = tmp_path / f"out{round_}.zarr"
        args = volden_command("apply", str(model), str(source), str(output), *SETTINGS, "--resume")
        procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL)]
        time.sleep(0.5 * (round_ % 3) / 2)  # within a second: together, a quarter and half a second apart
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL))
        results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        report = f"round {round_}: {[(code, err[-500:]) for code, _, err in results]}"
        assert sorted(code for code, _, _ in results) == [0, 1], report
        refused = next(err for code, _, err in results if code == 1).strip()
        assert len(refused.splitlines()) == 1 and refused.startswith("volden: error: "), report
        assert "Traceback" not in refused, report
        assert any(phrase in refused for phrase in ("is in use by volden apply on host", "already complete")), report
        assert _image_digest(output) == single, report
        assert not (output / LOCK_FILE).exists()


def test_a_killed_holder_is_taken_over_on_its_host(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    holder = {"command": "apply", "host": socket.gethostname(), "pid": sleeper.pid,
              "process_start": _process_start(sleeper.pid), "token": "old", "started": "then"}
    tmp_path.joinpath(LOCK_FILE).write_text(json.dumps(holder))
    with pytest.raises(VoldenError, match=f"is in use by volden apply on host .*pid {sleeper.pid}"):
        RunLock(tmp_path, "apply").acquire()
    sleeper.kill()
    sleeper.wait()
    with RunLock(tmp_path, "apply") as lock:
        assert lock.held()
    assert not tmp_path.joinpath(LOCK_FILE).exists()


def test_a_reused_pid_does_not_hold_the_lock(tmp_path):
    holder = {"command": "train", "host": socket.gethostname(), "pid": os.getpid(), "process_start": "1",
              "token": "old", "started": "then"}
    tmp_path.joinpath(LOCK_FILE).write_text(json.dumps(holder))
    with RunLock(tmp_path, "train") as lock:
        assert lock.held()


def _foreign_lock(folder: Path) -> Path:
    path = folder / LOCK_FILE
    path.write_text(json.dumps({"command": "apply", "host": "gpu-node-17", "pid": 4242, "process_start": "99",
                                "token": "elsewhere", "started": "2026-12-06T03:00:00+00:00"}))
    return path


def test_another_hosts_lock_is_taken_over_when_its_heartbeat_stops(tmp_path):
    _foreign_lock(tmp_path)
    start = time.monotonic()
    with RunLock(tmp_path, "apply", lease_s=1.0) as lock:
        assert lock.held()
    assert time.monotonic() - start >= 1.0


def test_another_hosts_live_heartbeat_is_refused(tmp_path):
    path = _foreign_lock(tmp_path)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.1):
            os.utime(path)

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        with pytest.raises(VoldenError, match="in use by volden apply on host gpu-node-17 \\(pid 4242"):
            RunLock(tmp_path, "apply", lease_s=5.0).acquire()
    finally:
        stop.set()
        beating.join()
    assert json.loads(path.read_text())["token"] == "elsewhere"


def test_a_refused_start_leaves_no_folder(tmp_path):
    with RunLock(tmp_path / "out.zarr", "apply"):
        with pytest.raises(VoldenError, match="in use"):
            RunLock(tmp_path / "out.zarr", "apply").acquire()
        assert (tmp_path / "out.zarr").exists()
    assert not (tmp_path / "out.zarr").exists()


def _nan_volume(path: Path) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = (100 + 10 * rng.standard_normal((16, 64, 64))).astype(np.float32)
    data[3, 10:20, 10:20] = np.nan
    data[12, 40, 50] = np.inf
    zarr.create_array(str(path), shape=data.shape, chunks=(8, 32, 32), dtype="float32")[:] = data
    return data


def test_nonfinite_fill_trains_and_applies_and_records_the_count(tmp_path):
    data = _nan_volume(tmp_path / "nan.zarr")
    before = tree_digest(tmp_path / "nan.zarr")
    trained = subprocess.run(volden_command("train", str(tmp_path / "nan.zarr"), "-o", str(tmp_path / "model"), "--steps",
                                            "3", "--patch", "8,32,32", "--batch", "2", "--width", "4",
                                            "--nonfinite", "fill"), capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "filled 101 NaN or Inf voxels" in trained.stderr
    applied = subprocess.run(volden_command("apply", str(tmp_path / "model"), str(tmp_path / "nan.zarr"),
                                            str(tmp_path / "out.zarr"), "--nonfinite", "fill", "--device", "cpu"),
                             capture_output=True, text=True, timeout=300)
    assert applied.returncode == 0, applied.stderr[-2000:]
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert out.attrs["volden"]["nonfinite_filled"] == 101 and out.attrs["volden"]["nonfinite"] == "fill"
    denoised = out["0"][:]
    assert np.isfinite(denoised).all()
    finite = data[np.isfinite(data)]
    assert finite.min() - 50 < denoised.mean() < finite.max() + 50
    assert tree_digest(tmp_path / "nan.zarr") == before
