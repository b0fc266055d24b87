"""Every GPU figure in one command (under 8 minutes on one GPU): ``python benchmarks/gpu.py``.

1. The network's forward pass at the device's defaults: voxels/s and achieved TFLOP/s
   (FLOPs counted from the architecture's convolutions) against the card's bf16 dense peak,
   channels-last 3D against NCDHW, and on CUDA without ``cudnn.benchmark``.
2. bf16 autocast against float32 on one large tile (the prediction's largest difference).
3. ``volden apply`` end to end (running local cluster, default blocks; the better of two runs)
   on a synthetic volume, against the bare network over the same tiles already on the device.
4. Training steps/s fed by the real patch sampler against batches already in memory.
5. PSNR after ``--minutes`` of training at the device's defaults, divergence restarts counted.

It needs nothing but the README's install. ``--device cpu --small`` runs the same code on
small sizes (the tests do); ``--record`` writes the figures into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import volden
from volden.apply import ApplyConfig, apply_model
from volden.cluster import local_client
from volden.inference import tile_geometry
from volden.metrics import psnr
from volden.predict import autocast, normalised_on, predict_normalised, reflect_pad, resolve_device
from volden.streams import MASKS, torch_stream
from volden.synth import write_synthetic
from volden.tiling import Tiling
from volden.training import TrainConfig, train_step

from report import markdown_table, write_section
from sampler_rate import training_setup
from untrained import untrained_model

BF16_DENSE_PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
                          "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
SIZES = {  # full size, and --small for the test on a CPU
    "tile": ((128, 256, 256), (16, 64, 64)),
    "apply": ((256, 1024, 1024), (32, 128, 128)),
    "train_volume": ((64, 256, 256), (32, 96, 96)),
    "steps": (40, 4),
}


def bf16_peak(device: torch.device) -> float | None:
    """The card's bf16 dense peak in TFLOP/s, from its name (None where unknown, and on a CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    matches = [peak for key, peak in BF16_DENSE_PEAK_TFLOPS.items() if key in name]
    return max(matches) if matches else None


