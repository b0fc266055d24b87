"""``volden eval``: denoisers side by side, against a clean reference or, without one, by their
self-supervised loss.

With a reference, each denoised volume (or a model's or classic filter's output on the noisy
input, computed lazily) gets PSNR and SSIM, block-wise. Without one, each model, classic filter
and the raw input is made J-invariant by masking and measured on the noisy input itself
(:mod:`volden.jinvariant`), on the region no model trained on: the loss the clean volume would
rank them by, plus the noise variance, which is the same for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import dask.array as da
import numpy as np

from .classic import Classic, parse_classic
from .errors import VoldenError
from .inference import denoise
from .jinvariant import BLOCK, BLOCKS, GRID, PHASES, Box, Denoiser, Identity, masked_losses, ranking_lines, sample_blocks
from .metrics import psnr_ssim, reference_range
from .model import Model, is_model_folder, load_models
from .predict import default_halo, predict_array
from .sampler import split_volume
from .volume import Volume, open_volume


@dataclass(frozen=True)
class ModelDenoiser:
    """A trained network as a denoiser of arrays in input units, with the halo ``volden apply``
    gives its tiles as its reach."""

    model: Model
    device: str = "auto"

    @property
    def reach(self) -> tuple[int, int, int]:
        return default_halo(self.model)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return predict_array(self.model, image, self.device, edge=(0, 0, 0))


def held_out_region(shape: tuple[int, ...], models: Sequence[Model]) -> Box:
    """The voxels none of ``models`` trained on: the intersection of the slabs their training
    held out (recomputed from their patches), or the last tenth of the longest axis."""
    patches = [tuple(m.training["patch"]) for m in models if m.training.get("patch")]
    boxes = [split_volume(shape, patch).validation for patch in patches or [(1,) * len(shape)]]
    return tuple((max(b[a][0] for b in boxes), min(b[a][1] for b in boxes)) for a in range(len(shape)))


def describe_box(box: Box) -> str:
    return ", ".join(f"{axis} {lo}:{hi}" for axis, (lo, hi) in zip("zyx", box))


def self_supervised_scores(
    noisy: da.Array,
    denoisers: dict[str, Denoiser],
    boxes: Sequence[Box],
    phases: int | None = PHASES,
    seed: int = 0,
) -> tuple[dict[str, float], int]:
    """The J-invariant loss of each denoiser and of the input on the blocks ``boxes`` of
    ``noisy``, and how many masked voxels each averages."""
    named = {str(Identity()): Identity(), **denoisers}
    losses = masked_losses(noisy, boxes, list(named.values()), GRID, phases, seed)
    return dict(zip(named, losses.values.tolist())), losses.voxels


def reference_lines(candidates: dict[str, da.Array], reference: Volume) -> list[str]:
    """PSNR and SSIM of each candidate volume against ``reference``, best PSNR first."""
    for name, data in candidates.items():
        if tuple(data.shape) != reference.shape:
            raise VoldenError(f"{name} has shape {tuple(data.shape)}, the reference {reference.shape}")
    peak = reference_range(reference.data)
    scores = [(name, *psnr_ssim(data, reference.data, peak)) for name, data in candidates.items()]
    scores.sort(key=lambda s: -s[1])
    width = max(len(name) for name, *_ in scores)
    return [
        f"against {reference.path} (data range {peak:.5g}; SSIM with an 11-voxel Gaussian window):",
        f"rank  {'denoised':<{width}}  PSNR dB  SSIM",
        *(f"{rank:>4}  {name:<{width}}  {p:7.3f}  {'-' if s is None else f'{s:.4f}'}"
          for rank, (name, p, s) in enumerate(scores, 1)),
    ]


def run_eval(
    denoised: Sequence[str],
    noisy_path: str | None = None,
    reference_path: str | None = None,
    classic: Sequence[str] = (),
    channel: int | None = None,
    timepoint: int | None = None,
    device: str = "auto",
    blocks: int = BLOCKS,
    block: Sequence[int] = BLOCK,
    phases: int | None = PHASES,
    seed: int = 0,
) -> list[str]:
    """Score ``denoised`` (volumes or model folders), the ``classic`` specs and the noisy input;
    everything is opened and checked before anything is computed."""
    if noisy_path is None and reference_path is None:
        raise VoldenError("nothing to score against: pass --reference CLEAN, or --input NOISY for the "
                          "self-supervised loss")
    if not denoised and not classic and (noisy_path is None or reference_path is None):
        raise VoldenError("nothing to evaluate: name a denoised volume or a model folder, or --classic METHOD:SIZE")
    noisy = open_volume(noisy_path, channel=channel, timepoint=timepoint) if noisy_path else None
    models = {p: load_models(p).for_channel(noisy.channel if noisy else channel)
              for p in denoised if is_model_folder(p)}
    volumes = {p: open_volume(p, channel=channel, timepoint=timepoint) for p in denoised if p not in models}
    if noisy is None and (models or classic):
        raise VoldenError("models and --classic filters denoise the noisy volume: pass --input NOISY")
    filters: dict[str, Classic] = {spec: parse_classic(spec, noisy.voxel_size) for spec in classic} if noisy else {}
    if reference_path is None:
        if volumes:
            raise VoldenError(f"{next(iter(volumes))} is a volume: a denoised volume has no self-supervised loss; "
                              "pass --reference CLEAN, or the model folder that made it")
        region = held_out_region(noisy.shape, list(models.values()))
        boxes = sample_blocks(region, block, blocks, seed)
        denoisers = {**{p: ModelDenoiser(m, device) for p, m in models.items()}, **filters}
        scores, voxels = self_supervised_scores(noisy.data, denoisers, boxes, phases, seed)
        where = f"the held-out region {describe_box(region)} of {noisy_path}"
        return ranking_lines(list(scores.items()), voxels, len(boxes), where)
    reference = open_volume(reference_path, channel=channel, timepoint=timepoint)
    candidates = {p: v.data for p, v in volumes.items()}
    if noisy is not None:
        candidates.update({p: denoise(noisy.data, m, device=device) for p, m in models.items()})
        candidates.update({spec: f.lazy(noisy.data) for spec, f in filters.items()})
        candidates[f"{noisy_path} (input, no denoising)"] = noisy.data
    return reference_lines(candidates, reference)
