"""The default CPU network with random weights: inference costs the same as a trained one's,
so the speed and memory benchmarks need no training run."""

from __future__ import annotations

from pathlib import Path

import torch

from volden.model import Model, save_model
from volden.normalisation import estimate_normalisation
from volden.training import TrainConfig
from volden.unet import UNet3D, UNetConfig, plan_pools
from volden.volume import Volume


def default_cpu_model(volume: Volume, folder: Path | None = None) -> Model:
    """An untrained model of the CPU default architecture, saved to ``folder`` when given."""
    config = TrainConfig().resolve(volume.shape, torch.device("cpu"))
    torch.manual_seed(0)
    network = UNet3D(
        UNetConfig(depth=config.depth, width=config.width, pools=plan_pools(config.patch, config.depth, volume.voxel_size))
    ).eval()
    model = Model(network, estimate_normalisation(volume.data), {"grid": list(config.grid), "fill": config.fill})
    if folder is not None:
        save_model(model, folder)
    return model
