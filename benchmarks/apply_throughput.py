"""Where does apply's time go? ``volden apply`` voxels/s against the network alone.

On one synthetic volume that fits in memory, with the default CPU network and default blocks:
(a) ``apply_model`` end to end on a running local cluster (reads, tiles, blending, writes,
dask); (b) a plain loop of the same network over the same haloed tiles, already normalised in
memory; (c) one forward pass over the whole volume (padded to the pooling divisor only). The
ratios are what the issue asks: apply / loop >= 0.85 (the cost of I/O, dask and blending) and
apply / whole pass >= 0.6 (that, plus the halo).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from distributed import get_task_stream

from volden.apply import ApplyConfig, apply_model
from volden.cluster import local_client
from volden.inference import plan_blocks, tile_geometry
from volden.predict import predict_normalised, resolve_device
from volden.synth import write_synthetic
from volden.tiling import Tiling
from volden.volume import open_image, open_volume

from report import markdown_table, write_section
from untrained import default_cpu_model


def task_seconds(tasks: list[dict], prefix: str) -> float:
    """Summed compute time of the tasks whose key starts with ``prefix``."""
    total = 0.0
    for task in tasks:
        key = task["key"]
        name = key[0] if isinstance(key, tuple) else str(key)
        if str(name).startswith(prefix):
            total += sum(s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="128,512,512")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    cpu = resolve_device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = write_synthetic(Path(tmp) / "vol.zarr", shape=shape, photons=20.0, seed=2, chunks=(64, 256, 256))
        volume = open_volume(path)
        model = default_cpu_model(volume)
        block, halo = plan_blocks(model, volume.shape)
        tiling = Tiling(volume.shape, block, halo)
        voxels = int(np.prod(shape))
        raw = volume.data.compute().astype(np.float32)

        tiles = []
        for index in tiling.blocks():
            inside, pad, _ = tile_geometry(tiling, index)
            region = raw[tuple(slice(a, b) for a, b in inside)]
            tiles.append(model.normalisation.apply(np.pad(region, pad, mode="reflect")))
        tile_voxels = sum(t.size for t in tiles)
        predict_normalised(model, tiles[0], cpu)  # warm-up
        start = time.perf_counter()
        for tile in tiles:
            predict_normalised(model, tile, cpu)
        loop_s = time.perf_counter() - start

        whole = model.normalisation.apply(raw)
        start = time.perf_counter()
        predict_normalised(model, whole, cpu, max_voxels=whole.size * 2)
        whole_s = time.perf_counter() - start
        del whole, tiles, raw

        start = time.perf_counter()
        with local_client(1) as client:
            cluster_s = time.perf_counter() - start
            with get_task_stream(client) as stream:
                report = apply_model(model, open_image(path), Path(tmp) / "out.zarr", ApplyConfig(), client=client)
        tile_task_s, block_task_s = task_seconds(stream.data, "volden-tile"), task_seconds(stream.data, "volden-block")
        apply_s = report.seconds

    rate = {"apply": voxels / apply_s, "loop": voxels / loop_s, "whole": voxels / whole_s}
    rows = [
        f"| `volden apply` (running local cluster, 1 worker) | {apply_s:.1f} | {rate['apply']:.3g} | 1 |",
        f"| plain loop over the same {len(tiling.chunks[0]) * len(tiling.chunks[1]) * len(tiling.chunks[2])} haloed tiles in memory "
        f"| {loop_s:.1f} | {rate['loop']:.3g} | {rate['apply'] / rate['loop']:.3f} |",
        f"| one whole-volume forward pass | {whole_s:.1f} | {rate['whole']:.3g} | {rate['apply'] / rate['whole']:.3f} |",
    ]
    table = markdown_table(["what", "seconds", "voxels/s", "apply / this"], rows)
    halo_cost = tile_voxels / voxels
    where = (
        f"Where apply's time goes: tile tasks (read, normalise, network, window, save pieces) "
        f"{tile_task_s:.1f} s of task time (two run at once on the worker's two threads, one reading or "
        f"saving while the other's network runs; the network alone takes {loop_s:.1f} s in the loop); "
        f"block tasks (load pieces, blend, write) {block_task_s:.1f} s; starting the local cluster "
        f"{cluster_s:.1f} s more for the command (not in the apply figure). The halo makes the network "
        f"see {halo_cost:.3f} x the volume's voxels (reflection at the volume's edge included)."
    )
    write_section(
        "Apply throughput vs the network alone",
        f"Synthetic volume {'x'.join(map(str, shape))} uint16, untrained default CPU network (depth 2, width 8), "
        f"default block {block} and halo {halo}. Acceptance: apply / loop >= 0.85, apply / whole pass >= 0.6.\n\n"
        f"{table}\n\n{where}",
    )


if __name__ == "__main__":
    main()
