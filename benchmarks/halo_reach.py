"""How wide must the halo be? Blocked apply against one whole-volume pass, per halo, for a
briefly and a fully trained model.

A trained network reaches further than a fresh one: the difference between blocked and
whole-volume output is set by how much weight the network puts on voxels beyond the halo.
Trains on one synthetic mixed volume and denoises another (held out, 64x128x128) with blocks
of 32x64x64, at halos from half the receptive radius to all of it; the whole-volume pass is
reflect-padded by the same halo at the volume's edge, so only the block faces differ. Also
prints what each halo costs: tile voxels per output voxel at the default CPU block for a
large volume (the network's work grows by that factor).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import volden
from volden.inference import plan_blocks
from volden.predict import CPU_MAX_VOXELS, predict_array, reach_halo
from volden.synth import write_synthetic
from volden.training import TrainConfig

FRACTIONS = (0.5, 0.625, 0.75, 0.875, 1.0)
BLOCK = (32, 64, 64)
LARGE = (512, 2048, 2048)


def tile_cost(model: volden.Model, halo: tuple[int, int, int]) -> tuple[tuple[int, int, int], float]:
    """The default CPU block for a large volume at ``halo``, and tile voxels per output voxel."""
    block, _ = plan_blocks(model, LARGE, None, halo, CPU_MAX_VOXELS)
    return block, float(np.prod([(b + 2 * h) / b for b, h in zip(block, halo)]))


def measure(model: volden.Model, volume: volden.Volume, raw: np.ndarray) -> list[dict]:
    rows = []
    for fraction in FRACTIONS:
        halo = reach_halo(model, fraction)
        whole = predict_array(model, raw, "cpu", edge=halo)
        blocked = volden.denoise(volume.data, model, block=BLOCK, halo=halo, device="cpu").compute()
        block, cost = tile_cost(model, halo)
        rows.append({"fraction": fraction, "halo": list(halo),
                     "max_diff_over_range": float(np.abs(blocked - whole).max() / (whole.max() - whole.min())),
                     "cpu_block": list(block), "tile_voxels_per_output_voxel": round(cost, 3)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="training of the fully trained model")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        train_path = write_synthetic(Path(tmp) / "train.zarr", shape=(64, 128, 128), kind="mixed", seed=11)
        test_path = write_synthetic(Path(tmp) / "test.zarr", shape=(64, 128, 128), kind="mixed", seed=12)
        volume = volden.open_volume(test_path)
        raw = volume.data.compute()
        for name, budget in (("40 steps", TrainConfig(steps=40)), (f"{args.minutes:g} min", TrainConfig(minutes=args.minutes))):
            model = volden.train(volden.open_volume(train_path), Path(tmp) / name.replace(" ", "-"), budget)
            print(f"# {name}: {model.training['steps_done']} steps", flush=True)
            results[name] = {"steps": model.training["steps_done"], "rows": measure(model, volume, raw)}
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
