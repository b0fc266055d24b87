"""Training: chunk reads stay within what the sampler asks for, PSNR improves, resume after a
kill repeats the uninterrupted run, a blown-up run is taken back, the region cache keeps to its bound."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import signal
import subprocess
import time

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
import zarr.storage
from safetensors.torch import load_file

import volden
from cli_helpers import volden_command
from counting_store import CountingStore
from volden import sampler as sampler_module
from volden.errors import VoldenError
from volden.metrics import psnr
from volden.normalisation import estimate_normalisation
from volden.sampler import MIN_REGIONS, PatchSampler, augment, split_volume
from volden.synth import synthetic_volume, write_synthetic
from volden import training as training_module
from volden.training import TrainConfig, kept_weights, train, training_autocast
from volden.volume import Volume


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
    sampler = PatchSampler(volume.data, (8, 32, 32), 4, norm, patches_per_region=8, cache_mb=0.5)
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


def test_test_time_augmentation_raises_psnr(trained):
    folder, volume, model = trained
    clean = volden.open_volume(folder / "vol.zarr", "clean").data
    one, eight = (psnr(volden.denoise(volume.data, model, device="cpu", views=v), clean) for v in (1, 8))
    assert eight > one + 0.1, (one, eight)


def test_model_files_and_history(trained):
    folder, _, model = trained
    meta = json.loads((folder / "model" / "model.json").read_text())
    assert meta["format"] == "volden-model"
    assert meta["masking"] == {"grid": [2, 2, 2], "fill": "donut", "phases": 2}
    assert [h["step"] for h in meta["history"]] == [50, 100, 150]
    assert meta["training"]["best_val_loss"] == min(h["val_loss"] for h in meta["history"])
    assert (folder / "model" / "loss.png").stat().st_size > 1000
    # the validation loss falls as training goes on
    assert meta["history"][-1]["val_loss"] < meta["history"][0]["val_loss"]


def test_the_model_gets_the_last_weights_when_validation_does_not_object(trained):
    folder, _, _ = trained
    meta = json.loads((folder / "model" / "model.json").read_text())
    assert meta["training"]["kept"] == kept_weights(meta["history"]) == "last"
    state = json.loads((folder / "model" / "checkpoint" / "state.json").read_text())
    last = load_file(str(folder / "model" / "checkpoint" / state["tensors"]))
    saved = load_file(str(folder / "model" / "weights.safetensors"))
    assert saved.keys() == {k[len("network."):] for k in last if k.startswith("network.")}
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, last[f"network.{name}"], rtol=0, atol=0)


@pytest.mark.parametrize("native", [True, False])
def test_training_computes_in_bf16_only_on_a_cpu_that_has_it(monkeypatch, native):
    monkeypatch.setattr(training_module, "native_cpu_bf16", lambda: native)
    with training_autocast(torch.device("cpu")):
        out = torch.nn.Conv3d(1, 1, 3)(torch.ones(1, 1, 4, 4, 4))
    assert out.dtype == (torch.bfloat16 if native else torch.float32)


def test_weights_are_saved_in_float32_whatever_the_training_precision(trained):
    folder, _, _ = trained
    saved = load_file(str(folder / "model" / "weights.safetensors"))
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}


def _history(*losses):
    return [{"step": 50 * (i + 1), "val_loss": v} for i, v in enumerate(losses)]


def test_validation_noise_keeps_the_last_weights_and_a_regression_the_best():
    assert kept_weights(_history(1.0, 0.90, 0.85, 0.86)) == "last"  # gave back 0.01 of the 0.15 gained
    assert kept_weights(_history(1.0, 0.90, 0.85, 0.95)) == "best"  # gave back two thirds
    assert kept_weights(_history(1.0, 0.90, 0.85, float("nan"))) == "best"
    assert kept_weights(_history(1.0, 1.2)) == "best"  # never improved on the first validation
    assert kept_weights(_history(1.0)) == "last"


def test_a_run_thrown_off_goes_back_and_ends_on_sound_weights(tmp_path, monkeypatch):
    """Every weight multiplied by 100 before step 211, as a blown-up step would leave them: the guard
    takes the run back to its snapshot of step 100 at half the rate, and the run ends sound."""
    path = write_synthetic(tmp_path / "vol.zarr", shape=(32, 128, 128), chunks=(16, 64, 64), photons=20.0, seed=1)
    volume = volden.open_volume(path)
    real_step, calls = training_module.train_step, itertools.count()

    def thrown_off(network, *args):
        if next(calls) == 210:
            with torch.no_grad():
                for parameter in network.parameters():
                    parameter.mul_(100.0)
        return real_step(network, *args)

    monkeypatch.setattr(training_module, "train_step", thrown_off)
    config = TrainConfig(steps=260, width=8, patch=(16, 64, 64), batch=4, validate_every=65)
    model = train(volume, tmp_path / "model", config)
    assert model.training["restarts"] == 1
    lrs = {h["step"]: h["lr"] for h in model.history}
    rate = config.resolve(volume.shape, torch.device("cpu")).learning_rate
    assert lrs[195] == pytest.approx(rate * training_module.lr_factor(194 / 260, config.lr_floor))
    assert lrs[260] == pytest.approx(rate * 0.5 * training_module.lr_factor(259 / 260, config.lr_floor))
    val = [h["val_loss"] for h in model.history]
    assert math.isfinite(val[-1]) and val[-1] < val[0], val


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


def test_augment_turns_a_stack_of_volumes_alike_through_all_sixteen_symmetries():
    """The quality benchmark stacks noisy and clean patches on a first axis: both must turn alike."""
    patch = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        out = augment(np.stack([patch, 10 * patch]), rng)
        np.testing.assert_array_equal(out[1], 10 * out[0])
        assert sorted(out[0].ravel()) == sorted(patch.ravel())
        seen.add(out[0].tobytes())
    assert len(seen) == 16  # flips in z, y and x, quarter turns in yx


def test_augment_without_z_flips_keeps_z_and_the_yx_draws():
    """--no-flip-z: no patch comes out upside down in z, and y and x turn as they would have."""
    patch = np.arange(4 * 6 * 6, dtype=np.float32).reshape(4, 6, 6)
    flipped, kept = np.random.default_rng(0), np.random.default_rng(0)
    upside_down = 0
    for _ in range(200):
        with_z, without_z = augment(patch, flipped), augment(patch, kept, flip_z=False)
        assert without_z[0].max() < without_z[-1].min()  # z order kept
        upside_down += with_z[0].max() > with_z[-1].min()
        np.testing.assert_array_equal(without_z, with_z if with_z[0].max() < with_z[-1].min() else with_z[::-1])
    assert 60 < upside_down < 140


def test_background_tries_favour_bright_patches():
    """A dark volume with one bright box: redrawing dim candidates finds the box far more often."""
    rng = np.random.default_rng(0)
    sparse = rng.poisson(10.0, (32, 128, 128)).astype(np.float32)
    sparse[8:24, :32, :32] += 1000.0
    data = da.from_array(sparse, chunks=(16, 64, 64))
    norm = estimate_normalisation(data)
    means = {}
    for tries in (1, 8):
        batch_means = []
        for seed in range(3):  # patches come from a few cached regions: average over streams
            sampler = PatchSampler(data, (8, 32, 32), 4, norm, background_tries=tries, seed=seed)
            try:
                batch_means += [sampler.next().mean().item() for _ in range(100)]
            finally:
                sampler.close()
        means[tries] = float(np.mean(batch_means))
    assert means[8] > means[1] + 0.1, means


def test_sampler_rebuilt_from_its_state_draws_the_same_batches(tmp_path):
    volume, _ = _counted_volume(tmp_path)
    norm = estimate_normalisation(volume.data, max_chunks=4)
    settings = dict(seed=5, patches_per_region=3, cache_mb=2.0)  # regions replaced every few batches
    original = PatchSampler(volume.data, (8, 32, 32), 4, norm, **settings)
    for _ in range(5):
        original.next()
    state = json.loads(json.dumps(original.state))
    assert state["batch"] == 5
    assert state["next_region"] > original.cache_regions  # some regions were replaced already
    rebuilt = PatchSampler(volume.data, (8, 32, 32), 4, norm, state=state, **settings)
    fresh = PatchSampler(volume.data, (8, 32, 32), 4, norm, **settings)
    try:
        ahead = [original.next() for _ in range(10)]
        assert all(torch.equal(a, rebuilt.next()) for a in ahead)
        assert rebuilt.state == original.state
        assert not torch.equal(ahead[0], fresh.next())  # the state, not the seed alone, made them equal
    finally:
        for sampler in (original, rebuilt, fresh):
            sampler.close()


def test_sampler_rejects_a_state_it_did_not_write(tmp_path):
    volume, _ = _counted_volume(tmp_path)
    norm = estimate_normalisation(volume.data, max_chunks=4)
    with pytest.raises(VoldenError, match="not one a PatchSampler wrote"):
        PatchSampler(volume.data, (8, 32, 32), 4, norm, state={"batch": 3})


class Killed(Exception):
    """Stands for a kill right after a checkpoint."""


def test_resumed_training_repeats_the_uninterrupted_run(tmp_path):
    path = write_synthetic(tmp_path / "vol.zarr", shape=(16, 64, 64), chunks=(8, 32, 32))
    volume = volden.open_volume(path)
    config = TrainConfig(steps=8, width=4, patch=(8, 32, 32), batch=2, validate_every=2, fill="random")
    whole = train(volume, tmp_path / "whole", config)

    def kill_at_step_4(progress: dict) -> None:
        if progress["step"] == 4:
            raise Killed

    with pytest.raises(Killed):
        train(volume, tmp_path / "cut", config, progress=kill_at_step_4)
    checkpoint = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert checkpoint["step"] == 4 and checkpoint["sampler"]["batch"] == 4
    resumed = train(volume, tmp_path / "cut", config, resume=True)
    # same thread count, same batches and masks: CPU training repeats bit for bit
    assert [(h["step"], h["loss"], h["val_loss"]) for h in resumed.history] == [
        (h["step"], h["loss"], h["val_loss"]) for h in whole.history
    ]
    assert [h["step"] for h in whole.history] == [2, 4, 6, 8]
    assert all(torch.equal(a, b) for a, b in zip(whole.network.state_dict().values(), resumed.network.state_dict().values()))


def test_train_command_resumes_after_sigkill(tmp_path):
    write_synthetic(tmp_path / "vol.zarr", shape=(16, 64, 64), chunks=(8, 32, 32))
    tiny = ("--patch", "8,32,32", "--batch", "2", "--width", "4", "--device", "cpu", "--cache-mb", "1")
    state_file = tmp_path / "m" / "checkpoint" / "state.json"
    proc = subprocess.Popen(volden_command("train", "vol.zarr", "-o", "m", "--steps", "1000000", *tiny),
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not state_file.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    killed_at = json.loads(state_file.read_text())["step"]
    assert killed_at > 0
    target = killed_at + 100
    done = subprocess.run(volden_command("train", "vol.zarr", "-o", "m", "--resume", "--steps", str(target), *tiny),
                          cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    model = volden.load_model(tmp_path / "m")
    assert [h["step"] for h in model.history] == list(range(50, target + 1, 50))
    assert model.training["steps_done"] == target and model.training["cache_mb"] == 1
    assert [p.name for p in (tmp_path / "m" / "checkpoint").glob("state-*")] == [f"state-{target}.safetensors"]


def test_cache_keeps_to_its_bound(tmp_path):
    volume, _ = _counted_volume(tmp_path)
    norm = estimate_normalisation(volume.data, max_chunks=4)
    region_mb = 4 * 16 * 64 * 64 / 2**20  # float32 regions of 2 x 2 x 2 chunks
    small = PatchSampler(volume.data, (8, 32, 32), 4, norm, cache_mb=0.01)
    sized = PatchSampler(volume.data, (8, 32, 32), 4, norm, cache_mb=6 * region_mb)
    try:
        assert small.cache_regions == MIN_REGIONS
        assert sized.cache_regions == 6 - 2  # two more regions are read ahead
        for _ in range(20):
            assert small.next().shape == (4, 1, 8, 32, 32)
    finally:
        small.close()
        sized.close()
    model = train(volume, tmp_path / "m", TrainConfig(steps=2, width=4, patch=(8, 32, 32), batch=2, cache_mb=0.01))
    assert model.training["cache_mb"] == 0.01


@pytest.mark.parametrize("cache_mb", [0, -5, float("nan")])
def test_cache_bound_must_be_positive(cache_mb):
    with pytest.raises(VoldenError, match="--cache-mb must be a positive number"):
        TrainConfig(cache_mb=cache_mb)


@pytest.mark.parametrize("lr_floor", [-0.1, 1.5, float("nan")])
def test_learning_rate_floor_is_a_share(lr_floor):
    with pytest.raises(VoldenError, match="lr_floor must be from 0 to 1"):
        TrainConfig(lr_floor=lr_floor)


def test_schedule_runs_from_the_full_rate_to_the_floor():
    floor = TrainConfig().lr_floor
    assert training_module.lr_factor(0.0, floor) == pytest.approx(1.0)
    assert training_module.lr_factor(0.5, floor) == pytest.approx((1 + floor) / 2)
    assert training_module.lr_factor(1.0, floor) == pytest.approx(floor)
    assert training_module.lr_factor(3.0, floor) == pytest.approx(floor)


@pytest.mark.parametrize("warmup_steps", [-1, -100])
def test_warmup_is_a_step_count(warmup_steps):
    with pytest.raises(VoldenError, match="warmup_steps must be 0 or more"):
        TrainConfig(warmup_steps=warmup_steps)


def test_learning_rate_rises_linearly_then_follows_the_cosine():
    config = TrainConfig(warmup_steps=100, learning_rate=4e-3)
    assert training_module.scheduled_lr(config, 0, 0.0) == pytest.approx(config.learning_rate / 100)
    assert training_module.scheduled_lr(config, 49, 0.0) == pytest.approx(config.learning_rate / 2)
    assert training_module.scheduled_lr(config, 99, 0.5) == pytest.approx(config.learning_rate * training_module.lr_factor(0.5, config.lr_floor))
    assert training_module.scheduled_lr(dataclasses.replace(config, warmup_steps=0), 0, 0.0) == pytest.approx(config.learning_rate)


def test_learning_rate_scales_inversely_with_the_width():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert TrainConfig().resolve((64, 256, 256), cpu).learning_rate == pytest.approx(2e-3)
    assert TrainConfig().resolve((64, 256, 256), gpu).learning_rate == pytest.approx(5e-4)
    assert TrainConfig(width=16).resolve((64, 256, 256), cpu).learning_rate == pytest.approx(1e-3)
    assert TrainConfig(width=32, learning_rate=3e-3).resolve((64, 256, 256), cpu).learning_rate == 3e-3


@pytest.mark.parametrize("learning_rate", [0.0, -1e-3, float("nan"), float("inf")])
def test_learning_rate_must_be_positive(learning_rate):
    with pytest.raises(VoldenError, match="learning_rate must be a positive number"):
        TrainConfig(learning_rate=learning_rate)


def test_the_gpus_wide_network_trains_at_its_own_rate_where_4e_3_throws_it_off(tmp_path):
    """The GPU's default network (width 32, depth 3, batch 8) at 4e-3 from its first step (the
    rate the CPU's width 8 trained at until 10-minute runs preferred 2e-3): Adam's first steps
    throw it off (the mean loss of the first 12 steps is in the thousands). At its own rate,
    warmed up, it learns."""
    path = write_synthetic(tmp_path / "vol.zarr", shape=(32, 128, 128), chunks=(16, 64, 64), photons=5.0, seed=1)
    volume = volden.open_volume(path)
    wide = dict(steps=12, validate_every=12, width=32, depth=3, batch=8, patch=(16, 64, 64), device="cpu")
    first_losses = {
        name: train(volume, tmp_path / name, TrainConfig(**wide, **settings)).history[0]["loss"]
        for name, settings in {"4e-3": dict(learning_rate=4e-3, warmup_steps=0), "defaults": {}}.items()
    }
    assert first_losses["4e-3"] > 100 and first_losses["defaults"] < 1.5, first_losses
