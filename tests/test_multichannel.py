"""Images with channels and time points in, the same image out: one 3D volume at a time, each
channel with its own model, the input's axes, voxel size and channels kept, readable by
ome-zarr-py (the reference implementation), with a pyramid on request."""

from __future__ import annotations

import subprocess

import dask.array as da
import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from volden import ome
from volden.apply import ApplyConfig, apply_model
from volden.cluster import local_client
from volden.inference import denoise
from volden.layout import chunks_within
from volden.ledger import Ledger
from volden.metrics import psnr
from volden.model import ModelSet, load_models
from volden.normalisation import estimate_normalisation
from volden.synth import VOXEL_SIZE, synthetic_volume
from volden.volume import open_image

from cli_helpers import volden_command
from conftest import make_model

SHAPE = (16, 64, 64)
BLOCK, HALO = (8, 32, 32), (4, 8, 8)
CHANNELS = ({"label": "nuclei", "color": "0000FF"}, {"label": "neurites", "color": "00FF00"})


def _channel_image(path, version="0.5", timepoints=0):
    """A (t,) c, z, y, x OME-Zarr of two synthetic channels (nuclei, neurites) and their clean truth."""
    pairs = [synthetic_volume(SHAPE, kind, 20.0, seed=5, chunks=SHAPE) for kind in ("nuclei", "neurites")]
    noisy = np.stack([n.compute() for n, _ in pairs])
    clean = np.stack([c.compute() for _, c in pairs])
    axes, scale, units = ("c", "z", "y", "x"), (1.0, *VOXEL_SIZE), (None,) + ("micrometer",) * 3
    if timepoints:
        noisy, clean = np.stack([noisy] * timepoints), np.stack([clean] * timepoints)
        axes, scale, units = ("t",) + axes, (30.0,) + scale, ("second",) + units
    meta = ome.ImageMeta(axes, scale, units, CHANNELS, "acquisition")
    array = ome.create_image(path, noisy.shape, (1,) * (noisy.ndim - 3) + (8, 32, 32), noisy.dtype, {},
                             version=version, axes=axes)
    array[:] = noisy
    ome.finalize_image(path, meta, version=version)
    return noisy, clean


def _channel_models(noisy_channels) -> ModelSet:
    return ModelSet({c: make_model(seed=c, normalisation=estimate_normalisation(da.from_array(x)))
                     for c, x in enumerate(noisy_channels)})


