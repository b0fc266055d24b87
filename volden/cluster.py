"""Where ``volden apply`` gets its workers: a local cluster, an existing scheduler, or SLURM jobs.

SLURM goes through dask-jobqueue, the field's engine for batch schedulers. Everything a site
sets once (partition, account, walltime, cores, memory, directives, interface) is read from
Dask's own config (``jobqueue.slurm`` in jobqueue.yaml or ``DASK_JOBQUEUE__SLURM__*``); the
command-line options override it for one run. Each job runs one worker (one GPU), which lives
a staggered while shorter than the walltime so it is replaced before SLURM kills it, and talks
TLS with temporary credentials unless told otherwise: a plain Dask scheduler on a shared
cluster runs any task that anyone on the network sends it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import dask
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.security import Security

from .errors import VoldenError

ALLOWED_FAILURES = 10  # workers that may die under one task before the run fails (open_client)
GPU_FLAGS = ("gres", "gpus")
LIFETIME_MARGIN = 0.1  # of the walltime: a worker retires this long before SLURM would kill it
LIFETIME_STAGGER = 0.05  # of the walltime, so workers do not all retire at once
SLURM_ONLY = ("jobs", "adapt", "partition", "account", "walltime", "gpus_per_job", "cores", "memory", "job_extra")


class TorchThreads(WorkerPlugin):
    """Give each worker process its share of the cores for torch's intra-op threads."""

    name = "volden-torch-threads"

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def setup(self, worker) -> None:
        import torch

        torch.set_num_threads(self.threads)


class OneGpuPerWorker(WorkerPlugin):
    """Pin each worker process to its own GPU, by the number its name ends with (local workers
    are named 0, 1, ...; a SLURM job's processes -0, -1, ...), among the GPUs it can see."""

    name = "volden-one-gpu-per-worker"

    def setup(self, worker) -> None:
        import torch

        if torch.cuda.is_available():
            number = re.search(r"(\d+)$", str(worker.name))
            torch.cuda.set_device(int(number.group(1)) % torch.cuda.device_count() if number else 0)


def walltime_seconds(walltime: str) -> int:
    """SLURM's [D-]HH:MM:SS (or MM:SS) as seconds."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", walltime.strip())
    if not match:
        raise VoldenError(f"--walltime {walltime!r}: expected [D-]HH:MM:SS")
    days, hours, minutes, seconds = (int(v) if v else 0 for v in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


@dataclass(frozen=True)
class ClusterConfig:
    """``--cluster local|slurm|tcp://HOST:PORT`` and its options, checked once."""

    cluster: str = "local"
    workers: int = 1
    jobs: int | None = None
    adapt: tuple[int, int] | None = None
    partition: str | None = None
    account: str | None = None
    walltime: str | None = None
    gpus_per_job: int | None = None
    gpu_flag: str = "gres"
    cores: int | None = None
    memory: str | None = None
    job_extra: tuple[str, ...] = ()
    tls: bool = True

    def __post_init__(self) -> None:
        address = "://" in self.cluster
        if self.cluster not in ("local", "slurm") and not address:
            raise VoldenError(f"--cluster {self.cluster!r}: expected local, slurm or a scheduler address tcp://HOST:PORT")
        if self.cluster != "slurm":
            given = [name for name in SLURM_ONLY if getattr(self, name) not in (None, ())]
            if given:
                raise VoldenError(f"--{given[0].replace('_', '-')} needs --cluster slurm")
        if self.jobs is not None and self.adapt is not None:
            raise VoldenError("--jobs and --adapt exclude each other: a fixed number of jobs or a range")
        if self.jobs is not None and self.jobs < 1:
            raise VoldenError("--jobs must be at least 1")
        if self.adapt is not None and not 0 <= self.adapt[0] <= self.adapt[1] or self.adapt == (0, 0):
            raise VoldenError(f"--adapt {self.adapt}: expected MIN:MAX with 0 <= MIN <= MAX and MAX >= 1")
        if self.gpu_flag not in GPU_FLAGS:
            raise VoldenError(f"--gpu-flag must be one of {', '.join(GPU_FLAGS)}")
        if self.walltime is not None:
            walltime_seconds(self.walltime)

    @property
    def job_range(self) -> tuple[int, int]:
        """Minimum and maximum number of SLURM jobs (``--jobs N`` is N..N)."""
        if self.adapt is not None:
            return self.adapt
        return (self.jobs or 1, self.jobs or 1)