def forward_flops(network: torch.nn.Module, shape: tuple[int, int, int], device: torch.device) -> float:
    """FLOPs of one forward pass over ``shape``: 2 per multiply-add of every (transposed) convolution."""
    total = 0.0

    def count(module, inputs, output) -> None:
        nonlocal total
        kernel = float(np.prod(module.kernel_size))
        if isinstance(module, torch.nn.ConvTranspose3d):
            total += 2 * inputs[0].numel() * module.out_channels * kernel
        else:
            total += 2 * output.numel() * module.in_channels * kernel

    hooks = [m.register_forward_hook(count) for m in network.modules()
             if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    with torch.inference_mode():
        network(torch.zeros((1, 1, *shape), device=device))
    for hook in hooks:
        hook.remove()
    return total


def timed(device: torch.device, run: Callable[[], object], repeats: int = 3) -> float:
    """Fewest seconds of ``repeats`` runs after one warm-up, the device synchronised."""
    run()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def forward_figures(model, tile: tuple[int, int, int], device: torch.device, peak: float | None) -> list[dict]:
    network = model.network_on(device)
    flops = forward_flops(network, tile, device)
    voxels = float(np.prod(tile))
    x = torch.randn((1, 1, *tile), device=device)
    variants = [("channels-last 3D", torch.channels_last_3d, True), ("NCDHW", torch.contiguous_format, True)]
    if device.type == "cuda":  # what volden's cudnn.benchmark buys (it costs bit-exact repeats across processes)
        variants.insert(1, ("channels-last 3D, no cudnn.benchmark", torch.channels_last_3d, False))
    rows = []
    for name, layout, benchmark in variants:
        torch.backends.cudnn.benchmark = benchmark
        net = network.to(memory_format=layout)
        inputs = x.contiguous(memory_format=layout)
        with torch.inference_mode(), autocast(device):
            seconds = timed(device, lambda: net(inputs))
        tflops = flops / seconds / 1e12
        rows.append({"layout": name, "voxels_per_s": voxels / seconds, "tflops": tflops,
                     "share_of_peak": tflops / peak if peak else None, "gflop_per_voxel": flops / voxels / 1e9})
    torch.backends.cudnn.benchmark = True
    network.to(memory_format=torch.channels_last_3d)
    return rows


def bf16_difference(model, tile: tuple[int, int, int], device: torch.device) -> dict:
    """The largest difference between the autocast prediction and a float32 one, over the range."""
    x = torch.randn(tile, device=device)
    network = model.network_on(device)
    with torch.inference_mode():
        with autocast(device):
            fast = network(x[None, None].contiguous(memory_format=torch.channels_last_3d)).float()
        exact = network(x[None, None].contiguous(memory_format=torch.channels_last_3d)).float()
    span = float(exact.max() - exact.min())
    return {"max_abs_over_range": float((fast - exact).abs().max()) / span,
            "psnr_db": float(10 * torch.log10(span**2 / ((fast - exact) ** 2).mean()))}


def apply_figures(work: Path, shape: tuple[int, int, int], device: torch.device) -> dict:
    path = write_synthetic(work / "apply.zarr", shape=shape, photons=20.0, seed=3, chunks=(64, 256, 256))
    volume = volden.open_volume(path)
    model = untrained_model(volume, str(device))
    with local_client(1) as client:
        reports = []
        for _ in range(2):  # the first run also starts CUDA and picks kernels on the worker: the best one counts
            shutil.rmtree(work / "applied.zarr", ignore_errors=True)
            reports.append(apply_model(model, volden.open_image(path), work / "applied.zarr",
                                       ApplyConfig(device=str(device)), client=client))
    report = min(reports, key=lambda r: r.seconds)
    tiling = Tiling(volume.shape, report.block, report.halo)
    source = volume.source

    tiles = []
    for index in tiling.blocks():  # the same tiles, already on the device
        inside, pad, _ = tile_geometry(tiling, index)
        tiles.append(reflect_pad(normalised_on(model.normalisation, source[tuple(slice(a, b) for a, b in inside)],
                                               device), pad))
    bare_s = timed(device, lambda: [predict_normalised(model, t) for t in tiles], repeats=1)
    voxels = float(np.prod(shape))
    shutil.rmtree(work / "applied.zarr", ignore_errors=True)
    return {"shape": list(shape), "block": list(report.block), "halo": list(report.halo),
            "apply_s": report.seconds, "apply_voxels_per_s": voxels / report.seconds,
            "bare_network_s": bare_s, "bare_voxels_per_s": voxels / bare_s, "apply_over_bare": bare_s / report.seconds}


def training_rates(volume, device: torch.device, steps: int) -> dict:
    """Steps/s with batches from the sampler (zarr on disk) and from memory, in alternating turns."""
    config, network, optimizer, sampler = training_setup(volume, device)
    numbers = itertools.count()
    seconds = {"sampler": 0.0, "memory": 0.0}
    try:
        in_memory = [sampler.next() for _ in range(steps)]
        feeds = {"sampler": iter(sampler.next, None), "memory": iter(in_memory)}
        for feed in ("sampler", "memory"):  # warm-up: kernels chosen, cache filled
            train_step(network, optimizer, next(feeds[feed]), config, torch_stream(0, MASKS, next(numbers)), device)
        for _ in range(steps - 1):
            for feed, batches in feeds.items():
                start = time.perf_counter()
                x = next(batches)
                train_step(network, optimizer, x, config, torch_stream(0, MASKS, next(numbers)), device).item()
                seconds[feed] += time.perf_counter() - start
    finally:
        sampler.close()
    rate = {feed: (steps - 1) / s for feed, s in seconds.items()}
    return {"patch": list(config.patch), "batch": config.batch, "width": config.width, "depth": config.depth,
            "sampler_steps_per_s": rate["sampler"], "memory_steps_per_s": rate["memory"],
            "sampler_over_memory": rate["sampler"] / rate["memory"]}


def quality(work: Path, volume, minutes: float, device: torch.device) -> dict:
    model = volden.train(volume, work / "model", TrainConfig(minutes=minutes, device=str(device)))
    with local_client(1) as client:
        apply_model(model, volden.open_image(volume.path), work / "denoised.zarr", ApplyConfig(device=str(device)),
                    client=client)
    denoised = volden.open_volume(work / "denoised.zarr").data
    clean = volden.open_volume(volume.path, array="clean").data
    return {"minutes": minutes, "steps": model.training["steps_done"], "restarts": model.training["restarts"],
            "psnr_db": psnr(denoised, clean), "noisy_psnr_db": psnr(volume.data, clean)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--small", action="store_true", help="test sizes (a few seconds on a CPU)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time for the PSNR figure")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--record", action="store_true", help="write the figures into BENCHMARKS.md")
    args = parser.parse_args()
    device = resolve_device(args.device)
    size = {key: value[1 if args.small else 0] for key, value in SIZES.items()}
    peak = bf16_peak(device)
    figures: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__, "bf16_peak_tflops": peak}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        volume = volden.open_volume(write_synthetic(work / "train.zarr", shape=size["train_volume"], photons=5.0))
        model = untrained_model(volume, str(device))
        figures["forward"] = forward_figures(model, size["tile"], device, peak)
        figures["bf16_vs_float32"] = bf16_difference(model, size["tile"], device)
        print(json.dumps(figures, indent=1), flush=True)
        figures["apply"] = apply_figures(work, size["apply"], device)
        print(json.dumps(figures["apply"], indent=1), flush=True)
        figures["training"] = training_rates(volume, device, size["steps"])
        print(json.dumps(figures["training"], indent=1), flush=True)
        figures["quality"] = quality(work, volume, args.minutes, device)
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if args.record:
        record(figures, size)


