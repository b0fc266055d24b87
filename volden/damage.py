"""An input that cannot be read is named down to its chunk.

A chunk file overwritten or cut short fails deep in a codec (``Zstd decompression error:
invalid input data``) with no word of which file; and it is the input's fault, so no resume
of the run can help. Reads of the input go through :func:`read_box`, which on failure reads
the box again chunk by chunk (the chunks the store keeps as files: shards where there are)
to find the first that fails, and raises :class:`DamagedInput` naming it.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .errors import VoldenError
from .volume import VolumeView

Box = list[tuple[int, int]] | tuple[tuple[int, int], ...]


class DamagedInput(VoldenError):
    """An input chunk that cannot be read; the input must be restored, not the run resumed."""


def _stored_chunks(array: Any) -> tuple[int, ...]:
    shards = getattr(array, "shards", None)
    return tuple(shards or array.chunks)


def _reason(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def locate(source: Any, box: Box, where: str, err: BaseException) -> DamagedInput:
    """The error for a failed read of ``box`` (z, y, x ranges) of ``source``: the first chunk
    in the box that fails on its own, or the box when none does."""
    array, lead = (source.array, source.index) if isinstance(source, VolumeView) else (source, ())
    grid = _stored_chunks(array)
    lead_chunk = tuple(i // c for i, c in zip(lead, grid))
    spatial = grid[len(lead):]
    ranges = [range(a // c, -(-b // c)) for (a, b), c in zip(box, spatial)]
    for index in itertools.product(*ranges):
        chunk = [(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, spatial, array.shape[len(lead):])]
        try:
            np.asarray(array[lead + tuple(slice(a, b) for a, b in chunk)])
        except Exception as chunk_err:
            at = ", ".join(f"{axis} {a}-{b}" for axis, (a, b) in zip("zyx", chunk))
            return DamagedInput(f"{where} is damaged: its chunk {lead_chunk + index} ({at}) cannot be read "
                                f"({_reason(chunk_err)}); restore the input from its source")
    at = ", ".join(f"{axis} {a}-{b}" for axis, (a, b) in zip("zyx", box))
    return DamagedInput(f"{where} cannot be read at {at} ({_reason(err)})")


def read_box(source: Any, box: Box, where: str) -> np.ndarray:
    """The region ``box`` of ``source`` (a stored array or a :class:`VolumeView`), or a
    :class:`DamagedInput` naming the chunk that cannot be read."""
    try:
        return np.asarray(source[tuple(slice(a, b) for a, b in box)])
    except Exception as err:
        raise locate(source, box, where, err) from None
