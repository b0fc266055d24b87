"""Does volden beat the best Gaussian filter? `volden synth` -> `volden train --minutes M` ->
`volden apply`, all at default settings, PSNR against the clean volume, next to the Gaussian
filter whose sigma was chosen with the clean volume."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import volden
from volden.demo import best_gaussian
from volden.metrics import psnr

from report import markdown_table, write_section


def run(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from volden.cli import main; main()", *args], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--kinds", default="nuclei")
    parser.add_argument("--photons", type=float, default=20.0)
    args = parser.parse_args()
    rows = []
    for kind in args.kinds.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            vol, model, out = (str(Path(tmp) / n) for n in ("vol.zarr", "model", "out.zarr"))
            run("synth", vol, "--kind", kind, "--shape", "64,256,256", "--photons", str(args.photons))
            train_s = run("train", vol, "-o", model, "--minutes", str(args.minutes))
            apply_s = run("apply", model, vol, out)
            noisy = volden.open_volume(vol).data.compute()
            clean = volden.open_volume(vol, "clean").data.compute()
            denoised = volden.open_volume(out).data
            gauss, sigma = best_gaussian(noisy, clean)
            net = psnr(denoised, clean)
            rows.append(
                f"| {kind} | {args.photons:g} | {psnr(noisy, clean):.2f} | {gauss:.2f} (sigma {sigma:g}) | "
                f"{net:.2f} | {net - gauss:+.2f} | {train_s / 60:.1f} | {apply_s:.0f} |"
            )
    table = markdown_table(
        ["kind", "photons", "noisy dB", "best Gaussian dB", "volden dB", "volden - Gaussian", "train min (wall)", "apply s"],
        rows,
    )
    write_section(
        f"PSNR after {args.minutes:g} minutes of training vs the best Gaussian",
        "64x256x256 `volden synth` volumes, `volden train --minutes` and `volden apply` at their defaults. "
        "The Gaussian's sigma (z scaled by the voxel size) is chosen with the clean volume. "
        "Acceptance: volden >= best Gaussian + 3 dB.\n\n" + table,
    )


if __name__ == "__main__":
    main()
