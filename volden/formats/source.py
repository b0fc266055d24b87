"""What ``volden ingest`` reads: a source of 2D planes with its axes, voxel size and channel names.

A :class:`Source` says from its headers alone what it holds, so bad input is refused before an
output exists, and then hands out its planes (or runs of planes) one after another, so memory
holds a few of them whatever the file's size. A :class:`StoredSource` is a chunked store (HDF5,
N5) read slab by slab, and also opened lazily
for ``volden train`` / ``apply``.
"""

from __future__ import annotations

import importlib
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Iterator, Protocol

import numpy as np

from ..errors import VoldenError
from ..layout import VIEWER_CHUNK

# (index along the output's leading axes, z last; a 2D plane, or a 3D run of planes from that z)
Plane = tuple[tuple[int, ...], np.ndarray]


def need(module: str, reading: str) -> ModuleType:
    """Import the optional library that reads a format, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise VoldenError(f"reading {reading} needs {module.split('.')[0]}: pip install 'volden[formats]'") from None


@dataclass(frozen=True)
class Calibration:
    """What a file's metadata says of its voxels: size (z, y, x; None where it says nothing),
    unit, channel names."""

    voxel_size: tuple[float | None, float | None, float | None] = (None, None, None)
    unit: str | None = None
    channel_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Source:
    """An image file as its headers describe it; subclasses read its planes."""

    path: Path
    axes: tuple[str, ...]  # the output's OME axes
    shape: tuple[int, ...]  # along those axes
    dtype: np.dtype
    calibration: Calibration

    format: ClassVar[str]  # as the command's summary names it
    metadata: ClassVar[str]  # where the voxel size comes from, for the summary

    @property
    def planes(self) -> int:
        return math.prod(self.shape[:-2])

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def origin(self) -> str:
        """What the planes were read from, for the summary line."""
        return f"1 {self.format} file"

    def provenance(self) -> dict[str, Any]:
        """What to record of the input in the output's attributes."""
        return {"format": self.format}

    def read_planes(self, depth: int) -> Iterator[Plane]:
        """Every plane with its output index; a store read in blocks gives runs of up to
        ``depth`` planes starting at multiples of it."""
        raise NotImplementedError


class StoredArray(Protocol):
    """A chunked array in a file, read by boxes (integers and slices) into numpy; picklable, so
    that Dask workers open it themselves."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]

    def __getitem__(self, key: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class StoredSource(Source):
    """A chunked store whose ``array`` holds the whole image along the source's axes."""

    array: Any = None  # a StoredArray

    def read_planes(self, depth: int) -> Iterator[Plane]:
        z_size = self.shape[-3]
        for index in np.ndindex(*self.shape[:-3]):
            for z in range(0, z_size, depth):
                yield (*index, z), self.read((*index, slice(z, min(z + depth, z_size))))

    def read(self, key: tuple) -> np.ndarray:
        """``array[key]``, or one line naming the array and the box that cannot be read."""
        try:
            return np.asarray(self.array[key])
        except Exception as err:  # h5py's, tensorstore's or a codec's own: the file is damaged
            at = ", ".join(f"{axis} {k}" if isinstance(k, int) else f"{axis} {k.start}-{k.stop}"
                           for axis, k in zip(self.axes, key))
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise VoldenError(f"{self.array.name} is damaged: it cannot be read at {at} ({reason})") from None


class Stack:
    """Stored 3D arrays of one shape and dtype laid along leading axes (time point, channel; the
    arrays in ``np.ndindex`` order) as one stored array."""

    def __init__(self, lead_shape: tuple[int, ...], arrays: tuple[StoredArray, ...]) -> None:
        self.lead_shape, self.arrays = tuple(lead_shape), tuple(arrays)
        first = arrays[0]
        self.name = first.name if len(arrays) == 1 else f"{first.name} and {len(arrays) - 1} more"
        self.shape = self.lead_shape + tuple(first.shape)
        self.dtype = np.dtype(first.dtype)
        self.ndim = len(self.shape)
        self.chunks = (1,) * len(self.lead_shape) + tuple(first.chunks)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = (key if isinstance(key, tuple) else (key,)) + (slice(None),) * self.ndim
        lead, box = key[:len(self.lead_shape)], key[len(self.lead_shape):self.ndim]
        picked = [range(n)[k] for k, n in zip(lead, self.lead_shape)]  # an int, or a range kept as an axis
        kept = [len(p) for p in picked if isinstance(p, range)]
        pieces = []
        for index in itertools.product(*(p if isinstance(p, range) else [p] for p in picked)):
            number = int(np.ravel_multi_index(index, self.lead_shape)) if index else 0
            pieces.append(np.asarray(self.arrays[number][box]))
        if len(pieces) == 1:  # one volume (as ingest reads): no copy of a slab
            return pieces[0].reshape(tuple(kept) + pieces[0].shape)
        if not pieces:
            return np.empty(tuple(kept) + np.asarray(self.arrays[0][box]).shape, self.dtype)
        return np.stack(pieces).reshape(tuple(kept) + pieces[0].shape)


def dask_chunks(shape: tuple[int, ...], stored: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks for the lazy array of a store: whole stored chunks, as many as come near the
    viewer's chunk along each spatial axis (a BDV store's 16^3 chunks would make a graph of
    millions of tasks)."""
    lead = len(shape) - 3
    spatial = tuple(min(n, max(1, round(t / c)) * c) for n, t, c in zip(shape[lead:], VIEWER_CHUNK, stored[lead:]))
    return stored[:lead] + spatial
