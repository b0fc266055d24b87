"""The GPU benchmark runs unchanged on a CPU at small sizes, and counts FLOPs right."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from volden.unet import UNet3D, UNetConfig

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from gpu import forward_flops  # noqa: E402


def test_forward_flops_counts_every_convolution():
    """Depth 1, width 2, pooled (1, 2, 2), on 4x8x8: the multiply-adds counted by hand."""
    network = UNet3D(UNetConfig(depth=1, width=2, pools=((1, 2, 2),))).eval()
    full, pooled = 4 * 8 * 8, 4 * 4 * 4
    macs = (full * 2 * 1 * 27 + full * 2 * 2 * 27  # encoder
            + pooled * 4 * 2 * 27 + pooled * 4 * 4 * 27  # bottleneck
            + pooled * 4 * 2 * 4  # transposed convolution (1, 2, 2)
            + full * 2 * 4 * 27 + full * 2 * 2 * 27  # decoder, on the skip's channels too
            + full * 1 * 2)  # head
    assert forward_flops(network, (4, 8, 8), torch.device("cpu")) == 2 * macs


def test_gpu_benchmark_runs_on_cpu(tmp_path):
    figures_file = tmp_path / "gpu.json"
    subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), "--device", "cpu", "--small", "--minutes", "0.05",
         "--json", str(figures_file)],
        check=True, cwd=tmp_path, capture_output=True, timeout=600,
    )
    figures = json.loads(figures_file.read_text())
    assert [f["layout"] for f in figures["forward"]] == ["channels-last 3D", "NCDHW"]
    assert all(f["voxels_per_s"] > 0 and f["tflops"] > 0 for f in figures["forward"])
    assert figures["bf16_vs_float32"]["max_abs_over_range"] == 0  # no autocast on a CPU: the same pass
    assert figures["apply"]["shape"] == [32, 128, 128] and figures["apply"]["apply_voxels_per_s"] > 0
    assert figures["training"]["sampler_steps_per_s"] > 0 and figures["training"]["memory_steps_per_s"] > 0
    assert figures["quality"]["steps"] > 0 and math.isfinite(figures["quality"]["psnr_db"])
