"""CAREamics N2V 3D on one noisy volume, within a wall-clock training budget.

Run by the Python of CAREamics' own virtual environment (``setup_careamics.sh``), never by
volden's: it imports only CAREamics, numpy and the standard library. It reads ``INPUT.npy``
(z, y, x), trains N2V until ``--minutes`` have passed (Lightning's ``Timer`` ends training at
the budget, so the step count follows from the machine's speed, as volden's ``--minutes`` does),
predicts the whole volume in overlapping 3D tiles and writes ``OUTPUT.npy`` (float32, input
units) and ``OUTPUT.json`` (training and prediction seconds, steps done).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
from careamics import CAREamist
from careamics.config import create_n2v_config
from lightning.pytorch.callbacks import Callback, Timer

TILE = (32, 128, 128)
OVERLAP = (8, 32, 32)
DIVISOR = 4  # CAREamics' default UNet pools twice: tiles are multiples of 4
PLATEAU_STEPS = 200


class StepCounter(Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.steps += 1


def tiles_for(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """TILE and OVERLAP shrunk to fit the volume: tiles a multiple of the pooling divisor and,
    as CAREamics requires, square in y and x."""
    z, y, x = (min(t, s - s % DIVISOR) for t, s in zip(TILE, shape))
    tile = (z, min(y, x), min(y, x))
    overlap = tuple(min(o, t // 4 - (t // 4) % 2) for o, t in zip(OVERLAP, tile))
    return tile, overlap


def patch_count(shape: tuple[int, ...], patch: list[int]) -> int:
    """How many patches an epoch has: CAREamics cuts an array into non-overlapping patches."""
    return int(np.prod([s // p for s, p in zip(shape, patch)]))


def validation_patches(shape: tuple[int, ...], patch: list[int]) -> int:
    """CAREamics' default of 8 held-out patches, or an eighth of the volume's patches when it is
    small (CAREamics refuses to hold out all of them)."""
    return max(1, min(8, patch_count(shape, patch) // 8))


def plateau_patience(shape: tuple[int, ...], patch: list[int], n_val: int, batch: int) -> int:
    """Epochs without progress before CAREamics' ReduceLROnPlateau cuts the learning rate tenfold:
    its default (torch's 10) but at least PLATEAU_STEPS steps, since a small volume's epoch is a
    few steps and 10 of them end the useful training within the first minutes."""
    steps_per_epoch = max(1, -(-(patch_count(shape, patch) - n_val) // batch))
    return max(10, -(-PLATEAU_STEPS // steps_per_epoch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path, help="prefix: writes OUTPUT.npy and OUTPUT.json")
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--patch", default="16,64,64")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--work-dir", type=Path, required=True)
    args = parser.parse_args()
    noisy = np.load(args.input).astype(np.float32)
    patch = [int(p) for p in args.patch.split(",")]
    n_val = validation_patches(noisy.shape, patch)
    config = create_n2v_config(
        experiment_name="volden_quality", data_type="array", axes="ZYX", patch_size=patch,
        batch_size=args.batch, num_epochs=1_000_000, n_val_patches=n_val,
    )
    config.algorithm_config.lr_scheduler.parameters = {"patience": plateau_patience(noisy.shape, patch, n_val, args.batch)}
    counter = StepCounter()
    careamist = CAREamist(config, work_dir=args.work_dir, enable_progress_bar=False,
                          callbacks=[Timer(duration=timedelta(minutes=args.minutes), interval="step"), counter])
    start = time.perf_counter()
    careamist.train(train_data=noisy)
    train_s = time.perf_counter() - start
    tile, overlap = tiles_for(noisy.shape)
    start = time.perf_counter()
    predictions, _ = careamist.predict(noisy, tile_size=tile, tile_overlap=overlap, axes="ZYX")
    predict_s = time.perf_counter() - start
    np.save(args.output.with_suffix(".npy"), np.squeeze(predictions[0]).astype(np.float32))
    args.output.with_suffix(".json").write_text(json.dumps(
        {"train_s": train_s, "predict_s": predict_s, "steps": counter.steps, "tile": tile, "overlap": overlap}
    ))


if __name__ == "__main__":
    main()
