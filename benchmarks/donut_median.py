"""The Noise2Self paper's 'donut vs classic median' experiment, in 3D.

A median filter over a ball of each radius runs on a `volden synth` volume, once with the centre
voxel left out of the footprint (the donut: J-invariant) and once with it (classic). For each, the
self-supervised loss (MSE against the noisy volume) and the ground-truth loss (MSE against the
clean one) are measured inside a border as wide as the largest radius. J-invariance makes the
donut's two losses differ by the noise variance alone, so their minima fall at the same radius;
the classic median's self-supervised loss keeps falling as the filter shrinks to the identity
(radius 0, loss 0), away from its ground-truth minimum.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from volden.classic import ball, median, per_axis
from volden.synth import VOXEL_SIZE, synthetic_volume

from report import markdown_table, write_section

FIGURE = Path(__file__).resolve().parent / "figures" / "donut_median.png"


def sweep(noisy: np.ndarray, clean: np.ndarray, radii: list[float], donut: bool) -> list[tuple[float, float]]:
    """(self-supervised, ground-truth) MSE of the median of each radius, inside the border."""
    border = int(max(radii)) + 1
    inside = (slice(border, -border),) * 3
    losses = []
    for radius in radii:
        out = median(noisy, radius, VOXEL_SIZE, donut)[inside]
        losses.append((float(np.mean((out - noisy[inside]) ** 2)), float(np.mean((out - clean[inside]) ** 2))))
    return losses


def plot(results: dict[str, tuple[list[float], list[tuple[float, float]]]], noise: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (name, (radii, losses)) in zip(axes, results.items()):
        for column, label, colour in ((0, "self-supervised (vs noisy)", "tab:blue"), (1, "ground truth (vs clean)", "tab:orange")):
            values = [loss[column] for loss in losses]
            ax.plot(radii, values, marker="o", color=colour, label=label)
            best = int(np.argmin(values))
            ax.plot(radii[best], values[best], marker="*", markersize=16, color=colour, linestyle="none")
        ax.axhline(noise, color="grey", linestyle=":", label="noise variance")
        ax.set_title(f"{name} median")
        ax.set_xlabel("lateral radius (voxels; z scaled by the voxel size)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("MSE (ADU²)")
    fig.tight_layout()
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", default="nuclei")
    parser.add_argument("--shape", default="64,256,256")
    parser.add_argument("--photons", type=float, default=20.0)
    parser.add_argument("--radii", default="1,1.5,2,2.5,3,4,5")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    noisy, clean = (a.compute().astype(np.float32) for a in synthetic_volume(shape, args.kind, args.photons, seed=0))
    radii = [float(r) for r in args.radii.split(",")]
    results = {"donut": (radii, sweep(noisy, clean, radii, donut=True)),
               "classic": ([0.0, *radii], sweep(noisy, clean, [0.0, *radii], donut=False))}
    border = int(max(radii)) + 1
    noise = float(np.mean((noisy - clean)[(slice(border, -border),) * 3] ** 2))
    plot(results, noise)
    rows = []
    for name, (rs, losses) in results.items():
        best_ss = int(np.argmin([loss[0] for loss in losses]))
        best_gt = int(np.argmin([loss[1] for loss in losses]))
        for i, (radius, (ss, gt)) in enumerate(zip(rs, losses)):
            marks = " ".join(m for m, j in (("min self-supervised", best_ss), ("min ground truth", best_gt)) if i == j)
            size = ",".join(f"{s:g}" for s in per_axis(radius, VOXEL_SIZE))
            rows.append(f"| {name} | {radius:g} ({size}) | {int(ball(radius, VOXEL_SIZE, name == 'donut').sum())} | "
                        f"{ss:.3f} | {gt:.3f} | {ss - gt:.3f} | {marks} |")
    table = markdown_table(["median", "radius (z,y,x voxels)", "footprint voxels", "self-supervised MSE",
                            "ground-truth MSE", "difference", "minimum"], rows)
    write_section(
        "Donut vs classic median: the Noise2Self experiment in 3D",
        f"`volden synth` {args.kind} volume {'x'.join(map(str, shape))}, {args.photons:g} photons; median over a ball "
        f"(z radius scaled by the voxel size {VOXEL_SIZE}), with the centre voxel left out (donut, J-invariant) or "
        f"kept (classic); MSE in ADU² inside a border of {border} voxels; noise variance (MSE of the noisy volume "
        f"against the clean) {noise:.2f}. Acceptance: the donut's self-supervised and ground-truth minima at the same "
        "radius; the classic median's self-supervised loss falling toward radius 0, away from its ground-truth "
        f"minimum.\n\n{table}\n\n![donut vs classic median](benchmarks/figures/{FIGURE.name})",
    )


if __name__ == "__main__":
    main()
