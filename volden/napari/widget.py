"""The napari dock widget: pick an image layer and a model folder, click Denoise; or train a model
on the layer first, in a worker thread, with a progress bar, a live loss curve and a Cancel button.

The denoised layer is a lazy dask array (``volden.denoise``), so napari computes only the planes
it shows. Bad input is one line in the widget and in napari's notifications, never a traceback.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import napari
from napari.layers import Image
from napari.qt.threading import FunctionWorker, create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import VoldenError
from ..model import ModelSet, load_models
from ..training import TrainConfig, train
from .layers import denoised_layer, layer_volume, shown_index
from .loss_curve import LossCurve

PROGRESS_TICKS = 1000


def one_line(err: BaseException) -> str:
    """A VoldenError's message as it is; anything else as its type and first line."""
    if isinstance(err, VoldenError):
        return str(err)
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def check_new_model_folder(text: str) -> Path:
    """The folder to train into: named, and new or empty (training never replaces a model)."""
    if not text.strip():
        raise VoldenError("name a new folder for the trained model")
    folder = Path(text.strip()).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise VoldenError(f"{folder} exists and is not an empty folder; name a new folder for the model")
    return folder


def folder_row(edit: QLineEdit, caption: str) -> QHBoxLayout:
    """A folder field with a browse button beside it."""
    browse = QPushButton("…")
    browse.setMaximumWidth(30)

    def pick() -> None:
        chosen = QFileDialog.getExistingDirectory(edit, caption, edit.text())
        if chosen:
            edit.setText(chosen)

    browse.clicked.connect(pick)
    row = QHBoxLayout()
    row.addWidget(edit)
    row.addWidget(browse)
    return row


class DenoiseWidget(QWidget):
    """Denoise an image layer with a volden model, trained here or loaded from a folder."""

    step_done = Signal(object)  # a progress dict of volden.train, from the worker thread

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker: FunctionWorker | None = None
        self.stop_request = threading.Event()

        self.layer_box = QComboBox()
        self.model_folder = QLineEdit()
        self.model_folder.setPlaceholderText("a folder written by volden train")
        self.denoise_button = QPushButton("Denoise")
        self.denoise_button.clicked.connect(self.denoise)

        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.1, 24 * 60)
        self.minutes.setValue(10.0)
        self.minutes.setSuffix(" min")
        self.steps = QSpinBox()
        self.steps.setRange(0, 10_000_000)
        self.steps.setSpecialValueText("no limit")
        self.output_folder = QLineEdit()
        self.output_folder.setPlaceholderText("a new folder for the model")
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.train)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, PROGRESS_TICKS)
        self.loss_curve = LossCurve()
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.layer_box)
        form.addRow("model", folder_row(self.model_folder, "Model folder"))
        form.addRow(self.denoise_button)
        training = QGroupBox("Train a model on this image (Noise2Self)")
        train_form = QFormLayout(training)
        train_form.addRow("time", self.minutes)
        train_form.addRow("steps", self.steps)
        train_form.addRow("save to", folder_row(self.output_folder, "New model folder"))
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.cancel_button)
        train_form.addRow(buttons)
        train_form.addRow(self.progress)
        train_form.addRow(self.loss_curve)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(training)
        layout.addWidget(self.status)
        layout.addStretch()

        self.step_done.connect(self._show_step)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                      self.viewer.layers.events.moved):
            event.connect(self._list_layers)
        self._list_layers()

    def _list_layers(self, event: Any = None) -> None:
        """Keep the layer box in step with the viewer's image layers, the choice kept if it stays."""
        current = self.layer_box.currentText()
        self.layer_box.clear()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.layer_box.addItems(names)
        if current in names:
            self.layer_box.setCurrentText(current)

    def selected_layer(self) -> Any:
        name = self.layer_box.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def report(self, message: str) -> None:
        """One line in the widget and in napari's notifications."""
        self.status.setText(message)
        show_error(message)

    def denoise(self) -> Image | None:
        """Add the selected layer, denoised lazily by the model folder's model, as a new layer."""
        try:
            folder = self.model_folder.text().strip()
            if not folder:
                raise VoldenError("pick a model folder (written by volden train, or train one below)")
            return self.add_denoised(self.selected_layer(), load_models(folder))
        except VoldenError as err:
            self.report(one_line(err))
            return None

    def add_denoised(self, layer: Any, models: ModelSet) -> Image:
        data, kwargs = denoised_layer(layer, models)
        added = self.viewer.add_image(data, **kwargs)
        self.status.setText(f"{added.name}: denoised plane by plane as you browse (model {models.path})")
        return added

    def train(self) -> None:
        """Train on the volume shown of the selected layer, in a worker thread."""
        try:
            layer = self.selected_layer()
            volume = layer_volume(layer, shown_index(layer, self.viewer.dims.point) if layer is not None else ())
            folder = check_new_model_folder(self.output_folder.text())
            config = TrainConfig(minutes=self.minutes.value(), steps=self.steps.value() or None)
        except VoldenError as err:
            self.report(one_line(err))
            return
        self.stop_request.clear()
        self.loss_curve.clear()
        self.progress.setValue(0)
        self._training(True)
        where = f" at {volume.index}" if volume.index else ""
        self.status.setText(f"training on {layer.name}{where} into {folder}")
        self.worker = create_worker(
            train, volume, folder, config, progress=self.step_done.emit, stop=self.stop_request.is_set,
            _ignore_errors=True,
        )
        self.worker.returned.connect(lambda model: self._trained(layer, model))
        self.worker.errored.connect(lambda err: self.report(one_line(err)))
        self.worker.finished.connect(lambda: self._training(False))
        self.worker.start()

    def cancel(self) -> None:
        """Stop training after the step under way; the model so far is validated and saved."""
        self.stop_request.set()
        self.status.setText("stopping after this step…")

    def _training(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _show_step(self, info: dict) -> None:
        fraction = max(info["step"] / info["steps"] if info["steps"] else 0.0, info["elapsed"] / info["budget_s"])
        self.progress.setValue(round(PROGRESS_TICKS * min(fraction, 1.0)))
        self.loss_curve.add(info["step"], info["loss"])

    def _trained(self, layer: Any, model: Any) -> None:
        """Fill in the model folder; a finished run denoises the layer, a cancelled one does not."""
        self.model_folder.setText(model.path)
        steps = model.training["steps_done"]
        if self.stop_request.is_set():
            self.status.setText(f"stopped at step {steps}; the model so far is in {model.path}")
            return
        self.progress.setValue(PROGRESS_TICKS)
        if layer in self.viewer.layers:
            self.add_denoised(layer, ModelSet.of(model))