def _output(path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


def test_cli_trains_one_model_per_channel_and_denoises_each(tmp_path):
    noisy, clean = _channel_image(tmp_path / "in.zarr", version="0.4")
    train = subprocess.run(
        volden_command("train", "in.zarr", "-o", "m", "--steps", "60", "--patch", "8,32,32", "--batch", "4",
                       "--width", "8"),
        cwd=tmp_path, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "saved m/channel-0" in train.stdout and "saved m/channel-1" in train.stdout
    models = load_models(tmp_path / "m")
    assert sorted(models.models) == [0, 1]
    assert models.for_channel(0).training["volume_index"] == [0]
    assert models.for_channel(1).normalisation != models.for_channel(0).normalisation
    apply = subprocess.run(
        volden_command("apply", "m", "in.zarr", "out.zarr", "--block", "8,32,32", "--ome-version", "0.4"),
        cwd=tmp_path, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert apply.returncode == 0, apply.stderr[-3000:]
    assert "16 of 16 blocks in 2 volumes" in apply.stdout
    out = _output(tmp_path / "out.zarr")
    assert out.shape == noisy.shape
    image = open_image(tmp_path / "in.zarr")
    for channel in (0, 1):
        lazy = denoise(image.volume(0, channel).data, models.for_channel(channel), block=BLOCK, device="cpu")
        assert np.array_equal(out[channel], lazy.compute()), f"channel {channel} was not denoised by its own model"
        gain = psnr(out[channel], clean[channel]) - psnr(noisy[channel], clean[channel])
        assert gain > 3.0, f"channel {channel}: only {gain:.2f} dB better than the noisy input"


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_ome_zarr_py_reads_the_output_with_the_inputs_axes_and_voxel_size(tmp_path, version):
    noisy, _ = _channel_image(tmp_path / "in.zarr", version=version, timepoints=2)
    config = ApplyConfig(block=BLOCK, halo=HALO, device="cpu", ome_version=version, pyramid=2)
    apply_model(_channel_models(noisy[0]), open_image(tmp_path / "in.zarr"), tmp_path / "out.zarr", config)

    def read(path):
        (node, *_) = list(Reader(parse_url(str(path)))())
        return node

    source, result = read(tmp_path / "in.zarr"), read(tmp_path / "out.zarr")
    assert result.metadata["axes"] == source.metadata["axes"]
    assert [a["name"] for a in result.metadata["axes"]] == ["t", "c", "z", "y", "x"]
    assert result.metadata["coordinateTransformations"][0] == source.metadata["coordinateTransformations"][0]
    assert result.metadata["coordinateTransformations"][0][0]["scale"] == [30.0, 1.0, *VOXEL_SIZE]
    assert result.metadata["channel_names"] == ["nuclei", "neurites"]
    # the pyramid halves y and x while z (1 um) is coarser than them (0.5, then 1 um), then all three
    assert [level.shape for level in result.data] == [(2, 2, 16, 64, 64), (2, 2, 16, 32, 32), (2, 2, 8, 16, 16)]
    scales = [t[0]["scale"] for t in result.metadata["coordinateTransformations"]]
    assert scales == [[30.0, 1.0, 1.0, 0.5, 0.5], [30.0, 1.0, 1.0, 1.0, 1.0], [30.0, 1.0, 2.0, 2.0, 2.0]]
    level1 = np.asarray(result.data[1][1, 0, 4])
    full = _output(tmp_path / "out.zarr")[1, 0, 4].astype(np.float64)
    np.testing.assert_allclose(level1, full.reshape(32, 2, 32, 2).mean(axis=(1, 3)), rtol=1e-5)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert group.metadata.zarr_format == (3 if version == "0.5" else 2)
    assert group.attrs["volden"]["status"] == "complete"


def test_selected_channel_and_timepoint_only(tmp_path):
    noisy, _ = _channel_image(tmp_path / "in.zarr", timepoints=2)
    models = _channel_models(noisy[0])
    image = open_image(tmp_path / "in.zarr")
    config = ApplyConfig(block=BLOCK, halo=HALO, device="cpu", channels=(1,), timepoints=(1,))
    report = apply_model(models, image, tmp_path / "out.zarr", config)
    assert (report.volumes, report.blocks) == (1, 8)
    out = open_image(tmp_path / "out.zarr")
    assert out.shape == (1, 1, *SHAPE)
    assert [c["label"] for c in out.meta.channels] == ["neurites"]
    expected = denoise(image.volume(1, 1).data, models.for_channel(1), block=BLOCK, halo=HALO, device="cpu")
    assert np.array_equal(out.data[0, 0].compute(), expected.compute())


def test_an_interrupted_multichannel_run_resumes_to_the_same_bytes(tmp_path):
    noisy, _ = _channel_image(tmp_path / "in.zarr")
    models, image = _channel_models(noisy), open_image(tmp_path / "in.zarr")
    config = ApplyConfig(block=BLOCK, halo=HALO, device="cpu")
    apply_model(models, image, tmp_path / "reference.zarr", config)

    def stop_after_five(done: int, total: int) -> None:
        if done >= 5:
            raise RuntimeError("stopped by the test")

    with local_client(1) as client, pytest.raises(RuntimeError, match="stopped by the test"):
        apply_model(models, image, tmp_path / "out.zarr", config, client=client, progress=stop_after_five)
    done = Ledger(tmp_path / "out.zarr").done_count()
    assert done >= 5
    resumed = apply_model(models, image, tmp_path / "out.zarr", ApplyConfig(block=BLOCK, halo=HALO, device="cpu",
                                                                          resume=True))
    assert (resumed.blocks_written, resumed.blocks_done_before) == (16 - done, done)
    assert np.array_equal(_output(tmp_path / "out.zarr"), _output(tmp_path / "reference.zarr"))


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_output_chunks_suit_viewers_and_divide_the_blocks(tmp_path, version):
    """Blocks larger than a viewer's chunk are written as whole chunks (one shard per block on
    zarr v3), so writers never share a chunk, and the bytes are those of the lazy graph."""
    noisy, _ = synthetic_volume((64, 64, 64), "nuclei", 20.0, seed=2, chunks=(32, 64, 64))
    data = noisy.compute()
    zarr.create_array(str(tmp_path / "in.zarr"), data=data, chunks=(32, 64, 64))
    model = make_model(normalisation=estimate_normalisation(da.from_array(data)))
    config = ApplyConfig(block=(64, 64, 64), halo=HALO, device="cpu", ome_version=version)
    apply_model(model, open_image(tmp_path / "in.zarr"), tmp_path / "out.zarr", config)
    array = zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")
    assert array.chunks == (32, 64, 64)
    assert array.shards == ((64, 64, 64) if version == "0.5" else None)
    expected = denoise(da.from_array(data), model, block=(64, 64, 64), halo=HALO, device="cpu").compute()
    assert np.array_equal(array[:], expected)


@pytest.mark.parametrize("block, chunks", [((132, 308, 308), (22, 154, 154)), ((128, 300, 300), (32, 150, 150)),
                                           ((16, 64, 64), (16, 64, 64)), ((64, 512, 512), (32, 256, 256)),
                                           ((262, 262, 262), (131, 131, 131))])
def test_chunks_divide_the_block_and_stay_near_a_viewers_size(block, chunks):
    assert chunks_within(block) == chunks
    assert all(b % c == 0 for b, c in zip(block, chunks))
