"""The README's first command: synth -> train -> apply -> PSNR before and after, and a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .apply import ApplyConfig, apply_model
from .classic import GAUSSIAN_SIGMAS, gaussian
from .cluster import local_client
from .metrics import psnr
from .synth import VOXEL_SIZE, write_synthetic
from .training import TrainConfig, train
from .volume import open_image, open_volume


def best_gaussian(noisy: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """PSNR and sigma of the best Gaussian filter, chosen with the clean volume: the classic
    baseline a denoiser has to beat (z sigma scaled by the voxel size)."""
    return max((psnr(gaussian(noisy, sigma, VOXEL_SIZE), clean), sigma) for sigma in GAUSSIAN_SIGMAS)


def save_comparison(images: dict[str, np.ndarray], path: Path) -> None:
    """Middle xy slices side by side with one contrast (the clean volume's 0.5-99.9%)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reference = images["clean"] if "clean" in images else next(iter(images.values()))
    low, high = np.percentile(reference, [0.5, 99.9])
    fig, axes = plt.subplots(1, len(images), figsize=(4 * len(images), 4.3))
    for ax, (name, volume) in zip(axes, images.items()):
        ax.imshow(volume[volume.shape[0] // 2], cmap="gray", vmin=low, vmax=high)
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_demo(
    folder: Path,
    minutes: float = 3.0,
    kind: str = "nuclei",
    shape: tuple[int, int, int] = (64, 256, 256),
    photons: float = 20.0,
    echo: Callable[[str], None] = print,
    progress: Callable[[dict], None] | None = None,
) -> dict[str, float]:
    """Run the whole demo in ``folder``; returns the PSNRs (dB) it printed."""
    folder.mkdir(parents=True, exist_ok=True)
    data, model_path, output = folder / "synthetic.zarr", folder / "model", folder / "denoised.zarr"
    echo(f"1/4 synthetic {kind} volume {shape}, {photons:g} photons -> {data}")
    write_synthetic(data, shape=shape, kind=kind, photons=photons, overwrite=True)
    volume = open_volume(data)
    echo(f"2/4 training for {minutes:g} min -> {model_path}")
    model = train(volume, model_path, TrainConfig(minutes=minutes), progress=progress)
    echo(f"3/4 denoising on a local Dask cluster -> {output}")
    with local_client() as client:
        apply_model(model, open_image(data), output, ApplyConfig(overwrite=True), client=client)
    echo("4/4 scoring against the clean volume")
    noisy = volume.data.compute()
    clean = open_volume(data, "clean").data.compute()
    denoised = open_volume(output).data.compute()
    scores = {"noisy": psnr(noisy, clean), "denoised": psnr(denoised, clean)}
    scores["best_gaussian"], sigma = best_gaussian(noisy, clean)
    images = {"noisy": noisy, f"Gaussian sigma {sigma:g}": gaussian(noisy, sigma, VOXEL_SIZE), "volden": denoised, "clean": clean}
    save_comparison(images, folder / "before_after.png")
    echo(f"PSNR noisy {scores['noisy']:.2f} dB -> volden {scores['denoised']:.2f} dB "
         f"(best Gaussian, chosen with the clean volume: {scores['best_gaussian']:.2f} dB)")
    echo(f"before/after image: {folder / 'before_after.png'}")
    return scores
