"""BigDataViewer / BigStitcher datasets: an XML (SpimData) that names the setups, time points and
voxel sizes, with the voxels in one HDF5 file or one N5 container beside it.

The setups (each a channel, angle, illumination or tile of the acquisition) become the channel
axis, the time points the time axis; of each setup the full-resolution level is read:
``t{T:05d}/s{S:02d}/0/cells`` in HDF5, ``setup{S}/timepoint{T}/s0`` in N5. Sizes in the XML are
x, y, z; the arrays are stored z, y, x. BigDataViewer's HDF5 writer stores unsigned 16-bit
voxels as int16 (Java has no unsigned type); they are read as uint16, as BigDataViewer shows them.
"""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import VoldenError
from .n5 import N5Array
from .source import Calibration, Stack, StoredSource, need
from .units import length_unit, positive

LOADERS = {"bdv.hdf5": "hdf5", "bdv.n5": "n5"}
BAND_BYTES = 16 * 2**20
ATTRIBUTE_KINDS = ("channel", "angle", "illumination", "tile")


@functools.lru_cache(maxsize=None)
def _hdf5_file(path: str) -> Any:
    """One read-only handle per file and process (a pickled array opens it again where it lands)."""
    return need("h5py", "BigDataViewer HDF5").File(path, "r")


