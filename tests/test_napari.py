"""The napari widget, driven in a real napari viewer (Qt on an X display: Xvfb when none is set).

napari and pytest-qt come with the ``napari`` and ``test`` extras; without them this module fails
to import, so CI cannot pass with the widget untested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import dask.array as da
import napari
import npe2
import numpy as np
import pytest
from napari.utils.notifications import notification_manager

import volden.inference
from volden.inference import denoise
from volden.model import CONFIG_FILE, load_model, save_channel_index, save_model
from volden.napari.widget import DenoiseWidget
from volden.synth import synthetic_volume
from volden.training import TrainConfig, train
from volden.volume import Volume
from volden.tiling import Tiling

from conftest import make_model

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "volden" / "napari" / "napari.yaml"
VOXEL_SIZE = (2.0, 0.5, 0.5)
TRAINING_S = 120  # a few steps take seconds; the limit only stops a hung worker


@pytest.fixture(scope="session", autouse=True)
def x_display():
    """An X display for napari's OpenGL canvas: Xvfb when DISPLAY is unset (CI has no screen).

    Qt's offscreen platform gives vispy no OpenGL context (napari fails at its first image
    layer), so the viewer runs on Xvfb, which needs the Debian packages xvfb, libxcb-icccm4 and
    libxcb-keysyms1 beside a desktop's X libraries.
    """
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    if shutil.which("Xvfb") is None:
        pytest.fail("no DISPLAY and no Xvfb: apt-get install xvfb libxcb-icccm4 libxcb-keysyms1")
    server = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    os.environ["DISPLAY"] = f":{server.stdout.readline().decode().strip()}"
    yield os.environ["DISPLAY"]
    del os.environ["DISPLAY"]
    server.terminate()
    server.wait(timeout=10)


def noisy(shape, seed=1) -> np.ndarray:
    volume, _ = synthetic_volume(shape=shape, kind="nuclei", photons=20.0, seed=seed, chunks=shape)
    return volume.compute().astype(np.float32)


def docked(viewer) -> DenoiseWidget:
    widget = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(widget, name="volden")
    return widget


def last_notification() -> str:
    return notification_manager.records[-1].message


def wait_for_training(qtbot, widget: DenoiseWidget) -> None:
    with qtbot.waitSignal(widget.worker.finished, timeout=TRAINING_S * 1000):
        pass


def test_manifest_opens_the_widget_and_the_sample(make_napari_viewer, npe2pm):
    """pyproject's entry point names the manifest, whose commands open the dock widget and the sample."""
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert entry_points["napari.manifest"] == {"volden": "volden.napari:napari.yaml"}
    npe2pm.register(npe2.PluginManifest.from_file(MANIFEST))
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("volden", "Denoise (Noise2Self)")
    assert isinstance(widget, DenoiseWidget)
    viewer.open_sample("volden", "nuclei")
    sample = viewer.layers["noisy nuclei"]
    assert sample.data.shape == (32, 128, 128) and sample.data.dtype == np.uint16
    assert widget.layer_box.currentText() == "noisy nuclei"


def test_denoise_adds_the_lazy_denoised_layer_with_the_source_scale(make_napari_viewer, tmp_path):
    """Pick layer and model folder, click Denoise: the new layer is volden.denoise of the layer,
    a dask array, on the source's voxel size and position."""
    viewer = make_napari_viewer(show=True)
    data = noisy((16, 40, 48))
    source = viewer.add_image(data, name="raw", scale=VOXEL_SIZE, translate=(5.0, 1.0, 2.0), units="um")
    folder = save_model(make_model(), tmp_path / "model")
    widget = docked(viewer)
    widget.model_folder.setText(str(folder))
    widget.denoise_button.click()

    added = viewer.layers["raw denoised"]
    assert isinstance(added.data, da.Array)
    expected = denoise(da.from_array(data), load_model(folder)).compute()
    np.testing.assert_array_equal(np.asarray(added.data), expected)
    assert tuple(added.scale) == VOXEL_SIZE == tuple(source.scale)
    assert tuple(added.translate) == (5.0, 1.0, 2.0)
    assert tuple(str(u) for u in added.units) == ("micrometer",) * 3
    assert viewer.screenshot(canvas_only=False).shape[-1] == 4  # the real window draws


