"""Where the posterior step gains or loses (issue 31): one synthetic volume with its clean truth.

Trains plain volden and a prior (``--posterior``) for the same minutes, then scores against the
clean volume: plain volden's output, plain volden's own J-invariant prediction, the prior's mean
alone (J-invariant), and the posterior mean with the fitted and with the true noise curve. The
calibration lines compare, over all voxels (each from the pass that masked it), the prior's
predicted variances with what they should be: prior + noise variance against (y - mean)^2,
prior variance against (clean - mean)^2, noise variance against (y - clean)^2.

    python benchmarks/posterior_diagnostic.py --minutes 2 --work /tmp/posterior-diagnostic
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import volden
from volden.metrics import psnr_ssim
from volden.noise_curve import NoiseCurve
from volden.posterior import blind_prior, posterior_mean, prior_of
from volden.predict import _network_pass, default_halo, normalised_on, reflect_pad
from volden.synth import Camera, synthetic_volume, write_synthetic
from volden.volume import open_volume


def blind(model: volden.Model, noisy: np.ndarray, channels_of) -> np.ndarray:
    """Each voxel's network output from the pass that masked its phase, in the network's units."""
    network = model.network_on(torch.device("cpu"))
    edge = default_halo(model)
    with torch.inference_mode():
        x = reflect_pad(normalised_on(model.normalisation, noisy, torch.device("cpu")), [(e, e) for e in edge])
        out = blind_prior(lambda a: channels_of(_network_pass(network, a, 2**24)), x, tuple(model.masking["grid"]))
    return out[(slice(None), *(slice(e, e + n) for e, n in zip(edge, noisy.shape)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--steps", type=int, help="train each for this many steps instead (equal steps on a busy machine)")
    parser.add_argument("--prior-variance-start", type=float, help="the prior's variance at the start (normalised)")
    parser.add_argument("--prior-mean", default="likelihood", help="what fits the prior's mean: likelihood or squared")
    parser.add_argument("--kind", default="nuclei")
    parser.add_argument("--photons", type=float, default=20.0)
    parser.add_argument("--shape", default="64,128,128")
    parser.add_argument("--work", type=Path, default=Path("/tmp/posterior-diagnostic"))
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "volume.zarr"
    if not path.exists():
        write_synthetic(path, shape=shape, kind=args.kind, photons=args.photons)
    volume = open_volume(str(path), "noisy")
    noisy = volume.data.compute().astype(np.float32)
    clean = open_volume(str(path), "clean").data.compute()
    peak = float(clean.max() - clean.min())
    results = {}

    def score(name: str, denoised: np.ndarray) -> None:
        results[name] = round(psnr_ssim(denoised, clean, peak)[0], 3)
        print(f"{name}: {results[name]:.2f} dB", flush=True)

    budget = {"steps": args.steps} if args.steps else {"minutes": args.minutes}
    plain_folder = args.work / "plain"  # trained once: the variants of the prior compare with the same one
    plain = (volden.load_model(plain_folder) if (plain_folder / "model.json").exists()
             else volden.train(volume, plain_folder, volden.TrainConfig(**budget)))
    results["plain steps"] = plain.training["steps_done"]
    score("plain volden (full input)", volden.denoise(volume.data, plain).compute())
    norm = plain.normalisation
    score("plain volden, J-invariant", norm.invert(blind(plain, noisy, lambda c: torch.cat([c, c]))[0].numpy()))

    variant = f"{args.prior_mean}-start-{args.prior_variance_start}"
    prior = volden.train(volume, args.work / f"prior-{variant}", volden.TrainConfig(
        **budget, posterior=True, prior_mean=args.prior_mean, prior_variance_start=args.prior_variance_start))
    results["prior steps"] = prior.training["steps_done"]
    norm = prior.normalisation
    mean, prior_var = prior_of(blind(prior, noisy, lambda c: c)[None])
    score("prior mean (J-invariant)", norm.invert(mean[0, 0].numpy()))
    y = torch.from_numpy(norm.apply(noisy))[None, None]
    true_curve = NoiseCurve(*Camera().noise_curve(), 0, 0)
    for label, curve in (("fitted", prior.noise_curve), ("true", true_curve)):
        noise_var = curve.normalised_variance(mean, norm)
        score(f"posterior, {label} curve ({curve})", norm.invert(posterior_mean(y, mean, prior_var, noise_var)[0, 0].numpy()))
    noise_var = prior.noise_curve.normalised_variance(mean, norm)
    x = torch.from_numpy(norm.apply(clean))[None, None]
    calibration = {
        "(y - mean)^2": ((y - mean) ** 2).mean().item(), "prior + noise variance": (prior_var + noise_var).mean().item(),
        "(clean - mean)^2": ((x - mean) ** 2).mean().item(), "prior variance": prior_var.mean().item(),
        "(y - clean)^2": ((y - x) ** 2).mean().item(), "noise variance (fitted curve)": noise_var.mean().item(),
        "noise variance (true curve)": true_curve.normalised_variance(mean, norm).mean().item(),
    }
    for name, value in calibration.items():
        print(f"calibration, normalised units: mean {name} {value:.5g}", flush=True)
    results["calibration"] = calibration
    (args.work / f"results-{variant}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