class Hdf5Array:
    """One dataset of an HDF5 file, read by boxes through h5py (BDV's int16 as uint16).

    HDF5 holds a copy of all that one read selects on top of the array it fills (a 2 GB ingest
    would hold each 256 MiB slab twice), so a box is read into its array in bands of rows of
    at most :data:`BAND_BYTES`, along the chunk grid.
    """

    def __init__(self, file: Path, dataset: str) -> None:
        self.file, self.dataset, self.name = str(file), dataset, f"{file}:{dataset}"
        stored = _hdf5_file(self.file)[dataset]
        self.shape, self.chunks = tuple(stored.shape), tuple(stored.chunks or stored.shape)
        self.dtype = np.dtype(np.uint16) if stored.dtype == np.int16 else np.dtype(stored.dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = (key if isinstance(key, tuple) else (key,)) + (slice(None),) * (len(self.shape) - 1)
        ranges = [_range(k, n) for k, n in zip(key, self.shape)]
        stored = _hdf5_file(self.file)[self.dataset]
        values = np.empty([stop - start for start, stop in ranges], stored.dtype)
        (top, bottom), rows = ranges[-2], self.chunks[-2]
        row_bytes = values.nbytes // max(1, bottom - top)
        band = max(1, BAND_BYTES // max(1, row_bytes * rows)) * rows
        edges = sorted({top, bottom, *range((top // band + 1) * band, bottom, band)})
        for start, stop in zip(edges, edges[1:]):
            source = tuple(slice(*r) for r in ranges[:-2]) + (slice(start, stop), slice(*ranges[-1]))
            if values.size:
                stored.read_direct(values, source, (Ellipsis, slice(start - top, stop - top), slice(None)))
        picked = tuple(0 if isinstance(k, (int, np.integer)) else slice(None) for k in key[:len(self.shape)])
        return values[picked].view(self.dtype)


def _range(key: Any, size: int) -> tuple[int, int]:
    """(start, stop) of an index or a step-1 slice along an axis of ``size``."""
    if isinstance(key, slice):
        start, stop, step = key.indices(size)
        if step != 1:
            raise ValueError(f"volden reads HDF5 boxes with step 1, not {step}")
        return start, max(start, stop)
    index = int(key) + (size if int(key) < 0 else 0)
    return index, index + 1


@dataclass(frozen=True)
class Setup:
    """One BDV view setup as the XML describes it (sizes x, y, z)."""

    id: int
    size: tuple[int, int, int]
    voxel_size: tuple[float | None, float | None, float | None]
    unit: str | None
    name: str | None
    attributes: dict[str, int]


@dataclass(frozen=True)
class BdvSource(StoredSource):
    """A BDV dataset: its setups along c, its time points along t (each axis only if more than one)."""

    container: Path = Path()
    loader: str = "hdf5"
    setups: tuple[int, ...] = ()
    timepoints: tuple[int, ...] = ()

    metadata: ClassVar[str] = "the BDV XML"

    @property
    def format(self) -> str:  # type: ignore[override]
        return f"BDV {self.loader.upper()}"

    def origin(self) -> str:
        return (f"{len(self.setups)} setup{'s' * (len(self.setups) > 1)} x {len(self.timepoints)} time point"
                f"{'s' * (len(self.timepoints) > 1)} of {self.container.name}")

    def provenance(self) -> dict[str, Any]:
        return {"format": self.format, "container": str(self.container.resolve()), "setups": list(self.setups),
                "timepoints": list(self.timepoints)}


def find_xml(h5: Path) -> Path:
    """The BDV XML beside an HDF5 file that names it."""
    for xml in sorted(h5.parent.glob("*.xml")):
        try:
            root = ElementTree.parse(xml).getroot()
        except (ElementTree.ParseError, OSError):
            continue
        loader = root.find("SequenceDescription/ImageLoader")
        if loader is not None and loader.findtext("hdf5") and _container(xml, root, loader) == h5.resolve():
            return xml
    raise VoldenError(f"{h5}: an HDF5 file without a BigDataViewer XML beside it that names it; volden reads "
                      "BDV HDF5 through its XML (pass the .xml)")


def inspect_bdv(xml: Path) -> BdvSource:
    """Describe a BDV dataset from its XML and the array headers alone, or refuse it."""
    root = _parse(xml)
    sequence = root.find("SequenceDescription")
    loader = None if sequence is None else sequence.find("ImageLoader")
    if sequence is None or loader is None:
        raise VoldenError(f"{xml}: a BigDataViewer XML without <SequenceDescription><ImageLoader>")
    kind = LOADERS.get(loader.get("format", ""))
    if kind is None:
        raise VoldenError(f"{xml}: its image loader {loader.get('format')!r} is not one volden reads "
                          f"({', '.join(LOADERS)}); export the dataset to HDF5 or N5 first")
    container = _container(xml, root, loader)
    if not container.exists():
        raise VoldenError(f"{xml} names {container}, which does not exist")
    setups = _setups(sequence, xml)
    timepoints = _timepoints(sequence, xml)
    missing = sequence.find("MissingViews")
    if missing is not None and len(missing):
        raise VoldenError(f"{xml} lists {len(missing)} missing views; volden ingests datasets with every view")
    first = setups[0]
    for setup in setups[1:]:
        for what in ("size", "voxel_size", "unit"):
            if getattr(setup, what) != getattr(first, what):
                raise VoldenError(f"{xml}: setup {setup.id} has {what.replace('_', ' ')} {getattr(setup, what)}, "
                                  f"setup {first.id} {getattr(first, what)}; volden ingests setups of one size")
    arrays = tuple(_open(kind, container, t, s.id, s.size, xml) for t in timepoints for s in setups)
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) > 1:
        raise VoldenError(f"{xml}: its setups hold voxels of different types ({', '.join(map(str, dtypes))})")
    lead = tuple(n for n in (len(timepoints), len(setups)) if n > 1)
    axes = tuple(a for a, n in (("t", len(timepoints)), ("c", len(setups))) if n > 1) + ("z", "y", "x")
    x, y, z = first.voxel_size
    calibration = Calibration((z, y, x), first.unit if any(first.voxel_size) else None, _channel_names(sequence, setups))
    return BdvSource(xml, axes, lead + tuple(reversed(first.size)), arrays[0].dtype, calibration,
                     array=Stack(lead, arrays), container=container, loader=kind,
                     setups=tuple(s.id for s in setups), timepoints=tuple(timepoints))


def _parse(xml: Path) -> ElementTree.Element:
    try:
        root = ElementTree.parse(xml).getroot()
    except ElementTree.ParseError as err:
        raise VoldenError(f"{xml}: not a BigDataViewer XML (cannot parse it: {err})") from None
    if root.tag != "SpimData":
        raise VoldenError(f"{xml}: an XML file but not a BigDataViewer dataset (root <{root.tag}>, not <SpimData>)")
    return root


def _container(xml: Path, root: ElementTree.Element, loader: ElementTree.Element) -> Path:
    """The HDF5 file or N5 folder the loader names: relative ones from the XML's base path."""
    element = loader.find("hdf5") if loader.find("hdf5") is not None else loader.find("n5")
    if element is None or not (element.text or "").strip():
        raise VoldenError(f"{xml}: its image loader names no HDF5 file or N5 container")
    named = Path(element.text.strip())
    if element.get("type") == "absolute":
        return named.resolve()
    base = (root.findtext("BasePath") or ".").strip() or "."
    return (xml.parent / base / named).resolve()


def _setups(sequence: ElementTree.Element, xml: Path) -> list[Setup]:
    found = []
    for element in sequence.findall("ViewSetups/ViewSetup"):
        try:
            setup_id = int(element.findtext("id", ""))
            size = tuple(int(v) for v in element.findtext("size", "").split())
        except ValueError:
            raise VoldenError(f"{xml}: a ViewSetup without an integer <id> and <size>") from None
        if len(size) != 3:
            raise VoldenError(f"{xml}: setup {setup_id} has size {size}; volden reads 3D (x y z) setups")
        voxels = element.find("voxelSize")
        sizes: tuple[float | None, ...] = (None, None, None)
        unit = None
        if voxels is not None:
            parsed = tuple(positive(v) for v in (voxels.findtext("size") or "").split())
            unit = length_unit(voxels.findtext("unit"))
            if len(parsed) == 3 and unit is not None:  # not 'pixel'
                sizes = parsed
            else:
                unit = None
        attributes = {child.tag: int(child.text) for child in element.findall("attributes/*")
                      if (child.text or "").strip().lstrip("-").isdigit()}
        found.append(Setup(setup_id, size, sizes, unit, element.findtext("name"), attributes))  # type: ignore[arg-type]
    if not found:
        raise VoldenError(f"{xml}: a BigDataViewer XML without view setups")
    return sorted(found, key=lambda s: s.id)


def _timepoints(sequence: ElementTree.Element, xml: Path) -> list[int]:
    """Time point ids of ``range`` (first, last), ``list`` (TimePoint ids) or ``pattern`` ("0-9:2, 12")."""
    element = sequence.find("Timepoints")
    kind = None if element is None else element.get("type")
    try:
        if element is None:
            found: list[int] = []
        elif kind == "range":
            found = list(range(int(element.findtext("first", "")), int(element.findtext("last", "")) + 1))
        elif kind == "list":
            found = [int(t.findtext("id", "")) for t in element.findall("TimePoint")]
        elif kind == "pattern":
            found = _pattern(element.findtext("integerpattern", ""))
        else:
            raise VoldenError(f"{xml}: time points of type {kind!r}; volden reads range, list and pattern")
    except ValueError:
        raise VoldenError(f"{xml}: its <Timepoints> ({kind}) are not integers") from None
    if not found:
        raise VoldenError(f"{xml}: a BigDataViewer XML without time points")
    return sorted(set(found))


def _pattern(text: str) -> list[int]:
    found = []
    for part in text.split(","):
        matched = re.fullmatch(r"\s*(-?\d+)(?:\s*-\s*(-?\d+)(?:\s*:\s*(\d+))?)?\s*", part)
        if matched is None:
            raise ValueError(part)
        first, last, step = matched.groups()
        found += list(range(int(first), int(last or first) + 1, int(step or 1)))
    return found


def _channel_names(sequence: ElementTree.Element, setups: list[Setup]) -> tuple[str, ...] | None:
    """One name per setup from the attributes that tell the setups apart: the channel's name
    alone where only channels differ, else "angle 90, channel 488"; the setups' own names, or
    their ids, where the attributes do not tell them apart."""
    if len(setups) < 2:
        return None
    names = {kind: {} for kind in ATTRIBUTE_KINDS}
    for group in sequence.findall("ViewSetups/Attributes"):
        for entity in group:
            if group.get("name") in names and (entity.findtext("id") or "").strip().lstrip("-").isdigit():
                names[group.get("name")][int(entity.findtext("id"))] = entity.findtext("name") or entity.findtext("id")
    differing = [k for k in ATTRIBUTE_KINDS if len({s.attributes.get(k) for s in setups}) > 1]

    def named(kind: str, setup: Setup) -> str:
        value = setup.attributes.get(kind)
        return str(names[kind].get(value, value))

    found = tuple(named("channel", s) if differing == ["channel"] else
                  ", ".join(f"{kind} {named(kind, s)}" for kind in differing) for s in setups)
    if len(set(found)) == len(found) and all(found):
        return found
    own = tuple(s.name or f"setup {s.id}" for s in setups)
    return own if len(set(own)) == len(own) else tuple(f"setup {s.id}" for s in setups)


def _open(kind: str, container: Path, timepoint: int, setup: int, size: tuple[int, int, int], xml: Path) -> Any:
    """The full-resolution array of one setup at one time point, checked against the XML's size."""
    if kind == "hdf5":
        dataset = f"t{timepoint:05d}/s{setup:02d}/0/cells"
        try:
            array: Any = Hdf5Array(container, dataset)
        except (OSError, KeyError) as err:
            raise VoldenError(f"{container}: no readable dataset {dataset} ({str(err).splitlines()[0]})") from None
    else:
        dataset = f"setup{setup}/timepoint{timepoint}/s0"
        if not (container / dataset).is_dir():
            raise VoldenError(f"{container}: no dataset {dataset}")
        array = N5Array(container / dataset, f"{container}/{dataset}")
    if len(array.shape) != 3 or tuple(reversed(array.shape)) != size:
        raise VoldenError(f"{array.name} has shape {array.shape} (z, y, x), but {xml} gives setup {setup} "
                          f"size {size} (x, y, z)")
    return array
