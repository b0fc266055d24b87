"""How close does ``volden apply`` come to its ceilings? One run, one synthetic volume:

- reading the input volume and writing it as apply's float32 output (same chunks, shards and
  codec, block by block): what the store alone costs;
- a near-free network (depth 1, width 1: the issue's ``--width 1 --depth 1``) through ``volden
  apply`` on a running local cluster, against the bare network over the same haloed tiles;
- the default CPU network through ``volden apply``, against the bare network over the same tiles;
- where the near-free run's time goes: each stage of apply's tile and block tasks timed alone,
  one tile or block at a time, with the library's own functions.

The bare loops take the tiles already normalised and padded on the device, so apply / loop is
what reading, moving, blending, the ledger, writing and scheduling cost. Every figure is the best
of ``--repeats`` runs (this machine's speed varies by up to 30 % from run to run).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from volden import ome
from volden.apply import ApplyConfig, apply_model, as_output_dtype
from volden.cluster import local_client
from volden.inference import blend_block, plan_blocks, tile_geometry
from volden.ledger import Ledger
from volden.layout import chunks_within
from volden.model import Model
from volden.predict import normalised_on, predict_normalised, reflect_pad, weigh
from volden.synth import write_synthetic
from volden.tiling import Tiling, intersect, window_1d
from volden.volume import open_image, open_volume

from report import markdown_table, write_section
from untrained import untrained_model


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """Fewest seconds ``run`` took in ``repeats`` tries."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def bare_loop(model: Model, tiling: Tiling, raw: np.ndarray) -> Callable[[], None]:
    """The network alone over apply's tiles, prepared in memory beforehand."""
    cpu = torch.device("cpu")
    tiles = []
    for index in tiling.blocks():
        inside, pad, _ = tile_geometry(tiling, index)
        region = raw[tuple(slice(a, b) for a, b in inside)]
        tiles.append(reflect_pad(normalised_on(model.normalisation, region, cpu), pad))

    def run() -> None:
        for tile in tiles:
            predict_normalised(model, tile)

    return run


def write_output(path: Path, values: np.ndarray, tiling: Tiling) -> None:
    """``values`` written as apply writes its output: block by block into its chunks and shards."""
    shutil.rmtree(path, ignore_errors=True)
    target = ome.create_image(path, values.shape, chunks_within(tiling.block), np.float32, {}, shards=tiling.block)
    for index in tiling.blocks():
        box = tuple(slice(a, b) for a, b in tiling.block_range(index))
        target[box] = values[box]


NEAR_FREE = "near-free (depth 1, width 1)"
STAGES = ("read the tile", "to the device, normalise, pad", "network", "window", "save pieces to the ledger",
          "load pieces", "blend", "write the block (encode)")


