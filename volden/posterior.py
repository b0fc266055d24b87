"""The posterior step of Laine, Karras, Lehtinen and Aila (NeurIPS 2019), in 3D.

A prior network (``UNetConfig.outputs == 2``) predicts, from a voxel's neighbourhood alone, a
Gaussian prior over its clean value: a mean and a log variance. Trained on the masked voxels,
the measured value is modelled as that prior convolved with the camera's noise, whose variance
is the noise curve (``noise_curve``) at the prior mean, so the likelihood pins only the sum of
the two variances and the curve has to come from outside the loss. At prediction each voxel's
prior comes from a pass in which it was masked (J-invariant: every phase masked in turn), and
the output is the posterior mean, which weighs the voxel's own measurement by how uncertain its
prior is.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .masking import apply_mask, phase_mask
from .model import Model

PRIOR_OUTPUTS = 2
PRIOR_MEAN_LOSSES = ("likelihood", "squared")
LOG_VARIANCE_RANGE = (-30.0, 20.0)  # exp of these stays finite in float32 and bf16
NoiseVariance = Callable[[torch.Tensor], torch.Tensor]


def prior_of(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, variance) of the prior a network's two channels (dim 1 of a batch) hold."""
    return out[:, :1], torch.exp(out[:, 1:2].clamp(*LOG_VARIANCE_RANGE))


def prior_nll(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, noise_variance: NoiseVariance,
              mean_by: str = "likelihood") -> torch.Tensor:
    """The negative log-likelihood (less its constant) of ``target`` on the masked voxels under
    the prior convolved with the noise: a Gaussian of the prior's mean and of the prior's plus
    the noise's variance. The noise's variance is taken at the mean without its gradient, so
    the curve's slope does not pull the mean down to shrink the variance.

    ``mean_by`` 'squared' fits the mean by the squared error instead (the mean held fixed in the
    likelihood, which then fits the variance alone): Noise2Self's loss for the mean.
    """
    if mean_by not in PRIOR_MEAN_LOSSES:
        raise ValueError(f"mean_by must be one of {PRIOR_MEAN_LOSSES}, not {mean_by!r}")
    mean, prior_variance = prior_of(out)
    total = prior_variance + noise_variance(mean.detach())
    in_likelihood = mean if mean_by == "likelihood" else mean.detach()
    loss = 0.5 * (torch.log(total) + (target - in_likelihood) ** 2 / total)
    if mean_by == "squared":
        loss = loss + (target - mean) ** 2
    weight = mask.to(loss.dtype)
    return (loss * weight).sum() / weight.sum().clamp_min(1)


def guarded(nll: float) -> float:
    """What ``DivergenceGuard`` watches of a prior's loss: a likelihood may fall below 0, where a
    ratio to the median means nothing; exp(nll) is positive and rises tenfold when the loss rises
    by ln 10 nats a voxel (capped where a float overflows)."""
    return math.exp(min(nll, 700.0))


def posterior_mean(measured: torch.Tensor, mean: torch.Tensor, prior_variance: torch.Tensor,
                   noise_variance: torch.Tensor) -> torch.Tensor:
    """The mean of the Gaussian posterior of the clean value: the prior's mean and the measured
    value, each weighted by the other's variance."""
    return (measured * prior_variance + mean * noise_variance) / (prior_variance + noise_variance)


def blind_prior(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                grid: tuple[int, int, int]) -> torch.Tensor:
    """The prior (two channels) at every voxel of ``x`` (z, y, x) from the pass that masked it.

    Each pass masks one phase of ``grid`` and fills it by the donut, so a voxel's prior never
    reads its own value. The phases are cosets of the grid's lattice, so the set masked with a
    voxel does not depend on where ``x`` starts: a block's tile and the whole volume agree. With
    grid entries of 1 or 2 a reflection at the volume's edge puts a voxel's mirror image in its
    own phase, so the edge stays blind too.
    """
    prior = torch.empty((PRIOR_OUTPUTS, *x.shape), dtype=torch.float32, device=x.device)
    for phase in np.ndindex(*grid):
        mask = phase_mask(tuple(x.shape), grid, phase, x.device)
        filled = apply_mask(x[None, None], mask[None, None])[0, 0]
        prior[:, mask] = forward(filled)[:, mask]
    return prior


def posterior_prediction(model: Model, x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The posterior mean at every voxel of normalised ``x`` (z, y, x), ``forward`` running the
    model's network over an array of its shape (two channels out)."""
    prior = blind_prior(forward, x, tuple(model.masking["grid"]))
    mean, prior_variance = prior_of(prior[None])
    noise_variance = model.noise_curve.normalised_variance(mean, model.normalisation)
    return posterior_mean(x[None, None], mean, prior_variance, noise_variance)[0, 0]
