"""``volden apply --cluster slurm`` on a real single-node SLURM (brought up by
``cluster/slurm-single-node.sh``, as root): the output equals the local cluster's, SLURM's
accounting shows the worker jobs, a cancelled worker job changes nothing, a client without the
run's credentials cannot submit work, and nothing is left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from volden.cluster import ClusterConfig, slurm_client
from volden.ledger import Ledger
from volden.model import save_model
from volden.normalisation import estimate_normalisation
from volden.synth import synthetic_volume

from cli_helpers import volden_command
from conftest import make_model

SCRIPT = Path(__file__).resolve().parent.parent / "cluster" / "slurm-single-node.sh"
JOBCOMP = Path("/var/log/slurm/jobcomp.log")
SLURM_OPTIONS = ("--cluster", "slurm", "--partition", "debug", "--cores", "1", "--memory", "2GB", "--walltime", "00:10:00")
BLOCK_OPTIONS = ("--block", "8,32,32", "--halo", "4,8,8", "--device", "cpu")
DAEMONS = ("slurmctld", "slurmd", "munged")
REFUSED = 3
INTRUDER = f"""
import sys
from distributed import Client
from distributed.security import Security

security = Security.temporary() if sys.argv[2] == "other" else None
try:
    client = Client(sys.argv[1], security=security, timeout="5s")
    print("submitted:", client.submit(sum, [1, 2]).result(timeout=10))
except Exception as err:
    print("refused:", type(err).__name__, err)
    sys.exit({REFUSED})
"""

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="bringing up a real SLURM needs root (CI runs as root)"
)


def _queued_jobs() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True).stdout.split("\n")[:-1]


def _running_daemons() -> list[str]:
    found = subprocess.run(["ps", "-eo", "stat=,comm="], capture_output=True, text=True).stdout.splitlines()
    return [line.split()[1] for line in found if line.split()[1] in DAEMONS and not line.startswith("Z")]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node SLURM for this module; torn down, and checked to be gone, after."""
    up = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    work = tmp_path_factory.mktemp("slurm")
    yield work
    deadline = time.monotonic() + 60
    while _queued_jobs() and time.monotonic() < deadline:
        time.sleep(1)
    assert _queued_jobs() == [], "volden left SLURM jobs behind"
    down = subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    assert _running_daemons() == []
    assert not list(work.rglob(".volden-tls-*")), "temporary TLS credentials were left behind"


@pytest.fixture(scope="module")
def stored(slurm) -> tuple[Path, Path]:
    noisy, _ = synthetic_volume(shape=(32, 128, 128), kind="nuclei", photons=20.0, seed=4, chunks=(16, 48, 48))
    x = noisy.compute()
    zarr.create_array(str(slurm / "in.zarr"), data=x, chunks=(16, 48, 48))
    save_model(make_model(normalisation=estimate_normalisation(noisy)), slurm / "model")
    return slurm / "in.zarr", slurm / "model"


def _worker_jobs_finished() -> list[str]:
    """Job ids of finished dask worker jobs in SLURM's job completion log."""
    if not JOBCOMP.exists():
        return []
    return re.findall(r"JobId=(\d+) .*?Name=dask-worker", JOBCOMP.read_text())


def _apply(model: Path, source: Path, output: Path, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        volden_command("apply", str(model), str(source), str(output), *BLOCK_OPTIONS, *options),
        cwd=output.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    return out + err


def _output(path: Path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


def test_apply_on_slurm_equals_local_and_runs_as_slurm_jobs(slurm, stored):
    model, source = stored[1], stored[0]
    _finish(_apply(model, source, slurm / "local.zarr"))
    before = set(_worker_jobs_finished())
    log = _finish(_apply(model, source, slurm / "slurm.zarr", *SLURM_OPTIONS, "--jobs", "2"))
    assert "scheduler tls://" in log, log[-2000:]
    assert np.array_equal(_output(slurm / "slurm.zarr"), _output(slurm / "local.zarr"))
    deadline = time.monotonic() + 60
    while len(set(_worker_jobs_finished()) - before) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert len(set(_worker_jobs_finished()) - before) == 2, JOBCOMP.read_text()[-2000:]


def test_a_cancelled_worker_job_changes_nothing(slurm, stored):
    model, source = stored[1], stored[0]
    reference = slurm / "reference.zarr"
    if not reference.exists():
        _finish(_apply(model, source, reference))
    output = slurm / "cancelled.zarr"
    proc = _apply(model, source, output, *SLURM_OPTIONS, "--jobs", "2")
    ledger = Ledger(output)
    deadline = time.monotonic() + 300
    while len(ledger.done()) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    jobs = subprocess.run(["squeue", "-h", "-n", "dask-worker", "-t", "R", "-o", "%i"], capture_output=True,
                          text=True).stdout.split()
    assert proc.poll() is None and jobs, "the run ended before a worker job could be cancelled"
    subprocess.run(["scancel", jobs[0]], check=True)
    _finish(proc)
    assert np.array_equal(_output(output), _output(reference))


def test_a_client_without_the_run_credentials_cannot_submit(slurm, monkeypatch):
    monkeypatch.chdir(slurm)
    config = ClusterConfig(cluster="slurm", jobs=1, partition="debug", cores=1, memory="2GB", walltime="00:10:00")
    with slurm_client(config) as client:
        address = client.scheduler.address
        assert address.startswith("tls://")
        client.wait_for_workers(1, timeout=120)
        assert client.submit(sum, [1, 2]).result(timeout=60) == 3
        plain = address.replace("tls://", "tcp://")
        for target, credentials in ((address, "none"), (plain, "none"), (address, "other")):
            intruder = subprocess.run([sys.executable, "-c", INTRUDER, target, credentials], capture_output=True,
                                      text=True, timeout=120)
            assert intruder.returncode == REFUSED, intruder.stdout + intruder.stderr[-2000:]
        assert list(slurm.glob(".volden-tls-*")), "the workers' credentials should exist while the run lives"
    assert not list(slurm.glob(".volden-tls-*"))
