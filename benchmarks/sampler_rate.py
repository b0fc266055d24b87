"""Does the region sampler keep up with training? Times training steps fed by the real sampler
(reading a zarr volume on disk in its background threads) against the same steps on batches
already in memory; the target is a sampler-fed rate of at least 0.9 of the in-memory rate.

The two feeds take turns in short rounds, so load from other processes falls on both alike; the
median step time is reported beside the mean because such load comes in bursts."""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

import volden
from volden.normalisation import estimate_normalisation
from volden.sampler import PatchSampler
from volden.streams import MASKS, torch_stream
from volden.synth import write_synthetic
from volden.training import TrainConfig, build_network, train_step

from report import markdown_table, write_section

SHAPE = (64, 256, 256)
TARGET = 0.9


def training_setup(volume, device: torch.device):
    """What ``volden.train`` starts from at ``device``'s defaults: config, network, optimiser and
    patch sampler (close it)."""
    config = TrainConfig(device=str(device)).resolve(volume.shape, device)
    normalisation = estimate_normalisation(volume.data, seed=config.seed)
    torch.manual_seed(config.seed)
    network = build_network(config, volume.voxel_size, device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    sampler = PatchSampler(volume.data, config.patch, config.batch, normalisation, seed=config.seed,
                           cache_mb=config.cache_mb)
    return config, network, optimizer, sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100, help="Timed steps per feed.")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--round", type=int, default=5, help="Steps per turn of a feed.")
    args = parser.parse_args()
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        volume = volden.open_volume(write_synthetic(Path(tmp) / "vol.zarr", shape=SHAPE, photons=20.0))
        config, network, optimizer, sampler = training_setup(volume, device)
        times: dict[str, list[float]] = {"sampler": [], "memory": []}
        steps = itertools.count()

        def run(feed: str, batches: Iterator[torch.Tensor], count: int) -> None:
            """``count`` steps, each timed from asking for its batch to having its loss."""
            for _ in range(count):
                start = time.perf_counter()
                x = next(batches)
                train_step(network, optimizer, x, config, torch_stream(config.seed, MASKS, next(steps)), device).item()
                times[feed].append(time.perf_counter() - start)

        try:
            from_memory = iter([sampler.next() for _ in range(args.steps)])
            from_sampler = iter(sampler.next, None)
            run("sampler", from_sampler, args.warmup)
            times["sampler"].clear()
            load_before = os.getloadavg()[0]
            for start in range(0, args.steps, args.round):
                count = min(args.round, args.steps - start)
                run("sampler", from_sampler, count)
                run("memory", from_memory, count)
            load_after = os.getloadavg()[0]
        finally:
            sampler.close()
    rate = {feed: len(t) / sum(t) for feed, t in times.items()}
    median = {feed: statistics.median(t) for feed, t in times.items()}
    ratio, median_ratio = rate["sampler"] / rate["memory"], median["memory"] / median["sampler"]
    print(f"sampler {rate['sampler']:.3f} steps/s, in memory {rate['memory']:.3f} steps/s, ratio {ratio:.3f} "
          f"(of medians {median_ratio:.3f})")
    rows = [
        f"| {name} | {len(times[feed])} | {sum(times[feed]):.1f} | {rate[feed]:.3f} | {median[feed]:.3f} |"
        for feed, name in (("sampler", f"real sampler (zarr on disk, {sampler.cache_regions} cached regions)"),
                           ("memory", "batches already in memory"))
    ]
    write_section(
        "Sampler rate: training steps fed from disk vs from memory",
        f"{'x'.join(map(str, SHAPE))} synthetic nuclei (chunks 32x128x128), default CPU `TrainConfig` (patch "
        f"{'x'.join(map(str, config.patch))}, batch {config.batch}, depth {config.depth}, width {config.width}, "
        f"cache {config.cache_mb:g} MB), {torch.get_num_threads()} torch threads; {args.warmup} warm-up steps, then "
        f"the feeds take turns of {args.round} steps. Target: sampler-fed rate >= {TARGET} x in-memory rate.\n\n"
        + markdown_table(["feed", "steps", "seconds", "steps/s", "median s/step"], rows)
        + f"\n\nRatio {ratio:.3f}, of medians {median_ratio:.3f} ({'meets' if ratio >= TARGET else 'misses'} the "
        f"target). 1-minute load average {load_before:.2f} before, {load_after:.2f} after (load from other "
        "processes slows both feeds, in bursts).",
    )


if __name__ == "__main__":
    main()