def test_denoised_layer_computes_only_the_blocks_on_screen(make_napari_viewer, tmp_path, monkeypatch):
    """Adding the layer and showing a plane predicts the tiles that plane needs, not the volume's."""
    monkeypatch.setattr(volden.inference, "max_voxels_for", lambda device, width: 1)  # smallest blocks
    predicted = []
    predict_tile = volden.inference.predict_tile
    monkeypatch.setattr(volden.inference, "predict_tile",
                        lambda *args, **kwargs: predicted.append(1) or predict_tile(*args, **kwargs))
    model = make_model()
    data = noisy((160, 40, 40))
    block, halo = volden.inference.plan_blocks(model, data.shape)
    tiles = len(list(Tiling(data.shape, block, halo).blocks()))
    viewer = make_napari_viewer(show=True)
    viewer.add_image(data, name="raw")
    viewer.dims.current_step = (0, 20, 20)
    widget = docked(viewer)
    widget.model_folder.setText(str(save_model(model, tmp_path / "model")))
    widget.denoise_button.click()
    assert tiles == 5 and 0 < len(predicted) < tiles


def test_time_and_channel_layer_gets_each_channel_its_model(make_napari_viewer, tmp_path):
    """A (t, c, z, y, x) layer with a folder of per-channel models: every volume denoised by its
    channel's model, stacked back in the layer's shape."""
    data = np.stack([np.stack([noisy((16, 40, 40), seed=10 * t + c) for c in range(2)]) for t in range(2)])
    models = [make_model(seed=c) for c in range(2)]
    for c, model in enumerate(models):
        save_model(model, tmp_path / "models" / f"channel-{c}")
    save_channel_index(tmp_path / "models", {0: "channel-0", 1: "channel-1"})
    viewer = make_napari_viewer()
    viewer.add_image(data, name="tc", axis_labels=("t", "c", "z", "y", "x"), scale=(1.0, 1.0, *VOXEL_SIZE))
    widget = docked(viewer)
    widget.model_folder.setText(str(tmp_path / "models"))
    widget.denoise_button.click()

    added = viewer.layers["tc denoised"]
    assert added.data.shape == data.shape
    assert tuple(added.scale) == (1.0, 1.0, *VOXEL_SIZE)
    for t in range(2):
        for c in range(2):
            expected = denoise(da.from_array(data[t, c]), models[c]).compute()
            np.testing.assert_array_equal(np.asarray(added.data[t, c]), expected)


def test_training_from_the_widget_trains_on_the_shown_volume_and_denoises(make_napari_viewer, qtbot, tmp_path):
    """Train with a few steps on a (c, z, y, x) layer showing channel 1: a model of that volume is
    saved, the loss curve has a point per step, the bar is full, and the denoised layer follows."""
    data = np.stack([noisy((16, 32, 32), seed=c) for c in range(2)])
    viewer = make_napari_viewer()
    viewer.add_image(data, name="cells", scale=(1.0, *VOXEL_SIZE))
    viewer.dims.current_step = (1, 8, 16, 16)
    widget = docked(viewer)
    widget.steps.setValue(3)
    widget.output_folder.setText(str(tmp_path / "trained"))
    widget.train_button.click()
    assert not widget.train_button.isEnabled() and widget.cancel_button.isEnabled()
    wait_for_training(qtbot, widget)

    model = load_model(tmp_path / "trained")
    assert model.training["steps_done"] == 3 and model.training["volume_index"] == [1]
    assert model.training["voxel_size"] == list(VOXEL_SIZE)
    assert widget.loss_curve.steps == [1, 2, 3] and all(np.isfinite(widget.loss_curve.losses))
    assert widget.progress.value() == widget.progress.maximum()
    assert widget.model_folder.text() == str(tmp_path / "trained")
    added = viewer.layers["cells denoised"]
    np.testing.assert_array_equal(np.asarray(added.data[1]), denoise(da.from_array(data[1]), model).compute())
    assert widget.train_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_cancel_stops_training_with_a_whole_model(make_napari_viewer, qtbot, tmp_path):
    """Cancel during a 10-minute run: it ends within seconds, the model so far is saved and
    loads, and no layer is added."""
    viewer = make_napari_viewer()
    viewer.add_image(noisy((16, 32, 32)), name="raw")
    widget = docked(viewer)
    widget.output_folder.setText(str(tmp_path / "stopped"))
    with qtbot.waitSignal(widget.step_done, timeout=TRAINING_S * 1000):
        widget.train_button.click()
    widget.cancel_button.click()
    wait_for_training(qtbot, widget)

    model = load_model(tmp_path / "stopped")
    assert 1 <= model.training["steps_done"] < 100 and model.training["seconds"] < TRAINING_S
    assert model.history[-1]["step"] == model.training["steps_done"]  # the last step was validated
    assert widget.status.text() == f"stopped at step {model.training['steps_done']}; the model so far is in {tmp_path / 'stopped'}"
    assert [layer.name for layer in viewer.layers] == ["raw"]


