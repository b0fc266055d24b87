"""volden: self-supervised (Noise2Self) denoising of very large 3D microscopy volumes.

    volume = volden.open_volume("vol.zarr")             # lazy dask array + voxel size
    model = volden.train(volume, "model")                # Noise2Self, no clean data
    denoised = volden.denoise(volume.data, model)        # lazy dask array, composes
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import VoldenError

# The module of each public name, imported on first use: commands that need no torch (ingest,
# info) then start fast and stay small.
_LAZY = {
    "denoise": "inference",
    "Model": "model",
    "load_model": "model",
    "load_models": "model",
    "ModelSet": "model",
    "save_model": "model",
    "TrainConfig": "training",
    "train": "training",
    "train_channels": "training",
    "Image": "volume",
    "Volume": "volume",
    "open_image": "volume",
    "open_volume": "volume",
}

if TYPE_CHECKING:
    from .inference import denoise
    from .model import Model, ModelSet, load_model, load_models, save_model
    from .training import TrainConfig, train, train_channels
    from .volume import Image, Volume, open_image, open_volume


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "__version__",
    "Image",
    "Model",
    "ModelSet",
    "TrainConfig",
    "Volume",
    "VoldenError",
    "denoise",
    "load_model",
    "load_models",
    "open_image",
    "open_volume",
    "save_model",
    "train",
    "train_channels",
]
