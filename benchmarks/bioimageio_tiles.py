"""How an exported model runs in bioimageio.core, against volden's own ``predict_array`` on
a synthetic volume: one whole pass, core's own tiles (which overlap by the declared halo), and,
for comparison, tiles of the same size that do not overlap (what a tool that ignores the halo
does: the network alone on each tile, zero-padded at its faces). Largest and mean difference
per voxel, as fractions of the output's range.

    python benchmarks/bioimageio_tiles.py MODEL [--channel C] [--shape 48,160,160] [--blocks 8,11]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np

from volden.export import export_bioimageio, pick_model
from volden.predict import predict_array
from volden.synth import synthetic_volume


def _fraction(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    scale = float(np.ptp(b))
    return {"max": float(np.abs(a - b).max() / scale), "mean": float(np.abs(a - b).mean() / scale)}


def _without_overlap(model, raw: np.ndarray, kept: list[int]) -> np.ndarray:
    out = np.empty_like(raw)
    for start in itertools.product(*[range(0, n, k) for n, k in zip(raw.shape, kept)]):
        box = tuple(slice(s, s + k) for s, k in zip(start, kept))
        out[box] = predict_array(model, raw[box], "cpu", edge=(0, 0, 0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--channel", type=int, default=None)
    parser.add_argument("--shape", default="48,160,160", help="Z,Y,X of the synthetic volume (seed 3)")
    parser.add_argument("--blocks", default="8,11", help="bioimageio.core block size parameters n (min + n * step)")
    args = parser.parse_args()

    from bioimageio.core import create_prediction_pipeline, predict
    from bioimageio.spec import load_description

    shape = tuple(int(v) for v in args.shape.split(","))
    model = pick_model(args.model, args.channel)
    noisy, _ = synthetic_volume(shape=shape, kind="nuclei", photons=20.0, seed=3, chunks=shape)
    raw = noisy.compute().astype(np.float32)
    volden_out = predict_array(model, raw, "cpu")
    figures: dict = {"shape": list(shape)}
    with tempfile.TemporaryDirectory() as work:
        done = export_bioimageio(args.model, Path(work) / "model.zip", channel=args.channel)
        figures.update(halo=list(done.halo), min_shape=list(done.min_shape), step=list(done.step))
        description = load_description(done.path)
        for weight_format in ("pytorch_state_dict", "torchscript"):
            pipeline = create_prediction_pipeline(description, weight_format=weight_format)
            whole = predict(model=pipeline, inputs={"raw": raw[None, None]}).members["denoised"].data.values[0, 0]
            figures[f"{weight_format} whole"] = _fraction(whole, volden_out)
        for n in (int(v) for v in args.blocks.split(",")):
            tile = [m + n * s for m, s in zip(done.min_shape, done.step)]
            kept = [t - 2 * h for t, h in zip(tile, done.halo)]
            tiled = predict(model=pipeline, inputs={"raw": raw[None, None]}, blocksize_parameter=n)
            name = f"tiles {'x'.join(map(str, tile))} keeping {'x'.join(map(str, kept))}"
            figures[f"torchscript {name}"] = _fraction(tiled.members["denoised"].data.values[0, 0], volden_out)
            figures[f"no overlap, tiles {'x'.join(map(str, kept))}"] = _fraction(
                _without_overlap(model, raw, kept), volden_out)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
