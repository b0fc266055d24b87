"""volden: self-supervised (Noise2Self) denoising of very large 3D microscopy volumes.

    volume = volden.open_volume("vol.zarr")             # lazy dask array + voxel size
    model = volden.train(volume, "model")                # Noise2Self, no clean data
    denoised = volden.denoise(volume.data, model)        # lazy dask array, composes
"""

from ._version import __version__
from .errors import VoldenError
from .inference import denoise
from .model import Model, load_model, save_model
from .training import TrainConfig, train
from .volume import Volume, open_volume

__all__ = [
    "__version__",
    "Model",
    "TrainConfig",
    "Volume",
    "VoldenError",
    "denoise",
    "load_model",
    "open_volume",
    "save_model",
    "train",
]