@torch.inference_mode()
def stage_seconds(model: Model, tiling: Tiling, source, work: Path) -> dict[str, float]:
    """Seconds in each of apply's stages, summed over the tiles and blocks, one at a time."""
    cpu, seconds = torch.device("cpu"), dict.fromkeys(STAGES, 0.0)
    shutil.rmtree(work, ignore_errors=True)
    ledger = Ledger(work).part("")
    target = ome.create_image(work / "image", tiling.shape, chunks_within(tiling.block), np.float32, {},
                              shards=tiling.block)

    def stage(name: str, run: Callable[[], object]) -> object:
        start = time.perf_counter()
        result = run()
        seconds[name] += time.perf_counter() - start
        return result

    for index in tiling.blocks():
        inside, pad, block_shape = tile_geometry(tiling, index)
        region = stage(STAGES[0], lambda: source[tuple(slice(a, b) for a, b in inside)])
        x = stage(STAGES[1], lambda: reflect_pad(normalised_on(model.normalisation, region, cpu), pad))
        prediction = stage(STAGES[2], lambda: predict_normalised(model, x))
        window = tuple(window_1d(b, h, "gaussian") for b, h in zip(block_shape, tiling.halo))
        weighted = stage(STAGES[3], lambda: weigh(prediction, window).numpy())
        tile = tiling.tile_range(index)
        pieces = {n: weighted[cut[0]] for n in tiling.neighbours(index)
                  if (cut := intersect(tile, tiling.block_range(n))) is not None}
        stage(STAGES[4], lambda: ledger.save_pieces(index, pieces))
    for index in tiling.blocks():
        block_range = tiling.block_range(index)
        around = [(n, cut[1]) for n in tiling.neighbours(index)
                  if (cut := intersect(tiling.tile_range(n), block_range)) is not None]
        pieces = stage(STAGES[5], lambda: [ledger.load_piece(n, index) for n, _ in around])
        values = stage(STAGES[6], lambda: blend_block(model, pieces, [p for _, p in around], tiling, index, "gaussian"))
        box = tuple(slice(a, b) for a, b in block_range)
        stage(STAGES[7], lambda: target.__setitem__(box, as_output_dtype(values, target.dtype)))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="128,512,512")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    voxels = int(np.prod(shape))
    rows, notes, applied = [], [], {}
    with tempfile.TemporaryDirectory() as tmp, local_client(1) as client:
        work = Path(tmp)
        path = write_synthetic(work / "vol.zarr", shape=shape, photons=20.0, seed=2)
        volume = open_volume(path)
        source = volume.source
        read_s = best_of(args.repeats, lambda: source[:])
        raw = source[:]
        models = {NEAR_FREE: untrained_model(volume, depth=1, width=1), "default CPU (depth 2, width 8)": untrained_model(volume)}
        tilings = {name: Tiling(volume.shape, *plan_blocks(model, volume.shape)) for name, model in models.items()}
        for name, model in models.items():
            tiling = tilings[name]
            loop_s = best_of(args.repeats, bare_loop(model, tiling, raw))
            out = work / "out.zarr"

            def apply() -> None:
                shutil.rmtree(out, ignore_errors=True)
                apply_model(model, open_image(path), out, ApplyConfig(), client=client)

            applied[name] = apply_s = best_of(args.repeats, apply)
            rows.append(f"| {name}: `volden apply` | {apply_s:.2f} | {voxels / apply_s:.3g} | loop / apply "
                        f"{loop_s / apply_s:.3f} |")
            rows.append(f"| {name}: the bare network over the same {int(np.prod(tiling.grid))} tiles | {loop_s:.2f} | "
                        f"{voxels / loop_s:.3g} | |")
            tile_voxels = sum(np.prod([b - a for a, b in tiling.tile_range(i)]) for i in tiling.blocks())
            notes.append(f"{name}: block {tiling.block}, halo {tiling.halo}; the tiles hold {tile_voxels / voxels:.3f} x "
                         "the volume's voxels")
        stages = stage_seconds(models[NEAR_FREE], tilings[NEAR_FREE], source, work / "stages")
        denoised = raw.astype(np.float32)
        write_s = best_of(args.repeats, lambda: write_output(work / "written.zarr", denoised, tilings[NEAR_FREE]))
    rows[:0] = [f"| read the uint16 input (zarr, whole volume) | {read_s:.2f} | {voxels / read_s:.3g} | |",
                f"| write it as apply's float32 output (block by block) | {write_s:.2f} | {voxels / write_s:.3g} | |"]
    table = markdown_table(["what", "seconds (best of %d)" % args.repeats, "voxels/s", "ratio"], rows)
    stage_rows = [f"| {name} | {s:.2f} | {s / applied[NEAR_FREE]:.0%} |" for name, s in stages.items()]
    stage_rows.append(f"| sum of the stages, one thread | {sum(stages.values()):.2f} | "
                      f"{sum(stages.values()) / applied[NEAR_FREE]:.0%} |")
    stage_table = markdown_table(["stage (near-free network)", "seconds", "of apply's time"], stage_rows)
    write_section(
        "Apply ceiling: the store, the network and the pipeline",
        f"Synthetic volume {'x'.join(map(str, shape))} uint16, untrained networks, default blocks and halo, a running "
        "local cluster of 1 worker (2 threads). Targets: near-free `volden apply` >= 3e7 voxels/s; default network "
        f"loop / apply >= 0.9.\n\n{table}\n\n" + "; ".join(notes) + ".\n\nWhere the near-free run's time goes "
        f"(each stage alone, summed over the tiles and blocks; apply itself: {applied[NEAR_FREE]:.2f} s on the worker's "
        f"two threads):\n\n{stage_table}",
    )


if __name__ == "__main__":
    main()
