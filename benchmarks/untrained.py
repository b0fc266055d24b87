"""Networks with random weights: inference costs the same as a trained one's, so the speed and
memory benchmarks need no training run."""

from __future__ import annotations

from pathlib import Path

import torch

from volden.model import Model, save_model
from volden.normalisation import estimate_normalisation
from volden.training import TrainConfig
from volden.unet import UNet3D, UNetConfig, plan_pools
from volden.volume import Volume


def untrained_model(
    volume: Volume, device: str = "cpu", depth: int | None = None, width: int | None = None, folder: Path | None = None
) -> Model:
    """An untrained model of ``device``'s default architecture (or the given depth and width),
    saved to ``folder`` when given."""
    config = TrainConfig().resolve(volume.shape, torch.device(device))
    depth = config.depth if depth is None else depth
    torch.manual_seed(0)
    network = UNet3D(
        UNetConfig(depth=depth, width=width or config.width, pools=plan_pools(config.patch, depth, volume.voxel_size))
    ).eval()
    model = Model(network, estimate_normalisation(volume.data), {"grid": list(config.grid), "fill": config.fill})
    if folder is not None:
        save_model(model, folder)
    return model

