"""Small files in the layouts BigDataViewer / BigStitcher, N5 tools and ZEN write, through the
formats' own writers (h5py, tensorstore, Zeiss's pylibCZIrw), for the tests and benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import tensorstore as ts
from pylibCZIrw import czi as pyczi


def bdv_xml(loader: str, container: str, setups: list[dict], timepoints: int, size_xyz: tuple[int, int, int],
            voxel_xyz: tuple[float, float, float], unit: str = "µm") -> str:
    """A SpimData XML: ``setups`` give each setup's attributes (channel, angle, ...) as ids."""
    kinds = sorted({kind for setup in setups for kind in setup})
    views = "".join(
        f"<ViewSetup><id>{number}</id><name>setup {number}</name><size>{' '.join(map(str, size_xyz))}</size>"
        f"<voxelSize><unit>{unit}</unit><size>{' '.join(map(str, voxel_xyz))}</size></voxelSize><attributes>"
        + "".join(f"<{kind}>{setup.get(kind, 0)}</{kind}>" for kind in kinds) + "</attributes></ViewSetup>"
        for number, setup in enumerate(setups))
    names = {"channel": {0: "488", 1: "561"}, "angle": {0: "0", 1: "90"}}
    attributes = "".join(
        f'<Attributes name="{kind}">' + "".join(
            f"<{kind.capitalize()}><id>{i}</id><name>{names.get(kind, {}).get(i, i)}</name></{kind.capitalize()}>"
            for i in sorted({setup.get(kind, 0) for setup in setups})) + "</Attributes>"
        for kind in kinds)
    tag = "hdf5" if loader == "bdv.hdf5" else "n5"
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<SpimData version="0.2"><BasePath type="relative">.</BasePath>'
            f'<SequenceDescription><ImageLoader format="{loader}"><{tag} type="relative">{container}</{tag}>'
            f"</ImageLoader><ViewSetups>{views}{attributes}</ViewSetups>"
            f'<Timepoints type="range"><first>0</first><last>{timepoints - 1}</last></Timepoints>'
            f"</SequenceDescription></SpimData>")


def write_bdv_hdf5(folder: Path, data: np.ndarray, setups: list[dict], voxel_xyz, compression: str | None = None,
                   blocks: tuple[int, int, int] = (4, 16, 16), coarser: bool = True) -> Path:
    """``data`` (t, setup, z, y, x) as BDV's HDF5 writer lays it out: int16 cells in ``blocks``
    (z, y, x), with (``coarser``) a level s1 that must not be read, resolutions and subdivisions
    per setup."""
    times, count, *zyx = data.shape
    chunks = tuple(min(c, n) for c, n in zip(blocks, zyx))
    with h5py.File(folder / "dataset.h5", "w") as h5:
        for s in range(count):
            h5[f"s{s:02d}/resolutions"] = np.array([[1, 1, 1], [2, 2, 1]][:1 + coarser], np.float64)
            h5[f"s{s:02d}/subdivisions"] = np.array([chunks[::-1]] * (1 + coarser), np.int32)
            for t in range(times):
                h5.create_dataset(f"t{t:05d}/s{s:02d}/0/cells", data=data[t, s].view(np.int16), chunks=chunks,
                                  compression=compression)
                if coarser:
                    h5[f"t{t:05d}/s{s:02d}/1/cells"] = data[t, s, :, ::2, ::2].view(np.int16) // 2
    xml = folder / "dataset.xml"
    xml.write_text(bdv_xml("bdv.hdf5", "dataset.h5", setups, times, tuple(reversed(zyx)), voxel_xyz))
    return xml


def write_n5(folder: Path, data: np.ndarray, block: tuple[int, ...], attributes: dict | None = None) -> None:
    """An N5 dataset through tensorstore, its dimensions fastest first as the Java writers list them."""
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(folder)}, "create": True,
                     "metadata": {"dimensions": list(reversed(data.shape)), "blockSize": list(reversed(block)),
                                  "dataType": str(data.dtype), "compression": {"type": "gzip"}}}).result()
    store.T[...] = data
    if attributes:
        path = folder / "attributes.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **attributes}))


def write_bdv_n5(folder: Path, data: np.ndarray, setups: list[dict], voxel_xyz) -> Path:
    times, count, *zyx = data.shape
    for s in range(count):
        for t in range(times):
            write_n5(folder / "dataset.n5" / f"setup{s}" / f"timepoint{t}" / "s0", data[t, s], (8, 16, 16))
            write_n5(folder / "dataset.n5" / f"setup{s}" / f"timepoint{t}" / "s1", data[t, s, :, ::2, ::2] // 2,
                     (8, 16, 16))
        (folder / "dataset.n5" / f"setup{s}" / "attributes.json").write_text(
            json.dumps({"downsamplingFactors": [[1, 1, 1], [2, 2, 1]], "dataType": "uint16"}))
    (folder / "dataset.n5" / "attributes.json").write_text(json.dumps({"n5": "4.0.0"}))
    xml = folder / "dataset.xml"
    xml.write_text(bdv_xml("bdv.n5", "dataset.n5", setups, times, tuple(reversed(zyx)), voxel_xyz))
    return xml


def write_czi(path: Path, data: np.ndarray, names: list[str], scale_zyx_m: tuple[float, float, float]) -> None:
    """``data`` (t, c, z, y, x) through pylibCZIrw, with channel names and scaling in metres."""
    with pyczi.create_czi(str(path)) as czi:
        for t, c, z in np.ndindex(*data.shape[:3]):
            czi.write(data[t, c, z][..., None], plane={"T": t, "C": c, "Z": z})
        czi.write_metadata("volden test", channel_names=dict(enumerate(names)), scale_x=scale_zyx_m[2],
                           scale_y=scale_zyx_m[1], scale_z=scale_zyx_m[0])
