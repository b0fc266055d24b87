"""Opening volumes lazily from zarr v2/v3 arrays, groups and OME-Zarr images; OME metadata."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from volden import ome
from volden.errors import VoldenError
from volden.volume import open_image, open_volume

DATA = np.arange(6 * 10 * 12, dtype=np.uint16).reshape(6, 10, 12)


def _array(path, data=DATA, chunks=(3, 5, 6), zarr_format=3):
    array = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=zarr_format)
    array[:] = data
    return array


def _ome_image(path, version="0.5", voxel_size=(2.0, 0.5, 0.5), unit="micrometer"):
    array = ome.create_image(path, DATA.shape, (3, 5, 6), DATA.dtype, {"model": "test"}, version=version)
    array[:] = DATA
    ome.finalize_image(path, ome.ImageMeta.spatial(voxel_size, unit, "denoised"), version=version)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_array(tmp_path, zarr_format):
    path = tmp_path / "raw.zarr"
    _array(path, zarr_format=zarr_format)
    volume = open_volume(path)
    assert isinstance(volume.data, da.Array)
    assert volume.shape == DATA.shape
    assert volume.chunks == (3, 5, 6)
    assert volume.voxel_size is None
    np.testing.assert_array_equal(volume.data.compute(), DATA)
    assert volume.data.dtype == np.uint16


def test_open_is_lazy(tmp_path):
    """Only metadata is read at open: data written to the store afterwards is what compute sees."""
    path = tmp_path / "raw.zarr"
    _array(path)
    volume = open_volume(path)
    assert isinstance(volume.data, da.Array)
    zarr.open_array(str(path), mode="r+")[:] = DATA * 2
    np.testing.assert_array_equal(volume.data.compute(), DATA * 2)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_named_array_in_group(tmp_path, zarr_format):
    path = tmp_path / "group.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    group.create_array("raw", shape=DATA.shape, chunks=(6, 10, 12), dtype=DATA.dtype)[:] = DATA
    group.create_array("other", shape=(4, 4, 4), chunks=(4, 4, 4), dtype="f4")
    volume = open_volume(path, array="raw")
    np.testing.assert_array_equal(volume.data.compute(), DATA)
    assert volume.array_path == "raw"


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_ome_zarr_image(tmp_path, version):
    path = tmp_path / "image.ome.zarr"
    _ome_image(path, version=version)
    volume = open_volume(path)
    assert volume.voxel_size == (2.0, 0.5, 0.5)
    assert volume.unit == "micrometer"
    assert volume.array_path == "0"
    np.testing.assert_array_equal(volume.data.compute(), DATA)
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == (3 if version == "0.5" else 2)
    assert group.attrs["volden"]["status"] == "complete"


def test_ome_image_inside_a_group_via_array(tmp_path):
    path = tmp_path / "container.zarr"
    zarr.open_group(str(path), mode="w")
    _ome_image(path / "denoised", voxel_size=(3.0, 1.0, 0.25))
    volume = open_volume(path, array="denoised")
    assert volume.voxel_size == (3.0, 1.0, 0.25)
    assert volume.array_path == "denoised/0"
    np.testing.assert_array_equal(volume.data.compute(), DATA)


def test_unfinished_output_is_not_an_image(tmp_path):
    """An output store whose run did not complete has no multiscales and is refused."""
    path = tmp_path / "out.zarr"
    ome.create_image(path, DATA.shape, (3, 5, 6), DATA.dtype, {})
    assert zarr.open_group(str(path), mode="r").attrs["volden"]["status"] == "running"
    with pytest.raises(VoldenError, match="group, not an image"):
        open_volume(path)


def test_create_image_refuses_to_overwrite(tmp_path):
    path = tmp_path / "out.zarr"
    ome.create_image(path, DATA.shape, (3, 5, 6), DATA.dtype, {})
    with pytest.raises(Exception):
        ome.create_image(path, DATA.shape, (3, 5, 6), DATA.dtype, {})


def test_missing_path(tmp_path):
    with pytest.raises(VoldenError, match="no such file"):
        open_volume(tmp_path / "absent.zarr")


def test_directory_that_is_not_zarr(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.txt").write_text("not zarr")
    with pytest.raises(VoldenError, match="not a zarr"):
        open_volume(folder)


@pytest.mark.parametrize("shape", [(5, 6), (2, 2, 2, 4, 5, 6)])
def test_2d_and_6d_arrays_are_refused_with_a_hint(tmp_path, shape):
    path = tmp_path / "odd.zarr"
    zarr.create_array(store=str(path), shape=shape, chunks=shape, dtype="u2")
    with pytest.raises(VoldenError) as info:
        open_volume(path)
    assert f"{len(shape)}D" in str(info.value) and "--array" in str(info.value)


def _multichannel(path, version="0.5", axes=("c", "z", "y", "x")):
    data = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)
    meta = ome.ImageMeta(axes, (1.0, 2.0, 0.5, 0.5), (None, "micrometer", "micrometer", "micrometer"),
                         ({"label": "DAPI"}, {"label": "GFP"}), "cells")
    array = ome.create_image(path, data.shape, (1, 3, 4, 5), data.dtype, {}, version=version, axes=axes)
    array[:] = data
    ome.finalize_image(path, meta, version=version)
    return data


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_multichannel_ome_image_gives_one_volume_per_channel(tmp_path, version):
    data = _multichannel(tmp_path / "c.zarr", version)
    image = open_image(tmp_path / "c.zarr")
    assert image.meta.axes == ("c", "z", "y", "x") and (image.channels, image.timepoints) == (2, 1)
    assert image.meta.voxel_size == (2.0, 0.5, 0.5) and image.meta.unit == "micrometer"
    assert [c["label"] for c in image.meta.channels] == ["DAPI", "GFP"]
    volume = image.volume(0, 1)
    assert (volume.channel, volume.index, volume.voxel_size) == (1, (1,), (2.0, 0.5, 0.5))
    np.testing.assert_array_equal(volume.data.compute(), data[1])
    np.testing.assert_array_equal(volume.source[1:3, :, 2:4], data[1, 1:3, :, 2:4])
    assert open_volume(tmp_path / "c.zarr", channel=0).shape == (3, 4, 5)


def test_multichannel_needs_a_channel_and_one_in_range(tmp_path):
    _multichannel(tmp_path / "c.zarr")
    with pytest.raises(VoldenError, match="has 2 channels: pick one with --channel"):
        open_volume(tmp_path / "c.zarr")
    with pytest.raises(VoldenError, match=r"has 2 channels \(0-1\): --channel 2 is out of range"):
        open_image(tmp_path / "c.zarr").select(channels=[2])


def test_unknown_ome_axes_are_refused(tmp_path):
    path = tmp_path / "odd.zarr"
    _multichannel(path)
    group = zarr.open_group(str(path), mode="r+")
    attrs = group.attrs.asdict()
    attrs["ome"]["multiscales"][0]["axes"][0] = {"name": "lambda", "type": "spectral"}
    group.attrs.update(attrs)
    with pytest.raises(VoldenError, match=r"axes \(lambda, z, y, x\)"):
        open_image(path)


def test_plain_arrays_take_their_axes_from_dimension_names_or_their_rank(tmp_path):
    named = zarr.create_array(str(tmp_path / "n.zarr"), shape=(2, 3, 4, 5), chunks=(1, 3, 4, 5), dtype="u2",
                              dimension_names=["t", "z", "y", "x"])
    assert open_image(tmp_path / "n.zarr").meta.axes == ("t", "z", "y", "x")
    assert open_image(tmp_path / "n.zarr").timepoints == 2 and named.ndim == 4
    zarr.create_array(str(tmp_path / "p.zarr"), shape=(2, 2, 3, 4, 5), chunks=(1, 1, 3, 4, 5), dtype="u2")
    assert open_image(tmp_path / "p.zarr").meta.axes == ("t", "c", "z", "y", "x")


def test_group_without_array_lists_its_arrays(tmp_path):
    path = tmp_path / "group.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("raw", shape=(4, 4, 4), chunks=(4, 4, 4), dtype="u2")
    group.create_array("labels", shape=(4, 4, 4), chunks=(4, 4, 4), dtype="u2")
    with pytest.raises(VoldenError) as info:
        open_volume(path)
    message = str(info.value)
    assert "--array" in message and "raw" in message and "labels" in message


def test_unknown_array_name(tmp_path):
    path = tmp_path / "group.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("raw", shape=(4, 4, 4), chunks=(4, 4, 4), dtype="u2")
    with pytest.raises(VoldenError) as info:
        open_volume(path, array="rwa")
    assert "rwa" in str(info.value) and "raw" in str(info.value)


def test_array_option_on_an_array(tmp_path):
    path = tmp_path / "raw.zarr"
    _array(path)
    with pytest.raises(VoldenError, match="--array"):
        open_volume(path, array="raw")


def test_ome_metadata_helpers():
    image = ome.ImageMeta.spatial((2.0, 0.5, 0.5), "micrometer", "x")
    attrs = ome.image_attributes(image, [ome.Level("s0", image.scale)], version="0.5")
    meta = attrs["ome"]["multiscales"]
    assert attrs["ome"]["version"] == "0.5"
    assert ome.level0_path(meta) == "s0"
    assert ome.axis_names(meta) == ("z", "y", "x")
    assert ome.level0_scale(meta) == (2.0, 0.5, 0.5)
    v04 = ome.image_attributes(ome.ImageMeta.spatial(None, None, "x"), [ome.Level("0", (1.0, 1.0, 1.0))], version="0.4")
    assert v04["multiscales"][0]["version"] == "0.4"
    assert ome.level0_scale(v04["multiscales"]) == (1.0, 1.0, 1.0)
    # a global scale multiplies the dataset's
    meta[0]["coordinateTransformations"] = [{"type": "scale", "scale": [2.0, 2.0, 2.0]}]
    assert ome.level0_scale(meta) == (4.0, 1.0, 1.0)


def test_multiscales_of_plain_group_is_none(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    assert ome.multiscales(group) is None
    group.attrs["multiscales"] = []
    assert ome.multiscales(group) is None
