"""Model folders (safetensors + JSON) and global normalisation."""

from __future__ import annotations

import json
import pickle

import dask.array as da
import numpy as np
import pytest
import torch

from volden.errors import VoldenError
from volden.model import CONFIG_FILE, WEIGHTS_FILE, load_model, save_model
from volden.normalisation import Normalisation, estimate_normalisation, sample_chunk_indices
from volden.predict import predict_array

from conftest import make_model, tiny_config


@pytest.fixture
def model():
    m = make_model(tiny_config(voxel_size=(2.0, 0.5, 0.5)), seed=4,
                   normalisation=Normalisation(mean=120.0, std=7.5, low=101.0, high=180.0))
    m.training = {"steps": 3}
    m.history = [{"step": 1.0, "loss": 0.5}]
    return m


def test_save_load_round_trip(tmp_path, model):
    folder = save_model(model, tmp_path / "m")
    assert (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()
    assert not (folder / (CONFIG_FILE + ".tmp")).exists()
    loaded = load_model(folder)
    assert loaded.config == model.config
    assert loaded.normalisation == model.normalisation
    assert loaded.masking == model.masking
    assert loaded.training == model.training and loaded.history == model.history
    assert loaded.digest == model.digest
    assert loaded.path == str(folder)
    assert not loaded.network.training
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.network.eval()(x), loaded.network(x))
    raw = np.random.default_rng(0).normal(120, 7, (8, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(predict_array(model, raw, "cpu"), predict_array(loaded, raw, "cpu"))


def test_model_json_describes_the_model(tmp_path, model):
    folder = save_model(model, tmp_path / "m")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    assert meta["format"] == "volden-model"
    assert meta["architecture"]["name"] == "UNet3D"
    assert meta["architecture"]["pools"] == [list(p) for p in model.config.pools]
    assert meta["normalisation"]["mean"] == 120.0


def test_digest_changes_with_weights(model):
    before = model.digest
    with torch.no_grad():
        next(model.network.parameters()).add_(1e-3)
    assert model.digest != before


def test_pickled_model_works_and_keeps_digest(model):
    """Distributed workers receive the model pickled: device caches are dropped, weights kept."""
    raw = np.random.default_rng(1).normal(120, 7, (8, 32, 32)).astype(np.float32)
    expected = predict_array(model, raw, "cpu")  # fills the device cache
    clone = pickle.loads(pickle.dumps(model))
    assert clone.digest == model.digest
    assert clone._on_device == {}
    np.testing.assert_array_equal(predict_array(clone, raw, "cpu"), expected)


def test_load_missing_path(tmp_path):
    with pytest.raises(VoldenError, match="no such model"):
        load_model(tmp_path / "absent")


def test_load_folder_without_model_json(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(VoldenError, match="not a volden model"):
        load_model(folder)


def test_load_model_json_of_another_format(tmp_path, model):
    folder = save_model(model, tmp_path / "m")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    meta["format"] = "careamics"
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(VoldenError, match="not a volden model"):
        load_model(folder)


def test_load_broken_folders(tmp_path, model):
    folder = save_model(model, tmp_path / "m")
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(VoldenError, match="not a volden model"):
        load_model(folder)
    folder = save_model(model, tmp_path / "n")
    (folder / CONFIG_FILE).write_text("{not json")
    with pytest.raises(VoldenError, match="not a volden model"):
        load_model(folder)
    # weights of another architecture
    other = make_model(tiny_config(), seed=0)
    save_model(other, tmp_path / "o")
    folder = save_model(model, tmp_path / "p")
    (folder / WEIGHTS_FILE).write_bytes((tmp_path / "o" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(VoldenError, match="p/model.json does not match .*p/weights.safetensors \\(size mismatch for "):
        load_model(folder)


def test_load_a_file_instead_of_a_folder(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\x00\x01")
    with pytest.raises(VoldenError, match="not a volden model"):
        load_model(path)


# --- normalisation ---------------------------------------------------------------------------


def test_apply_invert_round_trip():
    norm = Normalisation(mean=110.0, std=12.5, low=100.0, high=400.0)
    raw = np.random.default_rng(0).integers(90, 5000, (4, 8, 8)).astype(np.uint16)
    x = norm.apply(raw)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, (raw.astype(np.float64) - 110.0) / 12.5, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(norm.invert(x), raw, rtol=1e-5, atol=1e-3)
    assert Normalisation.from_dict(norm.to_dict()) == norm


def test_estimate_normalisation_matches_the_data():
    rng = np.random.default_rng(0)
    data = rng.normal(200.0, 20.0, (32, 64, 64)).astype(np.float32)
    norm = estimate_normalisation(da.from_array(data, chunks=(8, 16, 16)), max_chunks=64)
    assert norm.mean == pytest.approx(200.0, abs=1.0)
    assert norm.std == pytest.approx(20.0, rel=0.03)
    assert norm.low == pytest.approx(np.percentile(data, 2), abs=2.0)
    assert norm.high == pytest.approx(np.percentile(data, 99.9), abs=5.0)
    assert norm.low < norm.mean < norm.high
    # deterministic for a seed
    again = estimate_normalisation(da.from_array(data, chunks=(8, 16, 16)), max_chunks=64)
    assert again == norm


def test_estimate_normalisation_rejects_nan():
    data = np.ones((8, 16, 16), dtype=np.float32)
    data[::2] = 5.0
    data[3, 4, 5] = np.nan
    with pytest.raises(VoldenError, match="NaN"):
        estimate_normalisation(da.from_array(data, chunks=(8, 16, 16)))


def test_estimate_normalisation_rejects_constant_data():
    with pytest.raises(VoldenError, match="constant"):
        estimate_normalisation(da.full((8, 16, 16), 7.0, chunks=(4, 8, 8)))


def test_sample_chunk_indices_are_distinct_and_in_range():
    rng = np.random.default_rng(0)
    picks = sample_chunk_indices((3, 4, 5), 20, rng)
    assert len(picks) == len(set(picks)) == 20
    assert all(0 <= i < 3 and 0 <= j < 4 and 0 <= k < 5 for i, j, k in picks)
    assert len(sample_chunk_indices((2, 2, 1), 20, rng)) == 4
