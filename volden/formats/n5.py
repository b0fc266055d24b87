"""N5 datasets (a folder with an attributes.json beside its blocks), read through tensorstore:
zarr 3 does not read N5.

N5 lists dimensions fastest first (x, y, z as the Java writers order them); volden reverses
them to (t, c,) z, y, x. The axes come from an ``axes`` attribute where there is one, else from
the number of dimensions; the voxel size from ``resolution`` with ``units`` (as neuroglancer
and BigCAT write them) or ``pixelResolution`` (as N5 Viewer does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import ome
from ..errors import VoldenError
from .source import Calibration, StoredSource, need
from .units import length_unit, positive

ATTRIBUTES = "attributes.json"
DATA_TYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64")


def is_n5(path: Path) -> bool:
    """A folder with N5 attributes (and no zarr metadata, which also may sit there)."""
    return (path / ATTRIBUTES).is_file() and not any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))


def read_attributes(folder: Path) -> dict[str, Any]:
    try:
        found = json.loads((folder / ATTRIBUTES).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VoldenError(f"{folder / ATTRIBUTES}: not readable N5 attributes ({type(err).__name__})") from None
    if not isinstance(found, dict):
        raise VoldenError(f"{folder / ATTRIBUTES}: not readable N5 attributes (not a JSON object)")
    return found


class N5Array:
    """One N5 dataset in C order (its dimensions reversed), read by boxes through tensorstore."""

    def __init__(self, folder: Path, name: str | None = None) -> None:
        attributes = read_attributes(folder)
        dimensions, blocks = attributes.get("dimensions"), attributes.get("blockSize")
        if not isinstance(dimensions, list) or attributes.get("dataType") not in DATA_TYPES:
            raise VoldenError(f"{folder} is an N5 group, not a dataset (its attributes name no dimensions and "
                              f"data type {'/'.join(DATA_TYPES)})")
        self.folder, self.name = str(folder), name or str(folder)
        self.shape = tuple(int(n) for n in reversed(dimensions))
        self.chunks = tuple(int(n) for n in reversed(blocks)) if isinstance(blocks, list) else self.shape
        self.dtype = np.dtype(attributes["dataType"])
        self.attributes = attributes
        self._store: Any = None
        self._opened()  # tensorstore checks the rest (compression, block size) now, before anything is written

    def _opened(self) -> Any:
        if self._store is None:
            ts = need("tensorstore", "N5")
            spec = {"driver": "n5", "kvstore": {"driver": "file", "path": self.folder}}
            try:
                self._store = ts.open(spec, read=True, open=True).result().T
            except ValueError as err:
                raise VoldenError(f"{self.name}: not a readable N5 dataset ({str(err).splitlines()[0]})") from None
        return self._store

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._opened()[key].read().result())

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None}  # each process opens its own


@dataclass(frozen=True)
class N5Source(StoredSource):
    """One N5 dataset, its voxel size from its attributes."""

    format: ClassVar[str] = "N5"
    metadata: ClassVar[str] = "the N5 attributes"

    def origin(self) -> str:
        return f"N5 dataset {self.path.name}"


def inspect_n5(folder: Path) -> N5Source:
    """Describe the N5 dataset ``folder`` from its attributes alone, or refuse it."""
    array = N5Array(folder)
    axes = _axes(array.attributes, array.shape, folder)
    return N5Source(folder, axes, array.shape, array.dtype, _calibration(array.attributes, len(axes)), array=array)


def group_contents(folder: Path) -> str:
    """What an N5 group holds, for a message that asks for one of them."""
    held = sorted(p.name + "/" for p in folder.iterdir() if p.is_dir() and (p / ATTRIBUTES).is_file())
    return ", ".join(held) or "nothing"


def _axes(attributes: dict[str, Any], shape: tuple[int, ...], where: Path) -> tuple[str, ...]:
    named = attributes.get("axes")
    if isinstance(named, list) and len(named) == len(shape):
        axes = tuple(str(a).lower() for a in reversed(named))
        ome.check_axes(axes, str(where))
        return axes
    if not 3 <= len(shape) <= 5:
        raise VoldenError(f"{where} has shape {shape} ({len(shape)}D); volden reads 3D (z, y, x) volumes, "
                          "with time and channel axes before them")
    return ome.AXIS_ORDER[-len(shape):]


def _calibration(attributes: dict[str, Any], ndim: int) -> Calibration:
    """Voxel size (z, y, x) and unit from ``resolution`` + ``units`` or ``pixelResolution``."""
    sizes, units = attributes.get("resolution"), attributes.get("units")
    pixel = attributes.get("pixelResolution")
    if isinstance(pixel, dict):
        sizes, units = pixel.get("dimensions"), pixel.get("unit")
    if not isinstance(sizes, list) or len(sizes) not in (3, ndim):
        return Calibration()
    unit_names = units if isinstance(units, list) else [units] * 3
    unit = length_unit(str(unit_names[0])) if unit_names else None
    x, y, z = (positive(v) for v in sizes[:3])  # fastest first
    return Calibration((z, y, x), unit)
