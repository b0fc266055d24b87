"""The embedded default: a local ``distributed`` cluster sized for the machine and torch."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin


class TorchThreads(WorkerPlugin):
    """Give each worker process its share of the cores for torch's intra-op threads."""

    name = "volden-torch-threads"

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def setup(self, worker) -> None:
        import torch

        torch.set_num_threads(self.threads)


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
        yield client