def test_train_stop_hook_ends_the_run_after_that_step(tmp_path):
    """volden.train's ``stop``: asked after every step, the run ends at the first True, validated."""
    data = da.from_array(noisy((16, 32, 32)))
    volume = Volume(data=data, voxel_size=None, unit=None, path="memory", array_path="")
    asked = []
    model = train(volume, tmp_path / "m", TrainConfig(steps=50, validate_every=50),
                  stop=lambda: asked.append(1) or len(asked) == 2)
    assert model.training["steps_done"] == 2 and [h["step"] for h in model.history] == [2]
    assert load_model(tmp_path / "m").digest == model.digest


@pytest.mark.parametrize("setup, message", [
    ("no_model", "pick a model folder (written by volden train, or train one below)"),
    ("missing_model", "{tmp}/nothing: no such model"),
    ("not_a_model", "{tmp} is not a volden model ([Errno 2] No such file or directory: '{tmp}/model.json')"),
    ("plane", "'plane' is 2D; volden denoises 3D volumes (z, y, x), with time and channel axes before them"),
    ("rgb", "'photo' is an RGB image; volden denoises grey-value volumes"),
])
def test_bad_input_is_one_line_in_the_widget_and_napari(make_napari_viewer, tmp_path, setup, message):
    viewer = make_napari_viewer()
    widget = docked(viewer)
    viewer.add_image(noisy((16, 32, 32)), name="raw")
    widget.model_folder.setText(str(save_model(make_model(), tmp_path / "model")))
    if setup == "no_model":
        widget.model_folder.setText(" ")
    elif setup == "missing_model":
        widget.model_folder.setText(str(tmp_path / "nothing"))
    elif setup == "not_a_model":
        widget.model_folder.setText(str(tmp_path))
    elif setup == "plane":
        viewer.add_image(np.zeros((8, 8), np.float32), name="plane")
        widget.layer_box.setCurrentText("plane")
    else:
        viewer.add_image(np.zeros((8, 8, 8, 3), np.uint8), name="photo", rgb=True)
        widget.layer_box.setCurrentText("photo")
    layers_before = len(viewer.layers)
    widget.denoise_button.click()
    expected = message.format(tmp=tmp_path)
    assert widget.status.text() == expected == last_notification()
    assert "\n" not in expected and len(viewer.layers) == layers_before


def test_training_refuses_a_folder_that_holds_files(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = docked(viewer)
    viewer.add_image(noisy((16, 32, 32)), name="raw")
    folder = save_model(make_model(), tmp_path / "model")
    widget.output_folder.setText(str(folder))
    widget.train_button.click()
    assert widget.worker is None
    assert widget.status.text() == f"{folder} exists and is not an empty folder; name a new folder for the model"
    assert (folder / CONFIG_FILE).exists()
