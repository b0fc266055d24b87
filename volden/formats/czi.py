"""Zeiss CZI files, read plane by plane through pylibCZIrw (Zeiss's own libCZI).

A plane is composed by libCZI from the file's subblocks (the tiles of a mosaic) over the whole
bounding rectangle. Time points and channels become the t and c axes where there are several;
the voxel size comes from the metadata's Scaling (metres, written as micrometres), the channel
names from its Channel elements. One scene per file: a multi-scene file is refused.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np

from ..errors import VoldenError
from .source import Calibration, Plane, Source, need
from .units import positive

PIXEL_TYPES = {"Gray8": np.uint8, "Gray16": np.uint16, "Gray32Float": np.float32}
METRES_TO_MICROMETRES = 1e6


@dataclass(frozen=True)
class CziSource(Source):
    """A one-scene CZI file with its T, C, Z extent and the bounding rectangle of its planes."""

    sizes: tuple[int, int, int] = (1, 1, 1)  # T, C, Z
    rectangle: tuple[int, int, int, int] = (0, 0, 0, 0)  # x, y, width, height
    pixel_type: str = "Gray16"

    format: ClassVar[str] = "CZI"
    metadata: ClassVar[str] = "the CZI metadata"

    def provenance(self) -> dict[str, Any]:
        return {"format": self.format, "pixel_type": self.pixel_type}

    def read_planes(self, depth: int = 1) -> Iterator[Plane]:
        """Every plane in t, c, z order, one at a time (whatever ``depth``)."""
        kept = [axis.upper() for axis in self.axes[:-3]]
        with _open(self.path) as czi:
            for index in np.ndindex(*self.sizes):
                plane = dict(zip("TCZ", index))
                values = czi.read(roi=self.rectangle, plane=plane, pixel_type=self.pixel_type)
                yield tuple(plane[axis] for axis in kept) + (plane["Z"],), values[..., 0]


@contextlib.contextmanager
def _open(path: Path) -> Iterator[Any]:
    """The file open for reading; libCZI's own errors (a damaged file) as one line."""
    pyczi = need("pylibCZIrw.czi", "CZI")
    try:
        with pyczi.open_czi(str(path)) as czi:
            yield czi
    except RuntimeError as err:
        raise VoldenError(f"{path}: cannot read it as a CZI file ({err})") from None


def inspect_czi(path: Path) -> CziSource:
    """Describe a CZI file from its directory and metadata alone, or refuse it."""
    with _open(path) as czi:
        box, rectangle = czi.total_bounding_box, czi.total_bounding_rectangle
        scenes, pixel_types = czi.scenes_bounding_rectangle, czi.pixel_types
        metadata = czi.metadata
    sizes = tuple(box[d][1] - box[d][0] for d in "TCZ")
    t, c, z = sizes
    if z < 2:
        raise VoldenError(f"{path} holds a 2D image (Z {z}); volden needs a 3D stack (z, y, x)")
    if len(scenes) > 1:
        raise VoldenError(f"{path} holds {len(scenes)} scenes; volden ingests one-scene CZI files "
                          "(save each scene as a file of its own)")
    types = set(pixel_types.values())
    if len(types) != 1 or next(iter(types)) not in PIXEL_TYPES:
        raise VoldenError(f"{path} has pixel types {', '.join(sorted(types))}; volden ingests one grey-level type "
                          f"({', '.join(PIXEL_TYPES)}) for every channel")
    pixel_type = next(iter(types))
    axes = tuple(a for a, n in (("t", t), ("c", c)) if n > 1) + ("z", "y", "x")
    lead = tuple(n for n in (t, c) if n > 1)
    calibration = _calibration(metadata, c)
    return CziSource(path, axes, lead + (z, rectangle.h, rectangle.w), np.dtype(PIXEL_TYPES[pixel_type]), calibration,
                     sizes=sizes, rectangle=(rectangle.x, rectangle.y, rectangle.w, rectangle.h), pixel_type=pixel_type)


def _listed(value: Any) -> list[Any]:
    """xmltodict gives one child element as a dict, several as a list."""
    return value if isinstance(value, list) else [] if value is None else [value]


def _calibration(metadata: dict[str, Any], channels: int) -> Calibration:
    document = (metadata or {}).get("ImageDocument", {}).get("Metadata", {}) or {}
    distances = _listed(((document.get("Scaling") or {}).get("Items") or {}).get("Distance"))
    metres = {d.get("@Id"): positive(d.get("Value")) for d in distances if isinstance(d, dict)}
    sizes = tuple(None if metres.get(a) is None else metres[a] * METRES_TO_MICROMETRES for a in "ZYX")
    image = ((document.get("Information") or {}).get("Image") or {})
    listed = _listed(((image.get("Dimensions") or {}).get("Channels") or {}).get("Channel"))
    names = tuple(str(ch.get("@Name") or "") for ch in listed if isinstance(ch, dict))
    named = names if len(names) == channels > 1 and all(names) else None
    return Calibration(sizes, "micrometer" if any(v is not None for v in sizes) else None, named)  # type: ignore[arg-type]