def record(figures: dict, size: dict) -> None:
    peak = figures["bf16_peak_tflops"]
    rows = [f"| forward, {f['layout']} ({'x'.join(map(str, size['tile']))} tile) | {f['voxels_per_s']:.3g} voxels/s, "
            f"{f['tflops']:.1f} TFLOP/s" + (f" ({f['share_of_peak']:.1%} of {peak:g})" if peak else "") + " |"
            for f in figures["forward"]]
    b = figures["bf16_vs_float32"]
    a = figures["apply"]
    t = figures["training"]
    q = figures["quality"]
    rows += [
        f"| bf16 autocast vs float32, one tile | max difference {b['max_abs_over_range']:.2e} of the range "
        f"({b['psnr_db']:.1f} dB) |",
        f"| `volden apply`, {'x'.join(map(str, a['shape']))} (block {a['block']}, halo {a['halo']}) | "
        f"{a['apply_voxels_per_s']:.3g} voxels/s ({a['apply_s']:.1f} s) |",
        f"| bare network over the same tiles | {a['bare_voxels_per_s']:.3g} voxels/s; apply / bare "
        f"{a['apply_over_bare']:.2f} |",
        f"| training, real sampler vs in memory (patch {t['patch']}, batch {t['batch']}) | "
        f"{t['sampler_steps_per_s']:.2f} vs {t['memory_steps_per_s']:.2f} steps/s ({t['sampler_over_memory']:.2f}) |",
        f"| PSNR after {q['minutes']:g} min of training (nuclei, 5 photons, {'x'.join(map(str, size['train_volume']))}) | "
        f"{q['psnr_db']:.2f} dB (input {q['noisy_psnr_db']:.2f}), {q['steps']} steps, {q['restarts']} restarts |",
    ]
    write_section(
        "GPU figures (benchmarks/gpu.py)",
        f"Device {figures['device']}, torch {figures['torch']}, the device's defaults, untrained networks but for "
        "the PSNR row.\n\n" + markdown_table(["what", "figure"], rows),
    )


if __name__ == "__main__":
    main()
