"""``volden ingest``: TIFF stacks and folders of 2D slices to OME-Zarr, one plane at a time.

Bad input through the real command (one line, nothing written) is in ``test_cli_errors.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from cli_helpers import run_with_peak_rss, volden_command
from conftest import REAL_DATA
from volden.errors import VoldenError
from volden.formats.source import Calibration
from volden.formats.units import length_unit
from volden.ingest import ingest_image, output_layout, resolve_calibration
from volden.volume import open_image



def _random(shape: tuple[int, ...], dtype=np.uint16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(dtype)


def _stored(output: Path) -> np.ndarray:
    return np.asarray(open_image(output).data)


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_imagej_hyperstack_keeps_axes_voxel_size_and_channel_names(tmp_path, version) -> None:
    # 70 planes: two full z-slabs of 32 and a short one; the channels interleave plane by plane.
    data = _random((70, 2, 20, 300))
    tifffile.imwrite(tmp_path / "stack.tif", data, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "um", "Labels": ["GFP", "RFP"]})
    done = ingest_image(tmp_path / "stack.tif", tmp_path / "out.zarr", ome_version=version)

    image = open_image(tmp_path / "out.zarr")
    assert image.meta.axes == ("c", "z", "y", "x")
    assert image.meta.voxel_size == (2.0, 0.25, 0.25)
    assert image.meta.unit == "micrometer"
    assert [c["label"] for c in image.meta.channels] == ["GFP", "RFP"]
    assert image.meta.channels[1]["window"]["end"] == data[:, 1].max()
    np.testing.assert_array_equal(_stored(tmp_path / "out.zarr"), np.moveaxis(data, 1, 0))
    assert done.voxel_note == "from the TIFF metadata"

    array = zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")
    assert array.metadata.zarr_format == (3 if version == "0.5" else 2)
    assert array.chunks == (1, 32, 20, 256)
    assert array.shards == ((1, 32, 20, 512) if version == "0.5" else None)  # a file per row of chunks
    attrs = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["volden"]
    assert attrs["status"] == "complete"
    assert attrs["ingest"]["kind"] == "stack" and attrs["ingest"]["tiff_axes"] == "ZCYX"
    assert attrs["ingest"]["input"] == str((tmp_path / "stack.tif").resolve())


def test_ome_tiff_physical_sizes_in_one_unit(tmp_path) -> None:
    data = _random((2, 3, 2, 16, 20))
    tifffile.imwrite(tmp_path / "stack.ome.tif", data, ome=True, metadata={
        "axes": "TZCYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1500, "PhysicalSizeZUnit": "nm",
        "Channel": {"Name": ["DAPI", "GFP"]},
    })
    ingest_image(tmp_path / "stack.ome.tif", tmp_path / "um.zarr")
    ingest_image(tmp_path / "stack.ome.tif", tmp_path / "nm.zarr", unit="nm")

    image = open_image(tmp_path / "um.zarr")
    assert image.meta.axes == ("t", "c", "z", "y", "x")
    assert image.meta.voxel_size == pytest.approx((1.5, 0.3, 0.3))
    assert image.meta.unit == "micrometer"
    assert [c["label"] for c in image.meta.channels] == ["DAPI", "GFP"]
    np.testing.assert_array_equal(_stored(tmp_path / "um.zarr"), np.moveaxis(data, 2, 1))
    converted = open_image(tmp_path / "nm.zarr").meta
    assert converted.voxel_size == pytest.approx((1500, 300, 300)) and converted.unit == "nanometer"


def test_folder_of_slices_in_natural_order(tmp_path) -> None:
    folder = tmp_path / "slices"
    folder.mkdir()
    planes = _random((12, 24, 40))
    for z, plane in enumerate(planes, 1):  # slice_2 must come before slice_10
        tifffile.imwrite(folder / f"slice_{z}.tif", plane, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"})
    (folder / "notes.txt").write_text("not a slice\n")
    (folder / "._slice_1.tif").write_bytes(b"macOS resource fork, not a TIFF")

    done = ingest_image(folder, tmp_path / "out.zarr")
    image = open_image(tmp_path / "out.zarr")
    assert image.meta.axes == ("z", "y", "x")
    assert image.meta.voxel_size == (1.0, 0.5, 0.5) and image.meta.unit == "micrometer"
    assert done.voxel_note.startswith("z not in the TIFF metadata, set to 1")
    np.testing.assert_array_equal(_stored(tmp_path / "out.zarr"), planes)
    assert image.source.shards is None  # one slab is one chunk: nothing to group

    done = ingest_image(folder, tmp_path / "given.zarr", voxel_size=(3.0, 0.5, 0.5))
    assert open_image(tmp_path / "given.zarr").meta.voxel_size == (3.0, 0.5, 0.5)
    assert done.voxel_note == "from --voxel-size" and done.source.kind == "slices"


@pytest.mark.parametrize("metadata", [None, {}], ids=["pages", "shaped"])
def test_plain_multipage_tiff_counts_its_pages_as_z(tmp_path, metadata) -> None:
    data = _random((5, 16, 16), np.float32)
    tifffile.imwrite(tmp_path / "pages.tif", data, metadata=metadata)
    done = ingest_image(tmp_path / "pages.tif", tmp_path / "out.zarr")
    image = open_image(tmp_path / "out.zarr")
    assert image.meta.axes == ("z", "y", "x") and image.meta.unit is None
    assert done.voxel_note == "not in the TIFF metadata: pass --voxel-size Z,Y,X"
    np.testing.assert_array_equal(_stored(tmp_path / "out.zarr"), data)


@pytest.mark.parametrize("write, shape, channel_axis", [
    # ImageJ over 4 GB: one page header, every plane raw after it
    pytest.param(dict(imagej=True, truncate=True, metadata={"axes": "ZCYX"}), (6, 3, 16, 20), 1, id="truncated-imagej"),
    # a page holds (y, x, sample): the samples are channels
    pytest.param(dict(photometric="rgb"), (6, 16, 20, 3), 3, id="rgb"),
    pytest.param(dict(photometric="rgb", planarconfig="separate"), (6, 3, 16, 20), 1, id="rgb-planar"),
])
def test_stack_layouts_are_read_plane_by_plane(tmp_path, write, shape, channel_axis) -> None:
    data = _random(shape, np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", data, **write)
    ingest_image(tmp_path / "stack.tif", tmp_path / "out.zarr")
    assert open_image(tmp_path / "out.zarr").meta.axes == ("c", "z", "y", "x")
    np.testing.assert_array_equal(_stored(tmp_path / "out.zarr"), np.moveaxis(data, channel_axis, 0))


def test_unfinished_output_is_not_an_image_and_a_failed_one_is_removed(tmp_path, monkeypatch) -> None:
    tifffile.imwrite(tmp_path / "stack.tif", _random((40, 16, 16)))
    output, seen = tmp_path / "out.zarr", []

    def look(done: int, total: int) -> None:
        if done == 33:  # the first slab is written
            attrs = zarr.open_group(str(output), mode="r").attrs.asdict()
            seen.append((attrs["volden"]["status"], "ome" in attrs or "multiscales" in attrs))
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        ingest_image(tmp_path / "stack.tif", output, progress=look)
    assert seen == [("running", False)]
    assert not output.exists()


def test_output_layout() -> None:
    assert output_layout((2, 70, 1000, 2000), "0.5") == ((1, 32, 256, 256), (1, 32, 256, 2048))
    assert output_layout((2, 70, 1000, 2000), "0.4") == ((1, 32, 256, 256), None)
    assert output_layout((10, 64, 64), "0.5") == ((10, 64, 64), None)


def test_units_and_voxel_sizes() -> None:
    assert [length_unit(u) for u in ("um", "\\u00B5m", "µm", "micron", "NM", "pixel", None)] == [
        "micrometer", "micrometer", "micrometer", "micrometer", "nanometer", None, None]
    found = Calibration((None, 0.25, 0.25), "micrometer")
    assert resolve_calibration(found, None, "nanometer")[:2] == ((1.0, 250.0, 250.0), "nanometer")
    assert resolve_calibration(found, (2, 1, 1), None)[:2] == ((2.0, 1.0, 1.0), "micrometer")
    with pytest.raises(VoldenError, match="--unit furlong"):
        resolve_calibration(found, None, "furlong")
    with pytest.raises(VoldenError, match="positive"):
        resolve_calibration(found, (1, float("nan"), 1), None)


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="the real TIFF volumes are not here")
@pytest.mark.parametrize("name, axes, voxel_size", [
    ("neubias_xyzc_dna_confocal_widefield.tif", ("c", "z", "y", "x"), (0.4994, 0.5119, 0.5119)),
    ("cellfinder_stpt_signal_crop.tif", ("z", "y", "x"), (5.0, 2.0, 2.0)),
])
def test_real_tiff_volumes(tmp_path, name, axes, voxel_size) -> None:
    ingest_image(REAL_DATA / name, tmp_path / "out.zarr")
    image = open_image(tmp_path / "out.zarr")
    assert image.meta.axes == axes
    assert image.meta.voxel_size == pytest.approx(voxel_size, rel=1e-3) and image.meta.unit == "micrometer"
    expected = tifffile.imread(REAL_DATA / name)  # z, (c,) y, x
    expected = np.moveaxis(expected, 1, 0) if "c" in axes else expected
    np.testing.assert_array_equal(_stored(tmp_path / "out.zarr"), expected)


def test_ingest_does_not_import_torch(tmp_path) -> None:
    """The command starts fast and small: torch (hundreds of MB) stays out of it."""
    tifffile.imwrite(tmp_path / "stack.tif", _random((6, 8, 8)))
    check = "import sys; from volden.cli import main; main()\nassert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", check, "ingest", "stack.tif", "out.zarr"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_ingest_memory_stays_far_below_the_stack(tmp_path) -> None:
    """The real command on 630 MB of slices peaks at a small fraction of that (a few 16 MB slabs)."""
    folder = tmp_path / "slices"
    folder.mkdir()
    y, x = np.mgrid[0:512, 0:512]
    base = ((3 * y + x) % 4000).astype(np.uint16)
    count = 1200
    for z in range(count):
        tifffile.imwrite(folder / f"plane_{z}.tif", base + np.uint16(z))
    stack_bytes = count * base.nbytes

    status, log, peak = run_with_peak_rss(volden_command("ingest", str(folder), "out.zarr"), tmp_path, timeout=120)
    assert status == 0, log
    assert "wrote out.zarr: 1200x512x512 (z,y,x) uint16" in log
    print(f"peak RSS {peak / 2**20:.0f} MiB for a {stack_bytes / 2**20:.0f} MiB stack")
    assert peak < stack_bytes / 3
    stored = open_image(tmp_path / "out.zarr").data
    for z in (0, 700, count - 1):
        np.testing.assert_array_equal(np.asarray(stored[z]), base + np.uint16(z))
