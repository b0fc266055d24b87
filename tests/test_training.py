"""Training: chunk reads stay within what the sampler asks for, PSNR improves, resume works."""

from __future__ import annotations

import dataclasses
import itertools
import json

import dask.array as da
import numpy as np
import pytest
import zarr
import zarr.storage

import volden
from volden import sampler as sampler_module
from volden.metrics import psnr
from volden.normalisation import estimate_normalisation
from volden.sampler import PatchSampler, split_volume
from volden.synth import synthetic_volume, write_synthetic
from volden.training import TrainConfig, train
from volden.volume import Volume


class CountingStore(zarr.storage.WrapperStore):
    """Records every chunk key read from the wrapped store."""

    def __init__(self, store):
        super().__init__(store)
        self.reads: list[str] = []

    async def get(self, key, prototype, byte_range=None):
        if key.startswith("c/"):
            self.reads.append(key)
        return await self._store.get(key, prototype, byte_range)


def _counted_volume(tmp_path, shape=(32, 128, 128), chunks=(8, 32, 32)) -> tuple[Volume, CountingStore]:
    noisy, _ = synthetic_volume(shape, "nuclei", 20.0, seed=3, chunks=chunks)
    path = tmp_path / "raw.zarr"
    zarr.create_array(str(path), data=noisy.compute(), chunks=chunks)
    store = CountingStore(zarr.storage.LocalStore(str(path), read_only=True))
    array = zarr.open_array(store=store, mode="r")
    return Volume(da.from_zarr(array), None, None, str(path), ""), store


def _chunks_of(box, chunks) -> set[str]:
    ranges = [range(lo // c, -(-hi // c)) for (lo, hi), c in zip(box, chunks)]
    return {"c/" + "/".join(map(str, idx)) for idx in itertools.product(*ranges)}


def test_sampler_reads_only_the_chunks_of_its_regions(tmp_path):
    volume, store = _counted_volume(tmp_path)
    norm = estimate_normalisation(volume.data, max_chunks=4)
    store.reads.clear()
    sampler = PatchSampler(volume.data, (8, 32, 32), 4, norm, patches_per_region=8, cache_regions=2)
    for _ in range(30):
        batch = sampler.next()
        assert batch.shape == (4, 1, 8, 32, 32)
    sampler.close()
    asked = set().union(*(_chunks_of(box, (8, 32, 32)) for box in sampler.regions_read))
    assert set(store.reads) == asked
    # each region is read once per chunk: many patches per chunk read
    assert len(store.reads) == sum(len(_chunks_of(b, (8, 32, 32))) for b in sampler.regions_read)
    total_chunks = 4 * 4 * 4
    assert len(set(store.reads)) < total_chunks or len(sampler.regions_read) > 4


def test_training_reads_only_requested_chunks(tmp_path, monkeypatch):
    volume, store = _counted_volume(tmp_path, shape=(32, 256, 256))
    requested: list = []
    original = sampler_module.PatchSampler._read

    def recording_read(self, box):
        requested.append(box)
        return original(self, box)

    monkeypatch.setattr(sampler_module.PatchSampler, "_read", recording_read)
    config = TrainConfig(steps=6, width=4, patch=(8, 32, 32), batch=2, validate_every=3)
    train(volume, tmp_path / "model", config)
    normalisation_chunks = {
        "c/" + "/".join(map(str, idx))
        for idx in volden.normalisation.sample_chunk_indices(volume.data.numblocks, 16, np.random.default_rng(0))
    }
    asked = set().union(*(_chunks_of(box, (8, 32, 32)) for box in requested)) | normalisation_chunks
    assert set(store.reads) <= asked
    assert len(set(store.reads)) < np.prod(volume.data.numblocks)  # never the whole volume


def test_validation_box_is_held_out_of_training_regions(tmp_path):
    volume, _ = _counted_volume(tmp_path)
    split = split_volume(volume.shape, (8, 32, 32))
    assert split.held_out
    norm = estimate_normalisation(volume.data, max_chunks=4)
    sampler = PatchSampler(volume.data, (8, 32, 32), 2, norm, patches_per_region=2)
    for _ in range(40):
        sampler.next()
    sampler.close()
    training_reads = sampler.regions_read
    for box in training_reads:
        overlap = all(a < vhi and vlo < b for (a, b), (vlo, vhi) in zip(box, split.validation))
        assert not overlap, f"training region {box} overlaps the validation box {split.validation}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    path = write_synthetic(folder / "vol.zarr", shape=(32, 128, 128), chunks=(16, 64, 64), photons=20.0, seed=1)
    volume = volden.open_volume(path)
    model = train(volume, folder / "model", TrainConfig(steps=150, width=8, patch=(16, 64, 64), batch=4, validate_every=50))
    return folder, volume, model


def test_training_improves_psnr_over_the_noisy_input(trained):
    folder, volume, model = trained
    clean = volden.open_volume(folder / "vol.zarr", "clean").data
    denoised = volden.denoise(volume.data, model, device="cpu")
    before, after = psnr(volume.data, clean), psnr(denoised, clean)
    assert after > before + 6, (before, after)


def test_model_files_and_history(trained):
    folder, _, model = trained
    meta = json.loads((folder / "model" / "model.json").read_text())
    assert meta["format"] == "volden-model"
    assert meta["masking"] == {"grid": [3, 3, 3], "fill": "donut"}
    assert [h["step"] for h in meta["history"]] == [50, 100, 150]
    assert meta["training"]["best_val_loss"] == min(h["val_loss"] for h in meta["history"])
    assert (folder / "model" / "loss.png").stat().st_size > 1000
    # the validation loss falls as training goes on
    assert meta["history"][-1]["val_loss"] < meta["history"][0]["val_loss"]


def test_resume_continues_from_the_checkpoint(tmp_path):
    path = write_synthetic(tmp_path / "vol.zarr", shape=(16, 64, 64), chunks=(8, 32, 32))
    volume = volden.open_volume(path)
    config = TrainConfig(steps=4, width=4, patch=(8, 32, 32), batch=2, validate_every=2)
    train(volume, tmp_path / "m", config)
    resumed = train(volume, tmp_path / "m", dataclasses.replace(config, steps=8), resume=True)
    assert [h["step"] for h in resumed.history] == [2, 4, 6, 8]
    assert resumed.training["steps_done"] == 8
    assert resumed.training["best_val_loss"] == min(h["val_loss"] for h in resumed.history)
    assert (tmp_path / "m" / "checkpoint" / "best.safetensors").exists()