@contextmanager
def open_client(config: ClusterConfig) -> Iterator[Client]:
    """A client of the configured cluster, closed (jobs cancelled, credentials deleted) after.

    A scheduler volden starts retries a task on up to :data:`ALLOWED_FAILURES` workers that die
    under it (dask's default is 3): every task is idempotent, and on a preemptible partition or
    under the fault soak (benchmarks/soak.py) a tile is lost with its worker more than 3 times."""
    if config.cluster in ("local", "slurm"):
        started = local_client(config.workers) if config.cluster == "local" else slurm_client(config)
        with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}), started as client:
            yield client
    else:
        try:
            client = Client(config.cluster, timeout="30s")
        except (OSError, TimeoutError) as err:
            raise VoldenError(f"cannot reach the scheduler at {config.cluster} ({type(err).__name__})") from None
        with client:
            yield client


@contextmanager
def local_client(workers: int = 1) -> Iterator[Client]:
    """A local cluster of ``workers`` processes with two threads each: one runs the network
    (a per-device lock keeps it to one forward pass at a time), the other reads and writes."""
    cores = os.cpu_count() or 1
    with LocalCluster(
        n_workers=workers,
        threads_per_worker=2,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    ) as cluster, Client(cluster) as client:
        client.register_plugin(TorchThreads(max(1, cores // workers)))
        client.register_plugin(OneGpuPerWorker())
        yield client


def _slurm_settings(config: ClusterConfig) -> dict:
    """SLURMCluster keywords: the site's jobqueue config, overridden by this run's options."""
    site = dask.config.get("jobqueue.slurm", default={}) or {}
    settings: dict = {"processes": max(1, config.gpus_per_job or 1)}
    for key, value in (("queue", config.partition), ("account", config.account), ("walltime", config.walltime),
                       ("cores", config.cores), ("memory", config.memory)):
        if value is not None:
            settings[key] = value
    directives = list(site.get("job-extra-directives") or [])
    if config.gpus_per_job:
        directives = [d for d in directives if not d.startswith(("--gres=gpu", "--gpus"))]
        flag = f"--gres=gpu:{config.gpus_per_job}" if config.gpu_flag == "gres" else f"--gpus={config.gpus_per_job}"
        directives.append(flag)
    directives += list(config.job_extra)
    settings["job_extra_directives"] = directives
    worker_args = list(site.get("worker-extra-args") or [])
    walltime = config.walltime or site.get("walltime")
    if walltime and "--lifetime" not in worker_args:
        seconds = walltime_seconds(walltime)
        worker_args += [
            "--lifetime", f"{int(seconds * (1 - LIFETIME_MARGIN))}s",
            "--lifetime-stagger", f"{max(1, int(seconds * LIFETIME_STAGGER))}s",
        ]
    if config.gpus_per_job and "--resources" not in worker_args:
        worker_args += ["--resources", "GPU=1"]
    settings["worker_extra_args"] = worker_args
    return settings


@contextmanager
def slurm_client(config: ClusterConfig) -> Iterator[Client]:
    """SLURM jobs as workers (scaled to ``config.job_range``), TLS unless ``config.tls`` is off.

    The temporary TLS credentials workers need are written to a private folder in the current
    directory (which batch nodes share; ``jobqueue.slurm.shared-temp-directory`` overrides it)
    and deleted on exit.
    """
    from dask_jobqueue import SLURMCluster

    if shutil.which("sbatch") is None:
        raise VoldenError("--cluster slurm: no sbatch on this machine; run volden where SLURM's commands are")
    settings = _slurm_settings(config)
    credentials = None
    if config.tls:
        shared = dask.config.get("jobqueue.slurm.shared-temp-directory", default=None) or os.getcwd()
        credentials = tempfile.mkdtemp(prefix=".volden-tls-", dir=os.path.expanduser(shared))
        settings.update(security=Security.temporary(), protocol="tls://", shared_temp_directory=credentials)
    cluster = SLURMCluster(**settings)
    try:
        low, high = config.job_range
        cluster.adapt(minimum_jobs=low, maximum_jobs=high)
        with Client(cluster, security=settings.get("security")) as client:
            cores = settings.get("cores") or dask.config.get("jobqueue.slurm.cores", default=None)
            if cores:
                client.register_plugin(TorchThreads(max(1, int(cores) // settings["processes"])))
            client.register_plugin(OneGpuPerWorker())
            yield client
    finally:
        cluster.close()
        if credentials:
            for handle in vars(cluster).values():  # dask-jobqueue keeps the credential files open
                if str(getattr(handle, "name", "")).startswith(credentials) and hasattr(handle, "close"):
                    handle.close()
            shutil.rmtree(credentials, ignore_errors=True)
