"""Training patches from a lazy volume, read region by region in background threads.

Reading a patch straight from a chunked store would read whole chunks for a few voxels. The
sampler instead loads regions of several chunks into a bounded cache, draws many patches from
each, and replaces a region when it has served its share, so each chunk read feeds many
patches. A slab at the end of the longest axis is held out for validation. Patches are
augmented with in-plane flips and rotations, and mostly-background candidates are redrawn.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import dask.array as da
import numpy as np
import torch

from .normalisation import Normalisation

Box = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Split:
    """The training box and the held-out validation box of a volume."""

    train: Box
    validation: Box
    held_out: bool


def split_volume(shape: tuple[int, ...], patch: tuple[int, ...], fraction: float = 0.1) -> Split:
    """Hold out the last ``fraction`` (at least one patch) of the longest axis for validation.

    When the volume cannot spare a patch's width, validation uses the training box.
    """
    axis = max(range(len(shape)), key=lambda a: (shape[a] / patch[a], shape[a]))
    width = max(patch[axis], int(round(fraction * shape[axis])))
    whole: Box = tuple((0, s) for s in shape)
    if shape[axis] - width < patch[axis]:
        return Split(whole, whole, held_out=False)
    train = tuple((0, shape[axis] - width) if a == axis else (0, s) for a, s in enumerate(shape))
    validation = tuple((shape[axis] - width, shape[axis]) if a == axis else (0, s) for a, s in enumerate(shape))
    return Split(train, validation, held_out=True)


def augment(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips along y and x and a random quarter turn in the yx plane (when square)."""
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.5:
        patch = patch[:, :, ::-1]
    if patch.shape[1] == patch.shape[2]:
        patch = np.rot90(patch, int(rng.integers(4)), axes=(1, 2))
    return np.ascontiguousarray(patch)


class PatchSampler:
    """An endless stream of (batch, 1, z, y, x) normalised float32 batches."""

    def __init__(
        self,
        data: da.Array,
        patch: tuple[int, int, int],
        batch: int,
        normalisation: Normalisation,
        seed: int = 0,
        cache_regions: int = 4,
        patches_per_region: int = 64,
        prefetch: int = 4,
        background_tries: int = 8,
    ) -> None:
        self.data = data
        self.patch = patch
        self.batch = batch
        self.normalisation = normalisation
        self.split = split_volume(data.shape, patch)
        self.patches_per_region = patches_per_region
        self.cache_regions = cache_regions
        self.background_tries = background_tries
        self.threshold = normalisation.apply(
            np.float32(normalisation.low + 0.1 * (normalisation.high - normalisation.low))
        )
        self.regions_read: list[Box] = []
        self._rng = np.random.default_rng(seed)
        self._loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="volden-region")
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._producer = threading.Thread(target=self._produce, name="volden-sampler", daemon=True)
        self._producer.start()

    def _region_shape(self, box: Box) -> tuple[int, ...]:
        chunks = [c[0] for c in self.data.chunks]
        wanted = [max(2 * p, c) for p, c in zip(self.patch, chunks)]
        rounded = [-(-w // c) * c for w, c in zip(wanted, chunks)]
        return tuple(min(r, hi - lo) for r, (lo, hi) in zip(rounded, box))

    def _pick_region(self) -> Box:
        """A region of whole chunks inside the training box, at a random chunk-aligned start."""
        region = []
        for (lo, hi), size, c in zip(self.split.train, self._region_shape(self.split.train), self.data.chunks):
            starts = sorted({*range(-(-lo // c[0]) * c[0], hi - size + 1, c[0]), hi - size})
            start = int(starts[int(self._rng.integers(len(starts)))])
            region.append((start, start + size))
        return tuple(region)

    def _read(self, box: Box) -> np.ndarray:
        raw = self.data[tuple(slice(a, b) for a, b in box)].compute(scheduler="synchronous")
        self.regions_read.append(box)
        return self.normalisation.apply(raw)

    def _draw(self, region: np.ndarray) -> np.ndarray:
        best, best_mean = None, -np.inf
        for _ in range(self.background_tries):
            start = [int(self._rng.integers(0, n - p + 1)) for n, p in zip(region.shape, self.patch)]
            candidate = region[tuple(slice(s, s + p) for s, p in zip(start, self.patch))]
            mean = float(candidate.mean())
            if mean >= self.threshold:
                best = candidate
                break
            if mean > best_mean:
                best, best_mean = candidate, mean
        return augment(best, self._rng)

    def _produce(self) -> None:
        pending: list[Future] = [self._loader.submit(self._read, self._pick_region()) for _ in range(self.cache_regions)]
        cache = [[f.result(), self.patches_per_region] for f in pending]
        pending = [self._loader.submit(self._read, self._pick_region())]
        while not self._stop.is_set():
            samples = []
            for _ in range(self.batch):
                slot = int(self._rng.integers(len(cache)))
                samples.append(self._draw(cache[slot][0]))
                cache[slot][1] -= 1
                if cache[slot][1] <= 0:
                    cache[slot] = [pending.pop(0).result(), self.patches_per_region]
                    pending.append(self._loader.submit(self._read, self._pick_region()))
            batch = torch.from_numpy(np.stack(samples)[:, None])
            while not self._stop.is_set():
                try:
                    self._queue.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def next(self) -> torch.Tensor:
        while True:
            try:
                return self._queue.get(timeout=1.0)
            except queue.Empty:
                if not self._producer.is_alive():
                    raise RuntimeError("the patch sampler stopped") from None

    def validation_patches(self, count: int = 16, seed: int = 1) -> torch.Tensor:
        """A fixed set of patches from the held-out box, each read on its own."""
        rng = np.random.default_rng(seed)
        patches = []
        for _ in range(count):
            start = [lo + int(rng.integers(0, hi - lo - p + 1)) for (lo, hi), p in zip(self.split.validation, self.patch)]
            patches.append(self._read(tuple((s, s + p) for s, p in zip(start, self.patch))))
        return torch.from_numpy(np.stack(patches)[:, None])

    def close(self) -> None:
        self._stop.set()
        self._producer.join(timeout=5)
        self._loader.shutdown(wait=True, cancel_futures=True)
