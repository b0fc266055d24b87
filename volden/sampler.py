"""Training patches from a lazy volume, read region by region in background threads.

Reading a patch straight from a chunked store would read whole chunks for a few voxels. The
sampler instead loads regions of several chunks into a cache bounded in bytes, draws many
patches from each, and replaces a region when it has served its share, so each chunk read feeds
many patches. A slab at the end of the longest axis is held out for validation. Patches are
augmented with flips along all three axes (z optionally) and quarter turns in the yx plane (the
z flip: see :func:`augment`). They are drawn uniformly by default, which measured better than
redrawing dim ones on the quality benchmark (whose PSNR counts the background too);
``background_tries`` > 1 redraws mostly-background candidates, for very sparse volumes.

The stream is fixed by the seed: region ``r`` is placed with the generator of (seed, REGIONS, r)
and batch ``b`` is drawn with that of (seed, BATCHES, b), so a few numbers (see
:attr:`PatchSampler.state`) are enough to carry the stream on in another process.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import dask.array as da
import numpy as np
import torch

from .errors import VoldenError
from .normalisation import Normalisation
from .streams import BATCHES, REGIONS, numpy_stream

Box = tuple[tuple[int, int], ...]
MIN_REGIONS = 2
LOOKAHEAD = 2  # regions read ahead of need, one per loader thread


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


def augment(patch: np.ndarray, rng: np.random.Generator, flip_z: bool = True) -> np.ndarray:
    """Random flips along z, y and x and a random quarter turn in the yx plane (when square), of
    the last three axes (so noisy-clean pairs stacked on a first axis turn alike).

    The z flip takes the axial PSF as symmetric. It spends the one noise realisation better: on
    nuclei-5 volden gained 0.29 dB at equal steps where Noise2Truth gained nothing, and it was
    neutral at 20 photons and on the real volumes (BENCHMARKS.md, "Where the gap to Noise2Truth
    comes from"). ``flip_z=False`` is for data whose axial PSF is not symmetric (spherical
    aberration deep in tissue); the draws stay the same, so only the z flips differ."""
    for axis in (-3, -2, -1):
        if rng.random() < 0.5 and (flip_z or axis != -3):
            patch = np.flip(patch, axis)
    if patch.shape[-2] == patch.shape[-1]:
        patch = np.rot90(patch, int(rng.integers(4)), axes=(-2, -1))
    return np.ascontiguousarray(patch)


def _checked_state(state: dict) -> dict:
    """``state`` with plain ints, or a VoldenError when it is not one a sampler wrote."""
    try:
        checked = {
            "batch": int(state["batch"]),
            "next_region": int(state["next_region"]),
            "slots": [[int(region), int(left)] for region, left in state["slots"]],
        }
    except (KeyError, TypeError, ValueError) as err:
        raise VoldenError(f"the sampler state is not one a PatchSampler wrote ({type(err).__name__})") from None
    if not checked["slots"] or min(left for _, left in checked["slots"]) < 1:
        raise VoldenError("the sampler state has an empty cache or a used-up region")
    return checked


class PatchSampler:
    """An endless, reproducible stream of (batch, 1, z, y, x) normalised float32 batches.

    The cache holds as many regions as ``cache_mb`` allows with the ``LOOKAHEAD`` regions read
    ahead (at least ``MIN_REGIONS``, at most as many as there are region positions). After
    :meth:`next`, :attr:`state` describes the stream just after the batch it returned: the
    batch number, each cache slot's region number and patches left, and the next region number.
    A sampler built with that ``state`` (a JSON-able dict) yields the batches this one would
    have yielded next; the state's cache then wins over ``cache_mb``.
    """

    def __init__(
        self,
        data: da.Array,
        patch: tuple[int, int, int],
        batch: int,
        normalisation: Normalisation,
        seed: int = 0,
        cache_mb: float = 512.0,
        patches_per_region: int = 64,
        prefetch: int = 4,
        background_tries: int = 1,
        flip_z: bool = True,
        state: dict | None = None,
    ) -> None:
        self.data = data
        self.patch = patch
        self.batch = batch
        self.normalisation = normalisation
        self.seed = seed
        self.split = split_volume(data.shape, patch)
        self.patches_per_region = patches_per_region
        self.background_tries = background_tries
        self.flip_z = flip_z
        self.threshold = normalisation.apply(
            np.float32(normalisation.low + 0.1 * (normalisation.high - normalisation.low))
        )
        self.region_shape = self._region_shape(self.split.train)
        self._starts = [
            sorted({*range(-(-lo // c[0]) * c[0], hi - size + 1, c[0]), hi - size})
            for (lo, hi), size, c in zip(self.split.train, self.region_shape, data.chunks)
        ]
        if state is None:
            region_bytes = 4 * int(np.prod(self.region_shape))
            positions = int(np.prod([len(s) for s in self._starts]))
            regions = max(MIN_REGIONS, min(positions, int(cache_mb * 2**20) // region_bytes - LOOKAHEAD))
            state = {"batch": 0, "next_region": regions, "slots": [[r, patches_per_region] for r in range(regions)]}
        self.state = _checked_state(state)
        self.cache_regions = len(self.state["slots"])
        self.regions_read: list[Box] = []
        self._loader = ThreadPoolExecutor(max_workers=LOOKAHEAD, thread_name_prefix="volden-region")
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._producer = threading.Thread(target=self._produce, name="volden-sampler", daemon=True)
        self._producer.start()

    def _region_shape(self, box: Box) -> tuple[int, ...]:
        chunks = [c[0] for c in self.data.chunks]
        wanted = [max(2 * p, c) for p, c in zip(self.patch, chunks)]
        rounded = [-(-w // c) * c for w, c in zip(wanted, chunks)]
        return tuple(min(r, hi - lo) for r, (lo, hi) in zip(rounded, box))

    def region_box(self, number: int) -> Box:
        """Region ``number`` of the stream: whole chunks inside the training box, at a
        chunk-aligned start drawn from the region's own generator."""
        rng = numpy_stream(self.seed, REGIONS, number)
        starts = [s[int(rng.integers(len(s)))] for s in self._starts]
        return tuple((start, start + size) for start, size in zip(starts, self.region_shape))

    def _read(self, box: Box) -> np.ndarray:
        raw = self.data[tuple(slice(a, b) for a, b in box)].compute(scheduler="synchronous")
        self.regions_read.append(box)
        return self.normalisation.apply(raw)

    def _load(self, number: int) -> Future:
        return self._loader.submit(self._read, self.region_box(number))

    def _draw(self, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        best, best_mean = None, -np.inf
        for _ in range(self.background_tries):
            start = [int(rng.integers(0, n - p + 1)) for n, p in zip(region.shape, self.patch)]
            candidate = region[tuple(slice(s, s + p) for s, p in zip(start, self.patch))]
            mean = float(candidate.mean())
            if mean >= self.threshold:
                best = candidate
                break
            if mean > best_mean:
                best, best_mean = candidate, mean
        return augment(best, rng, self.flip_z)

    def _produce(self) -> None:
        number, following = self.state["batch"], self.state["next_region"]
        loading = [(region, self._load(region), left) for region, left in self.state["slots"]]
        ahead = deque((region, self._load(region)) for region in range(following, following + LOOKAHEAD))
        cache = [[region, future.result(), left] for region, future, left in loading]
        while not self._stop.is_set():
            rng = numpy_stream(self.seed, BATCHES, number)
            samples = []
            for _ in range(self.batch):
                slot = cache[int(rng.integers(len(cache)))]
                samples.append(self._draw(slot[1], rng))
                slot[2] -= 1
                if slot[2] == 0:
                    region, future = ahead.popleft()
                    slot[:] = [region, future.result(), self.patches_per_region]
                    ahead.append((region + LOOKAHEAD, self._load(region + LOOKAHEAD)))
            number += 1
            state = {"batch": number, "next_region": ahead[0][0], "slots": [[r, left] for r, _, left in cache]}
            item = (torch.from_numpy(np.stack(samples)[:, None]), state)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def next(self) -> torch.Tensor:
        """The next batch; :attr:`state` then describes the stream just after it."""
        while True:
            try:
                batch, self.state = self._queue.get(timeout=1.0)
                return batch
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
