"""Formats microscopes write: BigDataViewer XML with HDF5 or N5, plain N5, CZI.

Each file is written here with the format's own writer (h5py in BDV's layout, tensorstore, Zeiss's
pylibCZIrw) and ingested through the real command; the output must hold the same voxels, axes,
voxel size and channel names, and be read by ome-zarr-py with the voxel size in its
coordinateTransformations. ``volden train`` and ``apply`` open N5 and BDV HDF5 directly; a
damaged or unknown file is one line, exit 1, nothing written.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from cli_helpers import tree_digest, volden_command
from format_writers import write_bdv_hdf5, write_bdv_n5, write_czi, write_n5
from volden.formats.source import dask_chunks
from volden.inference import denoise
from volden.model import load_model
from volden.volume import open_image

TIMEOUT_S = 300
BLOCK, HALO = (8, 32, 32), (4, 8, 8)


def volden(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(volden_command(*args), cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL)


def ingested(work: Path, input_name: str, *extra: str) -> tuple[np.ndarray, object]:
    """Ingest through the command; the stored voxels and the image's metadata."""
    proc = volden("ingest", input_name, "out.zarr", *extra, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = open_image(work / "out.zarr")
    return np.asarray(image.data), image.meta


def ome_zarr_scale(path: Path) -> list[float]:
    """The level-0 scale ome-zarr-py reads from the image's coordinateTransformations."""
    nodes = list(Reader(parse_url(str(path)))())
    transforms = nodes[0].metadata["coordinateTransformations"][0]
    return next(t["scale"] for t in transforms if t["type"] == "scale")


def volume(shape: tuple[int, ...], seed: int, high: int = 60000) -> np.ndarray:
    """uint16 voxels reaching above 32767, where BDV's int16 storage would show as negative."""
    return np.random.default_rng(seed).integers(0, high, shape).astype(np.uint16)


# --------------------------------------------------------------------------------------------
# Ingest.


def test_bdv_hdf5_setups_and_time_points_with_voxel_size_and_channel_names(tmp_path) -> None:
    data = volume((2, 2, 40, 24, 36), seed=1)  # 40 planes: a slab of 32 and a short one
    write_bdv_hdf5(tmp_path, data, [{"channel": 0}, {"channel": 1}], (0.5, 0.5, 2.0))
    stored, meta = ingested(tmp_path, "dataset.xml", "--ome-version", "0.4")

    np.testing.assert_array_equal(stored, data)  # s0, as uint16 (stored as int16)
    assert stored.dtype == np.uint16
    assert meta.axes == ("t", "c", "z", "y", "x")
    assert meta.voxel_size == (2.0, 0.5, 0.5) and meta.unit == "micrometer"
    assert [c["label"] for c in meta.channels] == ["488", "561"]
    assert ome_zarr_scale(tmp_path / "out.zarr") == [1.0, 1.0, 2.0, 0.5, 0.5]
    attrs = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["volden"]["ingest"]
    assert attrs["format"] == "BDV HDF5" and attrs["setups"] == [0, 1] and attrs["timepoints"] == [0, 1]


def test_bdv_hdf5_given_by_its_h5_file_through_the_xml_beside_it(tmp_path) -> None:
    data = volume((1, 1, 6, 16, 20), seed=2)
    write_bdv_hdf5(tmp_path, data, [{"channel": 0}], (0.25, 0.25, 1.0), compression="gzip")
    stored, meta = ingested(tmp_path, "dataset.h5")
    np.testing.assert_array_equal(stored, data[0, 0])
    assert meta.axes == ("z", "y", "x") and meta.voxel_size == (1.0, 0.25, 0.25) and meta.channels is None


def test_bdv_n5_angles_named_by_their_attributes(tmp_path) -> None:
    data = volume((1, 2, 10, 20, 24), seed=3)
    write_bdv_n5(tmp_path, data, [{"channel": 0, "angle": 0}, {"channel": 0, "angle": 1}], (0.4, 0.4, 1.6))
    stored, meta = ingested(tmp_path, "dataset.xml")

    np.testing.assert_array_equal(stored, data[0])
    assert meta.axes == ("c", "z", "y", "x")
    assert meta.voxel_size == pytest.approx((1.6, 0.4, 0.4)) and meta.unit == "micrometer"
    assert [c["label"] for c in meta.channels] == ["angle 0", "angle 90"]
    assert ome_zarr_scale(tmp_path / "out.zarr") == pytest.approx([1.0, 1.6, 0.4, 0.4])


@pytest.mark.parametrize("layout", ["resolution", "pixelResolution"])
def test_plain_n5_dataset_reversed_to_zyx_with_its_resolution(tmp_path, layout) -> None:
    data = volume((2, 12, 20, 28), seed=4)  # c, z, y, x
    attributes = ({"resolution": [0.3, 0.3, 1.5, 1], "units": ["um", "um", "um", ""]} if layout == "resolution"
                  else {"pixelResolution": {"dimensions": [300, 300, 1500], "unit": "nm"}})
    write_n5(tmp_path / "raw.n5", data, (1, 8, 16, 16), attributes)
    stored, meta = ingested(tmp_path, "raw.n5")

    np.testing.assert_array_equal(stored, data)
    assert meta.axes == ("c", "z", "y", "x")
    expected = (1.5, 0.3, 0.3) if layout == "resolution" else (1500.0, 300.0, 300.0)
    assert meta.voxel_size == pytest.approx(expected)
    assert meta.unit == ("micrometer" if layout == "resolution" else "nanometer")
    assert ome_zarr_scale(tmp_path / "out.zarr") == pytest.approx([1.0, *expected])


def test_czi_time_points_channels_and_scaling(tmp_path) -> None:
    data = volume((2, 2, 5, 18, 22), seed=5)
    write_czi(tmp_path / "stack.czi", data, ["DAPI", "GFP"], (1e-6, 0.2e-6, 0.2e-6))
    stored, meta = ingested(tmp_path, "stack.czi")

    np.testing.assert_array_equal(stored, data)
    assert meta.axes == ("t", "c", "z", "y", "x")
    assert meta.voxel_size == pytest.approx((1.0, 0.2, 0.2)) and meta.unit == "micrometer"
    assert [c["label"] for c in meta.channels] == ["DAPI", "GFP"]
    assert meta.channels[1]["window"]["end"] == data[:, 1].max()
    assert ome_zarr_scale(tmp_path / "out.zarr") == pytest.approx([1.0, 1.0, 1.0, 0.2, 0.2])


# --------------------------------------------------------------------------------------------
# Train and apply straight from N5 and BDV HDF5.


@pytest.mark.parametrize("kind", ["bdv-hdf5", "n5"])
def test_train_and_apply_read_the_store_directly(tmp_path, kind) -> None:
    data = volume((16, 48, 48), seed=6, high=4000)
    if kind == "n5":
        write_n5(tmp_path / "raw.n5", data, (8, 16, 16), {"resolution": [0.5, 0.5, 2.0], "units": ["um"] * 3})
        source = "raw.n5"
    else:
        write_bdv_hdf5(tmp_path, data[None, None], [{"channel": 0}], (0.5, 0.5, 2.0))
        source = "dataset.xml"
    before = tree_digest(tmp_path)
    trained = volden("train", source, "-o", "model", "--steps", "2", "--patch", "8,32,32", "--batch", "2",
                     "--width", "4", "--device", "cpu", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    applied = volden("apply", "model", source, "out.zarr", "--block", ",".join(map(str, BLOCK)),
                     "--halo", ",".join(map(str, HALO)), "--device", "cpu", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr[-3000:]

    expected = denoise(da.from_array(data), load_model(tmp_path / "model"), block=BLOCK, halo=HALO, device="cpu")
    output = open_image(tmp_path / "out.zarr")
    np.testing.assert_array_equal(np.asarray(output.data), expected.compute())
    assert output.meta.voxel_size == (2.0, 0.5, 0.5) and output.meta.unit == "micrometer"
    assert ome_zarr_scale(tmp_path / "out.zarr") == [2.0, 0.5, 0.5]
    after = tree_digest(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # the input is untouched


def test_lazy_image_of_a_bdv_dataset_reads_only_what_is_asked(tmp_path) -> None:
    data = volume((3, 2, 20, 40, 40), seed=7)
    write_bdv_hdf5(tmp_path, data, [{"channel": 0}, {"channel": 1}], (0.5, 0.5, 2.0))
    image = open_image(tmp_path / "dataset.xml")
    assert image.meta.axes == ("t", "c", "z", "y", "x") and image.shape == data.shape
    assert image.data.chunks == ((1, 1, 1), (1, 1), (20,), (40,), (40,))
    assert dask_chunks((2, 900, 2048, 2048), (1, 4, 16, 16)) == (1, 32, 256, 256)  # whole stored chunks
    picked = image.volume(timepoint=2, channel=1)
    np.testing.assert_array_equal(np.asarray(picked.data[3:9, 5:30, 7:11]), data[2, 1, 3:9, 5:30, 7:11])
    np.testing.assert_array_equal(picked.source[(slice(0, 4), slice(0, 16), slice(16, 32))], data[2, 1, :4, :16, 16:32])
    assert picked.voxel_size == (2.0, 0.5, 0.5)


# --------------------------------------------------------------------------------------------
# Bad input: one line, exit 1, nothing written.


def _garbage_xml(folder: Path) -> str:
    (folder / "dataset.xml").write_text("<SpimData><SequenceDescription>")
    return "dataset.xml"


def _xml_naming_missing_h5(folder: Path) -> str:
    write_bdv_hdf5(folder, volume((1, 1, 4, 8, 8), seed=0), [{"channel": 0}], (1, 1, 1))
    (folder / "dataset.h5").rename(folder / "moved.h5")
    return "dataset.xml"


def _damaged_h5_chunk(folder: Path) -> str:
    write_bdv_hdf5(folder, volume((1, 1, 40, 32, 32), seed=0), [{"channel": 0}], (1, 1, 1), compression="gzip")
    with h5py.File(folder / "dataset.h5", "r") as h5:
        offset = h5["t00000/s00/0/cells"].id.get_chunk_info_by_coord((36, 0, 0)).byte_offset  # in the second slab
    raw = bytearray((folder / "dataset.h5").read_bytes())
    raw[offset:offset + 64] = bytes(64)
    (folder / "dataset.h5").write_bytes(bytes(raw))
    return "dataset.xml"


def _lone_h5(folder: Path) -> str:
    with h5py.File(folder / "data.h5", "w") as h5:
        h5["volume"] = np.zeros((4, 8, 8), np.uint16)
    return "data.h5"


def _garbage_n5_attributes(folder: Path) -> str:
    (folder / "raw.n5").mkdir()
    (folder / "raw.n5" / "attributes.json").write_text('{"dimensions": [8, 8')
    return "raw.n5"


def _damaged_n5_block(folder: Path) -> str:
    write_n5(folder / "raw.n5", volume((40, 16, 16), seed=0), (8, 16, 16))
    (folder / "raw.n5" / "0" / "0" / "4").write_bytes(b"\0\0\0\3broken")
    return "raw.n5"


def _n5_group(folder: Path) -> str:
    write_n5(folder / "group.n5" / "raw", volume((4, 8, 8), seed=0), (4, 8, 8))
    (folder / "group.n5" / "attributes.json").write_text(json.dumps({"n5": "4.0.0"}))
    return "group.n5"


def _garbage_czi(folder: Path) -> str:
    (folder / "stack.czi").write_bytes(b"ZISRAWFILE" + bytes(200))
    return "stack.czi"


def _2d_czi(folder: Path) -> str:
    write_czi(folder / "plane.czi", volume((1, 1, 1, 8, 8), seed=0), ["DAPI"], (1e-6, 1e-6, 1e-6))
    return "plane.czi"


def _nd2(folder: Path) -> str:
    (folder / "stack.nd2").write_bytes(bytes(64))
    return "stack.nd2"


def _unknown(folder: Path) -> str:
    (folder / "data.bin").write_bytes(np.random.default_rng(0).bytes(256))
    return "data.bin"


BAD = {
    "garbage-xml": (_garbage_xml, ("dataset.xml", "not a BigDataViewer XML")),
    "xml-naming-missing-h5": (_xml_naming_missing_h5, ("dataset.h5", "does not exist")),
    "damaged-h5-chunk": (_damaged_h5_chunk, ("t00000/s00/0/cells", "cannot be read at z 32-40")),
    "lone-h5": (_lone_h5, ("data.h5", "BigDataViewer XML", ".xml")),
    "garbage-n5-attributes": (_garbage_n5_attributes, ("attributes.json", "not readable N5 attributes")),
    "damaged-n5-block": (_damaged_n5_block, ("raw.n5", "cannot be read at z 32-40")),
    "n5-group": (_n5_group, ("N5 group", "raw/")),
    "garbage-czi": (_garbage_czi, ("stack.czi", "cannot read it as a CZI file")),
    "2d-czi": (_2d_czi, ("2D image", "3D stack")),
    "nd2": (_nd2, ("ND2", "OME-TIFF")),
    "unknown": (_unknown, ("data.bin", "not a format volden reads")),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_nothing_is_written(tmp_path, case) -> None:
    make, phrases = BAD[case]
    name = make(tmp_path)
    before = tree_digest(tmp_path)
    proc = volden("ingest", name, "out.zarr", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("volden: error: "), proc.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert not (tmp_path / "out.zarr").exists()
    assert tree_digest(tmp_path) == before
