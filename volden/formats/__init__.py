"""The image formats volden reads, told apart by their contents (not their names).

``volden ingest`` converts any of them to OME-Zarr (:func:`inspect_input`); ``volden train`` and
``apply`` open the chunked ones, BigDataViewer datasets and N5, directly and lazily
(:func:`open_stored`). ND2 is not read: no ND2 writer nor a sample file ships with any package
that can be installed here, so a reader could not be tested (nd2's ``ND2File.write_tiff``
converts one to OME-TIFF, which ``volden ingest`` reads).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import VoldenError
from .bdv import find_xml, inspect_bdv
from .czi import inspect_czi
from .n5 import group_contents, inspect_n5, is_n5, read_attributes
from .source import Source, StoredSource
from .tiff import TIFF_SUFFIXES, inspect_tiff

MAGIC = {b"II*\0": "tiff", b"MM\0*": "tiff", b"II+\0": "tiff", b"MM\0+": "tiff", b"\x89HDF\r\n\x1a\n": "hdf5",
         b"ZISRAWFILE": "czi", b"<?xml": "xml"}
SUFFIXES = {**dict.fromkeys(TIFF_SUFFIXES, "tiff"), ".czi": "czi", ".nd2": "nd2"}
READ = "TIFF / OME-TIFF, a folder of TIFF slices, BigDataViewer XML (+ HDF5 or N5), N5, CZI"


def kind_of(path: Path) -> str:
    """'tiff', 'hdf5', 'czi', 'xml', 'nd2', 'n5' or 'folder' (of TIFF slices), or one line refusing it."""
    if path.is_dir():
        return "n5" if is_n5(path) else "folder"
    if not path.exists():
        raise VoldenError(f"{path}: no such file or directory")
    with open(path, "rb") as file:
        head = file.read(16)
    found = next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), None)
    if found is None and path.suffix.lower() in SUFFIXES:
        return SUFFIXES[path.suffix.lower()]  # a damaged one: its own reader says what is wrong
    if found is None and head.lstrip().startswith(b"<"):
        return "xml"  # an XML file without its declaration
    if found is None:
        raise VoldenError(f"{path}: not a format volden reads ({READ})")
    return found


def inspect_input(path: str | Path) -> Source:
    """Describe the image file ``path`` from its headers alone, or refuse it in one line."""
    path = Path(path)
    kind = kind_of(path)
    if kind in ("tiff", "folder"):
        return inspect_tiff(path)
    if kind == "czi":
        return inspect_czi(path)
    if kind == "nd2":
        raise VoldenError(f"{path}: volden does not read ND2 (no ND2 file could be had to test a reader); convert "
                          "it to OME-TIFF, e.g. with the nd2 package's ND2File.write_tiff, and ingest that")
    return _inspect_stored(path, kind)


def _inspect_stored(path: Path, kind: str) -> StoredSource:
    if kind == "xml":
        return inspect_bdv(path)
    if kind == "hdf5":
        return inspect_bdv(find_xml(path))
    if "dimensions" not in read_attributes(path):
        raise VoldenError(f"{path} is an N5 group, not a dataset: pass one of the datasets it holds "
                          f"({group_contents(path)}), or the BigDataViewer XML that names it")
    return inspect_n5(path)


def open_stored(path: str | Path, array: str | None = None) -> StoredSource | None:
    """A BigDataViewer dataset (its XML or HDF5) or an N5 dataset (``array`` inside an N5 group)
    to read lazily; None for anything else (zarr); one line for a format that must be ingested
    first."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and not is_n5(path)):
        return None
    kind = kind_of(path)
    if kind in ("tiff", "czi", "nd2"):
        raise VoldenError(f"{path} is a {kind.upper()} file: convert it first with volden ingest {path} OUT.zarr "
                          "(train and apply read zarr, N5 and BigDataViewer datasets directly)")
    if kind == "n5" and array:
        if not is_n5(path / array):
            raise VoldenError(f"{path} has no N5 dataset {array!r}; it holds: {group_contents(path)}")
        return inspect_n5(path / array)
    if array:
        raise VoldenError(f"{path} is a BigDataViewer dataset: drop --array {array} (pick a setup with --channel, "
                          "a time point with --timepoint)")
    return _inspect_stored(path, kind)
