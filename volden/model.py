"""A trained denoiser on disk: weights in safetensors plus JSON, loadable without running code.

A model is a folder: ``model.json`` (architecture, normalisation, masking, training summary,
history, volden version) and ``weights.safetensors``; ``loss.png`` sits beside them. A model of
a multichannel image is a folder of such folders, one per channel, named in ``channels.json``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._version import __version__
from .errors import VoldenError
from .noise_curve import NoiseCurve
from .normalisation import Normalisation
from .unet import UNet3D, UNetConfig

FORMAT = "volden-model"
CONFIG_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
CHANNELS_FILE = "channels.json"
CHANNELS_FORMAT = "volden-channel-models"


@dataclass
class Model:
    """A network with everything needed to apply it exactly as it was trained."""

    network: UNet3D
    normalisation: Normalisation
    masking: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    path: str | None = None
    noise_curve: NoiseCurve | None = None  # the camera's, for a prior's posterior step (``posterior``)
    _on_device: dict[str, UNet3D] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def config(self) -> UNetConfig:
        return self.network.config

    @property
    def is_prior(self) -> bool:
        """Whether the network predicts a prior (mean, log variance) for the posterior step."""
        return self.config.outputs == 2

    @property
    def digest(self) -> str:
        """SHA-256 of the weights, to name the model in provenance."""
        sha = hashlib.sha256()
        for name, tensor in sorted(self.network.state_dict().items()):
            sha.update(name.encode())
            sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return sha.hexdigest()

    def network_on(self, device: torch.device) -> UNet3D:
        """The network in eval mode on ``device``, moved there once per process."""
        key = str(device)
        with self._lock:
            if key not in self._on_device:
                network = UNet3D(self.config)
                network.load_state_dict(self.network.state_dict())
                if device.type == "cuda":
                    torch.backends.cudnn.benchmark = True  # tiles repeat a few shapes: pick kernels once each
                self._on_device[key] = network.to(device, memory_format=torch.channels_last_3d).eval()
            return self._on_device[key]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_on_device"] = {}
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "volden_version": __version__,
            "architecture": {"name": "UNet3D", **self.config.to_dict()},
            "normalisation": self.normalisation.to_dict(),
            "masking": self.masking,
            "training": self.training,
            "history": self.history,
            **({"noise_curve": self.noise_curve.to_dict()} if self.noise_curve else {}),
        }


def save_model(model: Model, path: str | Path) -> Path:
    """Write the model folder; the JSON is written last, so a half-written folder never loads."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    _write_json(folder / CONFIG_FILE, model.describe())
    model.path = str(folder)
    return folder


def _write_json(path: Path, content: dict[str, Any]) -> None:
    """Write under a temporary name, then rename: a file that exists is whole."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=1))
    tmp.replace(path)


def load_model(path: str | Path) -> Model:
    """Load a model folder written by :func:`save_model` (no code is executed)."""
    folder = Path(path)
    if not folder.exists():
        raise VoldenError(f"{folder}: no such model")
    config_file = folder / CONFIG_FILE
    try:
        meta = json.loads(config_file.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError("wrong format tag")
        config = UNetConfig.from_dict(meta["architecture"])
        network = UNet3D(config)
        try:
            weights = load_file(str(folder / WEIGHTS_FILE))
        except SafetensorError as err:
            raise VoldenError(f"{folder / WEIGHTS_FILE} is damaged ({err}); train the model again or restore the file") from None
        try:
            network.load_state_dict(weights)
        except RuntimeError as err:
            lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
            raise VoldenError(f"{config_file} does not match {folder / WEIGHTS_FILE} "
                              f"({lines[0] if lines else err}); restore the pair as training wrote it") from None
        normalisation = Normalisation.from_dict(meta["normalisation"])
        noise_curve = NoiseCurve.from_dict(meta["noise_curve"]) if "noise_curve" in meta else None
        if config.outputs == 2 and noise_curve is None:
            raise ValueError("a prior network without its noise curve")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise VoldenError(f"{folder} is not a volden model ({reason})") from None
    return Model(
        network=network.eval(),
        normalisation=normalisation,
        masking=meta.get("masking", {}),
        training=meta.get("training", {}),
        history=meta.get("history", []),
        path=str(folder),
        noise_curve=noise_curve,
    )


@dataclass(frozen=True)
class ModelSet:
    """The model for each channel: one shared by all (``models[None]``) or one per channel."""

    models: dict[int | None, Model]
    path: str | None = None

    @classmethod
    def of(cls, model: "Model | ModelSet") -> "ModelSet":
        return model if isinstance(model, ModelSet) else cls({None: model}, model.path)

    @property
    def per_channel(self) -> bool:
        return None not in self.models

    def for_channel(self, channel: int | None) -> Model:
        if not self.per_channel:
            return self.models[None]
        if channel not in self.models:
            held = ", ".join(str(c) for c in sorted(self.models))  # type: ignore[type-var]
            what = "an image without channels" if channel is None else f"channel {channel}"
            raise VoldenError(f"{self.path} holds models for channels {held}, not for {what}")
        return self.models[channel]

    def digest(self, channels: list[int | None]) -> str | dict[str, str]:
        """SHA-256 of the weights used: one for a shared model, one per channel otherwise."""
        if not self.per_channel:
            return self.models[None].digest
        return {str(c): self.for_channel(c).digest for c in channels}


def save_channel_index(folder: str | Path, channels: dict[int, str]) -> None:
    """Name the per-channel model folders inside ``folder`` (written last, like model.json)."""
    index = {"format": CHANNELS_FORMAT, "volden_version": __version__, "channels": {str(c): p for c, p in channels.items()}}
    _write_json(Path(folder) / CHANNELS_FILE, index)


def is_model_folder(path: str | Path) -> bool:
    """Whether ``path`` holds a model, or one model per channel."""
    return (Path(path) / CONFIG_FILE).exists() or (Path(path) / CHANNELS_FILE).exists()


def load_models(path: str | Path) -> ModelSet:
    """A model folder, or a folder of one model per channel written by ``volden train``."""
    folder = Path(path)
    index_file = folder / CHANNELS_FILE
    if not index_file.exists():
        return ModelSet.of(load_model(folder))
    try:
        index = json.loads(index_file.read_text())
        if index.get("format") != CHANNELS_FORMAT:
            raise ValueError("wrong format tag")
        channels = {int(c): str(p) for c, p in index["channels"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise VoldenError(f"{folder} is not a volden model ({err})") from None
    return ModelSet({c: load_model(folder / p) for c, p in channels.items()}, str(folder))
