"""Does ``volden apply`` stay within a few blocks of memory as the volume grows?

Runs the real command (local cluster, default blocks, default CPU network) on synthetic volumes
of 1x, 8x (and 27x with ``--factors 1,8,27``) the base volume, each written chunk by chunk from
a lazily generated synthetic volume. Peak memory is the summed RSS of the whole process tree
(client, nanny, worker), sampled every 0.1 s. Acceptance: peak at 8x <= 1.2 x peak at 1x, wall
time at 8x <= 8.8 x.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from volden.synth import write_synthetic
from volden.volume import open_volume

from report import markdown_table, write_section
from untrained import untrained_model


def run_measured(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak summed RSS (bytes) of the process tree, and the command's stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            break
        peak = max(peak, total)
        time.sleep(0.1)
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(command)} failed")
    return time.perf_counter() - start, peak, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="128,512,512", help="the 1x volume (z,y,x)")
    parser.add_argument("--factors", default="1,8")
    args = parser.parse_args()
    base = tuple(int(v) for v in args.base.split(","))
    factors = [int(f) for f in args.factors.split(",")]
    rows, first = [], None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for factor in factors:
            side = round(factor ** (1 / 3))
            shape = tuple(s * side for s in base)
            source = write_synthetic(work / f"vol{factor}.zarr", shape=shape, photons=20.0, seed=factor, chunks=(64, 256, 256))
            if first is None:
                untrained_model(open_volume(source), folder=work / "model")
            command = [sys.executable, "-m", "volden", "apply", str(work / "model"), str(source), str(work / f"out{factor}.zarr")]
            seconds, peak, out = run_measured(command)
            summary = out.strip().splitlines()[-1]
            first = first or (seconds, peak)
            rows.append(
                f"| {factor}x | {'x'.join(map(str, shape))} | {seconds:.1f} | {seconds / first[0]:.2f} | "
                f"{peak / 2**20:.0f} | {peak / first[1]:.3f} | {summary.split(': ', 1)[1]} |"
            )
            print(rows[-1], flush=True)
            for path in (source, work / f"out{factor}.zarr"):
                subprocess.run(["rm", "-rf", str(path)], check=True)
    table = markdown_table(
        ["volume", "shape", "wall s", "wall / 1x", "peak RSS MiB (process tree)", "peak / 1x", "volden's summary"], rows
    )
    write_section(
        "Apply memory and time vs volume size",
        "`volden apply` at its defaults (local cluster, 1 worker, default CPU network untrained), synthetic "
        "nuclei volumes. Acceptance: peak RSS at 8x <= 1.2 x the peak at 1x; wall time <= 8.8 x.\n\n" + table,
    )


if __name__ == "__main__":
    main()
