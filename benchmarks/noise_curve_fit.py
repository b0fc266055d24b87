"""Which noise-curve fit is closer to the camera (issue 31, point 1): smooth regions or pairs.

On the quality benchmark's volumes (all recorded by ``volden synth``'s camera, so the true curve
is known) three fits of var = a * mean + b:

- ``local``: what volden stores (``noise_curve.fit_noise_curve``, Foi et al.): second
  differences binned by the 3x3x3 local mean, from 16 sampled chunks;
- ``pairs``: as PPN2V bootstraps it, the noisy voxel against a blind denoised estimate of it
  (the J-invariant prior mean of the ``volden-posterior`` row's model), binned by the estimate;
- ``clean``: the noisy voxel against its clean value, the best a line can do here.

Each fit's error is the mean, over the volume's voxels, of |fit - true| / true at the voxel's
clean value: how far the variance the posterior uses is off where the data is.

    python -m benchmarks.noise_curve_fit --work /tmp/volden-quality-full
"""

from __future__ import annotations

import argparse
from pathlib import Path

import dask.array as da
import numpy as np

import volden
from benchmarks.posterior_diagnostic import blind
from benchmarks.quality.volumes import make_case
from benchmarks.report import markdown_table
from volden.noise_curve import NoiseCurve, fit_binned, fit_noise_curve
from volden.posterior import prior_of
from volden.synth import Camera


def curve_error(curve: NoiseCurve, true: NoiseCurve, clean: np.ndarray) -> float:
    truth = true.variance(clean)
    return float(np.mean(np.abs(curve.variance(clean) - truth) / truth))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/volden-quality-full"),
                        help="the quality benchmark's --work: its volumes and volden-posterior models")
    parser.add_argument("--volumes", default="nuclei-5,nuclei-20,neurites-5,neurites-20,deconwolf,pollen")
    parser.add_argument("--shape", default="64,256,256", help="of the synthetic volumes")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    true = NoiseCurve(*Camera().noise_curve(), 0, 0)
    rows = []
    for name in args.volumes.split(","):
        case = make_case(name, args.work, shape)
        if case is None:
            continue
        on_disk = case.noisy.data
        noisy, clean = on_disk.compute().astype(np.float64), case.clean.astype(np.float64)
        fits = {"local": fit_noise_curve(da.from_array(noisy, chunks=on_disk.chunks)),  # the chunks it samples
                "clean": fit_binned(clean.ravel(), (noisy - clean).ravel())}
        model_folder = args.work / name / "volden-posterior-model"
        if (model_folder / "model.json").exists():
            model = volden.load_model(model_folder)
            mean, _ = prior_of(blind(model, noisy.astype(np.float32), lambda c: c)[None])
            estimate = model.normalisation.invert(mean[0, 0].numpy()).astype(np.float64)
            fits["pairs"] = fit_binned(estimate.ravel(), (noisy - estimate).ravel())
        row = [name]
        for method in ("local", "pairs", "clean"):
            curve = fits.get(method)
            row.append(f"{curve.a:.3f} x mean {curve.b:+.1f} ({100 * curve_error(curve, true, clean):.1f} %)"
                       if curve else "no model")
        rows.append("| " + " | ".join(row) + " |")
        print(rows[-1], flush=True)
    print(f"\ntrue curve: {true}\n")
    print(markdown_table(["volume", "local (stored)", "pairs (blind prior mean)", "clean (best line)"], rows))


if __name__ == "__main__":
    main()
